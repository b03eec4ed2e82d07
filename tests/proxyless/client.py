"""gRPC's Python xDS client (grpcio) driven by tests/proxyless_clients.rs over stdin/stdout.

Dials `xds:///TARGET` (argv[1]), or the address after `direct:` without xDS; the xDS bootstrap
comes from GRPC_XDS_BOOTSTRAP, as for any grpcio program. Reads one JSON command per line and answers one JSON line (see client.js for
the same protocol in Node):

  {"op": "ready", "timeout_ms": T}     one call that waits for the channel (wait_for_ready)
  {"op": "calls", "n": N}              N calls one after the other
  {"op": "until", "accept": [...], "consecutive": K, "timeout_ms": T}
                                       calls until K replies in a row are accepted (a label
                                       such as "blue/2", or a version such as "green")

Every answer: {"tally": {label: count}, "errors": n, "error_samples": [...], "calls": n,
"ms": elapsed, "done": bool}. Calls other than `ready` do not wait for the channel: a call
that fails counts as an error, which is what the tests assert never happens.
"""

import json
import sys
import time

import grpc

METHOD = "/shop.Checkout/Buy"
CALL_TIMEOUT_S = 5


def main():
    target = sys.argv[1]
    # `direct:HOST:PORT`: a plain channel to that address (an Envoy listener in front of a
    # gRPC service, tests/e2e_grpc.rs), not xDS.
    if target.startswith("direct:"):
        channel = grpc.insecure_channel(target.removeprefix("direct:"))
    else:
        channel = grpc.insecure_channel("xds:///" + target)
    buy = channel.unary_unary(METHOD)
    for line in sys.stdin:
        cmd = json.loads(line)
        out = {"tally": {}, "errors": 0, "error_samples": [], "calls": 0, "done": False}
        started = time.monotonic()
        deadline = started + cmd.get("timeout_ms", 20000) / 1000
        in_a_row = 0
        while True:
            out["calls"] += 1
            try:
                reply = buy(
                    b"",
                    timeout=CALL_TIMEOUT_S if cmd["op"] != "ready" else cmd["timeout_ms"] / 1000,
                    wait_for_ready=cmd["op"] == "ready",
                ).decode()
                out["tally"][reply] = out["tally"].get(reply, 0) + 1
            except grpc.RpcError as err:
                reply = None
                out["errors"] += 1
                if len(out["error_samples"]) < 5:
                    out["error_samples"].append(f"{err.code()}: {err.details()}")
            if cmd["op"] == "ready":
                out["done"] = reply is not None
                break
            if cmd["op"] == "calls":
                if out["calls"] >= cmd["n"]:
                    out["done"] = True
                    break
                continue
            accepted = reply is not None and (
                reply in cmd["accept"] or reply.split("/")[0] in cmd["accept"]
            )
            in_a_row = in_a_row + 1 if accepted else 0
            if in_a_row >= cmd["consecutive"]:
                out["done"] = True
                break
            if time.monotonic() > deadline:
                break
        out["ms"] = round((time.monotonic() - started) * 1000, 1)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
