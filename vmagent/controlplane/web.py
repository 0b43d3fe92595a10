"""The control plane's HTTP side (``--http-listen``, 15014): health, Prometheus metrics and a JSON API.

Routes are registered by the parts that own the data (``add_json``), so this module knows nothing of
workloads or proxies. Everything is read-only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

JsonSource = Callable[[], Any]
TextSource = Callable[[], str]


class HttpApi:
    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._addr = (host.strip("[]") or "127.0.0.1", int(port))
        self._json: dict[str, JsonSource] = {}
        self._text: dict[str, tuple[str, TextSource]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_json("/healthz", lambda: {"status": "ok"})

    def add_json(self, path: str, source: JsonSource) -> None:
        self._json[path] = source

    def add_text(self, path: str, content_type: str, source: TextSource) -> None:
        self._text[path] = (content_type, source)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._addr[1]

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        try:
            self._server = ThreadingHTTPServer(self._addr, Handler)
        except OSError as exc:
            raise VmagentError(f"cannot listen on {self._addr[0]}:{self._addr[1]} for HTTP: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = urlsplit(req.path).path.rstrip("/") or "/"
        try:
            if path in self._json:
                body = json.dumps(self._json[path](), indent=2, sort_keys=True, default=str).encode()
                ctype = "application/json"
            elif path in self._text:
                ctype, source = self._text[path]
                body = source().encode()
            else:
                body, ctype = json.dumps({"error": f"no such path {path}"}).encode(), "application/json"
                _send(req, 404, ctype, body)
                return
        except Exception as exc:  # a broken data source must not kill the server
            log.exception("http: %s failed", path)
            _send(req, 500, "application/json", json.dumps({"error": str(exc)}).encode())
            return
        _send(req, 200, ctype, body)


def _send(req: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
    req.send_response(status)
    req.send_header("Content-Type", ctype)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)
