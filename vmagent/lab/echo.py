"""A tiny HTTP application for the lab: answers every request with JSON describing what it received.

``python -m vmagent.lab.echo --port 8080 --name api-1 [--fail-every N] [--status CODE] [--delay S]``
The reply carries the app's name, the method, path, headers (``x-forwarded-client-cert`` among them)
and the peer address, so tests can see which instance answered and whom the mesh said was calling.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def make_handler(name: str, fail_every: int, status: int, delay: float) -> type[BaseHTTPRequestHandler]:
    counter = itertools.count(1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffer the reply so headers and body leave in one write (flushed after each request), as most
        # servers send a small response: then a network cut loses a reply whole or not at all, never
        # after its headers (a reply half received cannot be retried by any proxy).
        wbufsize = 1 << 16

        def _reply(self) -> None:
            with lock:
                n = next(counter)
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else b""
            if delay:
                time.sleep(delay)
            code = status
            if fail_every and n % fail_every != 0:
                code = 503
            doc: dict[str, Any] = {
                "name": name,
                "n": n,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "peer": self.client_address[0],
                "body_bytes": len(body_in),
            }
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-app-name", name)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _reply

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmagent.lab.echo")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", default="echo")
    p.add_argument("--status", type=int, default=200, help="status of successful replies")
    p.add_argument("--fail-every", type=int, default=0, help="answer 503 except every Nth request")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(args.name, args.fail_every, args.status, args.delay)
    )
    server.daemon_threads = True
    print(f"echo {args.name} listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
