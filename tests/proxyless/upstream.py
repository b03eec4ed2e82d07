"""Real gRPC upstreams for tests/proxyless_clients.rs: one grpcio server per `LABEL=PORT` argument,
on 127.0.0.1, each answering every method with its label (e.g. `blue/1`) as raw bytes.

Prints `ready` once every server listens. Reads commands on stdin, one per line:
`stop LABEL` stops that server (what a removed endpoint does); `fail LABEL` makes it answer every
call with UNAVAILABLE from then on (a broken release: HTTP 200, grpc-status 14); end of input
stops them all.
"""

import sys
from concurrent import futures

import grpc


class Answer(grpc.GenericRpcHandler):
    """Any method, any request: the label. No stubs needed, so no protoc step."""

    def __init__(self, label):
        self.reply = label.encode()
        self.failing = False

    def answer(self, request, context):
        if self.failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        return self.reply

    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(self.answer)


def main():
    servers = {}
    answers = {}
    for arg in sys.argv[1:]:
        label, port = arg.split("=")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        answers[label] = Answer(label)
        server.add_generic_rpc_handlers((answers[label],))
        if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
            sys.exit(f"cannot listen on 127.0.0.1:{port}")
        server.start()
        servers[label] = server
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 2 and words[0] == "stop" and words[1] in servers:
            servers.pop(words[1]).stop(grace=1).wait()
        if len(words) == 2 and words[0] == "fail" and words[1] in answers:
            answers[words[1]].failing = True
        print("ok", flush=True)
    for server in servers.values():
        server.stop(grace=None)


if __name__ == "__main__":
    main()
