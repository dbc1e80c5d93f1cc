"""A stand-in engine for the launcher's tests: an HTTP server that answers ``/health`` and, like
vLLM's API server with its EngineCore, keeps child processes of its own.

    python tests/healthy_child.py --port P [--ready-after-s S] [--children N]
        [--exit-after-s S --exit-code C] [--ignore-sigterm] [--log-lines N]

``GET /health`` answers 503 until ``--ready-after-s`` has passed, then 200. ``GET /pids`` answers
``{"pid": ..., "children": [...]}``. The children are ``sleep`` processes in the same process
group that outlive this process if it dies by SIGKILL (as vLLM's EngineCore does). SIGTERM exits
0 (the children then die of the group's SIGTERM) unless ``--ignore-sigterm``, which this process
and its children then ignore. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after-s", type=float, default=0.0)
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--exit-after-s", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--log-lines", type=int, default=0)
    args = parser.parse_args()

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the children across exec
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.children)]
    for i in range(args.log_lines):
        print(f"healthy_child log line {i}", flush=True)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                ready = time.monotonic() - started >= args.ready_after_s
                self._send(200 if ready else 503, {"ready": ready})
            elif self.path == "/pids":
                import os

                self._send(200, {"pid": os.getpid(), "children": [c.pid for c in children]})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *a: object) -> None:
            pass

    if args.exit_after_s is not None:

        def exit_later() -> None:
            time.sleep(args.exit_after_s)
            print(f"healthy_child: exiting with {args.exit_code} as asked", flush=True)
            import os

            os._exit(args.exit_code)

        threading.Thread(target=exit_later, daemon=True).start()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
