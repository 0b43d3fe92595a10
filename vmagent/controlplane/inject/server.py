"""The webhook over HTTPS: ``POST /inject`` with an AdmissionReview, on port 15017 by default.

Each connection gets its own thread and does its TLS handshake there (a slow client never holds up
``accept``); a socket that stays silent for ``IO_TIMEOUT`` seconds is closed, and beyond
``MAX_CONNECTIONS`` open at once new ones are closed at once. Statuses:

* 200 with the AdmissionReview response (allowed, with or without a patch);
* 400 body that is not JSON or not an AdmissionReview v1; 404 another path; 405 another method;
* 411 no Content-Length; 413 a body over ``MAX_BODY`` bytes (before reading it);
* 415 a Content-Type other than ``application/json``.

Every refusal is logged with the client's address and the reason and counted by the observer
(``failed`` / ``bad_request``); the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from vmagent.controlplane.inject.review import Injector, MalformedReview

log = logging.getLogger(__name__)

INJECT_PATH = "/inject"
MAX_BODY = 8 * 1024 * 1024  # a Pod is at most ~1.5 MiB in etcd; an AdmissionReview carries it once or twice
IO_TIMEOUT = 10.0
MAX_CONNECTIONS = 256  # open at once (a thread each); more are closed at once and logged
DRAIN_TIMEOUT = 0.5  # after a refusal: how long a pause in the client's body ends the draining


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _TlsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)
        self.ctx = ctx
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning(
                "webhook: %d connections open; closing the one from %s", MAX_CONNECTIONS, client_address[0]
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # In the connection's own thread: the handshake (and its timeout) never blocks accept().
        request.settimeout(IO_TIMEOUT)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.info("webhook: TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]  # typeshed: Self
        finally:
            try:
                tls.close()
            except OSError:
                pass


class WebhookServer:
    """Serves ``injector`` at ``/inject`` over TLS with the given certificate chain and key (PEM)."""

    def __init__(
        self, address: str, injector: Injector, cert_pem: bytes, key_pem: bytes, workdir: Path
    ) -> None:
        self.injector = injector
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys from files only: a 0600 file under the state dir, removed once loaded.
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".webhook-", suffix=".pem") as f:
            f.write(key_pem + b"\n" + cert_pem)  # mkstemp's mode is 0600
            f.flush()
            ctx.load_cert_chain(f.name)
        self.requests_refused = 0
        self._httpd = _TlsHttpServer(split_host_port(address), self._handler_class(), ctx)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> int:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.2,), name="inject-https", daemon=True
        )
        self._thread.start()
        log.info(
            "sidecar injection webhook on https://%s:%d%s",
            self._httpd.server_address[0],
            self.port,
            INJECT_PATH,
        )
        return self.port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _refused(self, client: str, status: int, reason: str) -> None:
        self.requests_refused += 1
        log.warning("webhook: request from %s refused with %d: %s", client, status, reason)
        observer = self.injector.observer
        if observer is not None:
            observer.injection("failed", "bad_request")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IO_TIMEOUT

            def do_POST(self) -> None:
                self._unread = 0
                length_text = self.headers.get("Content-Length")
                if length_text is None or not length_text.strip().isdigit():
                    return self._refuse(411, "Content-Length required")
                self._unread = int(length_text)
                if self._unread > MAX_BODY:
                    return self._refuse(413, f"body of {self._unread} bytes is over the limit of {MAX_BODY}")
                if self.path.split("?", 1)[0] != INJECT_PATH:
                    return self._refuse(
                        404, f"no such path {self.path[:200]!r} (the webhook is at {INJECT_PATH})"
                    )
                ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                if ctype != "application/json":
                    return self._refuse(
                        415, f"Content-Type {ctype[:100] or '(none)'!r}: expected application/json"
                    )
                try:
                    raw = self.rfile.read(self._unread)
                except OSError as exc:
                    log.info("webhook: reading the body from %s failed: %s", self.client_address[0], exc)
                    self.close_connection = True
                    return None
                self._unread = 0
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    return self._refuse(400, f"body is not JSON: {exc}")
                try:
                    answer = server.injector.review(body)
                except MalformedReview as exc:
                    return self._refuse(400, f"not an AdmissionReview: {exc}")
                self._reply(200, "application/json", json.dumps(answer).encode())
                return None

            def do_GET(self) -> None:
                self._refuse(405, f"{self.command} not allowed: POST an AdmissionReview to {INJECT_PATH}")

            do_PUT = do_DELETE = do_PATCH = do_GET

            def _refuse(self, status: int, reason: str) -> None:
                server._refused(self.client_address[0], status, reason)
                self.close_connection = True  # an unread body would be taken for the next request
                body = json.dumps({"error": reason}).encode()
                self._reply(status, "application/json", body)
                self._drain()

            def _drain(self) -> None:
                """Read what the client is still sending (bounded, until it pauses), so that closing
                does not reset the connection and destroy the answer before the client reads it."""
                left = min(getattr(self, "_unread", 0), MAX_BODY)
                if left <= 0:
                    return
                try:
                    self.connection.settimeout(DRAIN_TIMEOUT)
                    while left > 0:
                        chunk = self.rfile.read1(min(left, 65536))
                        if not chunk:
                            break
                        left -= len(chunk)
                except OSError:
                    pass

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("webhook %s " + format, self.client_address[0], *args)

        return Handler
