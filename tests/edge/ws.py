"""Real WebSocket upstreams and a real WebSocket client (the `websockets` package) for
tests/e2e_websocket.rs, driven over stdin/stdout.

`ws.py server LABEL=PORT ...`: one server per argument on 127.0.0.1, each answering every
message with `LABEL:message`; prints `ready` once all listen, stops at the end of input.

`ws.py client URL`: reads one command per line and answers one line:
  open NAME         opens a connection NAME and keeps it            -> `ok` or `error: ...`
  send NAME TEXT    sends TEXT on connection NAME, answers its reply -> the reply or `error: ...`
  once TEXT         a new connection for one message, then closed    -> the reply or `error: ...`
"""

import sys
import threading

from websockets.sync.client import connect
from websockets.sync.server import serve

TIMEOUT_S = 5


def server(args):
    servers = []
    for arg in args:
        label, port = arg.split("=")

        def handler(ws, label=label):
            for message in ws:
                ws.send(f"{label}:{message}")

        s = serve(handler, "127.0.0.1", int(port))
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    print("ready", flush=True)
    for _ in sys.stdin:
        pass
    for s in servers:
        s.shutdown()


def client(url):
    conns = {}
    for line in sys.stdin:
        words = line.rstrip("\n").split(" ", 2)
        try:
            if words[0] == "open":
                conns[words[1]] = connect(url, open_timeout=TIMEOUT_S, proxy=None)
                answer = "ok"
            elif words[0] == "send":
                ws = conns[words[1]]
                ws.send(words[2])
                answer = ws.recv(timeout=TIMEOUT_S)
            elif words[0] == "once":
                with connect(url, open_timeout=TIMEOUT_S, proxy=None) as ws:
                    ws.send(words[1])
                    answer = ws.recv(timeout=TIMEOUT_S)
            else:
                answer = f"error: unknown command {words[0]}"
        except Exception as err:  # the test asserts on it
            answer = f"error: {type(err).__name__}: {err}"
        print(answer, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2:])
    else:
        client(sys.argv[2])
