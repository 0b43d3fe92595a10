"""The agent's local status port (15020): status JSON, merged Prometheus metrics and readiness.

* ``GET /status`` — the JSON document returned by ``status_fn()``;
* ``GET /stats/prometheus`` — every metrics source's text (the agent's registry, then Envoy's own
  ``/stats/prometheus`` fetched from its admin API, a Unix socket only root and the proxy user reach), concatenated; a source that fails is skipped and
  counted in ``vmagent_metrics_source_errors_total``; ``?source=agent`` gives the first source only (the
  agent's own ``vmagent_*`` and ``istio_*`` families, without Envoy's: what the control plane's dashboard
  scrapes);
* ``GET /healthz/ready`` — 200 ``ready`` when ``readiness_check()`` passes, else 503 with the reason;
* ``GET /app-health/CONTAINER/livez|readyz|startupz`` — in a pod, the application's own probe, rewritten
  by the injection webhook to come here (``app_probes.py``): 200 when it passes, else 503 with the reason;
  404 for a path the table does not hold.

Port 15021 is Envoy's: a static listener in the bootstrap forwards its ``/healthz/ready`` here, as
Istio's sidecar does, so 15021 answers only when Envoy itself is up and reachable.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from vmagent.agent.app_probes import app_probers_from_env
from vmagent.agent.envoy_admin import AdminEndpoint, admin_request
from vmagent.common.metrics import Registry
from vmagent.common.wire import APP_HEALTH_PREFIX

ReadinessCheck = Callable[[], tuple[bool, str]]
MetricsSource = Callable[[], str]

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def compose_readiness(
    envoy_live: Callable[[], bool],
    config_acked: Callable[[], bool],
    cert_not_after: Callable[[], datetime.datetime],
) -> ReadinessCheck:
    """Ready = Envoy live, its first config ACKed and the certificate not expired; else the first reason."""

    def check() -> tuple[bool, str]:
        if not envoy_live():
            return False, "Envoy is not live"
        if not config_acked():
            return False, "Envoy has not acknowledged its configuration (CDS and LDS)"
        try:
            expiry = cert_not_after()
        except Exception as exc:
            return False, f"no valid workload certificate: {exc}"
        if datetime.datetime.now(datetime.UTC) >= expiry:
            return False, f"the workload certificate expired at {expiry.isoformat()}"
        return True, "ready"

    return check


def envoy_metrics_source(admin: AdminEndpoint, timeout: float = 2.0) -> MetricsSource:
    """Envoy's ``/stats/prometheus`` from its admin API (raises OSError when Envoy does not answer)."""

    def fetch() -> str:
        status, body = admin_request(admin, "GET", "/stats/prometheus", timeout=timeout)
        if status != 200:
            raise OSError(f"Envoy admin /stats/prometheus answered {status}")
        return body.decode("utf-8", "replace")

    return fetch


class StatusServer:
    """A ThreadingHTTPServer on ``host:port`` serving the three endpoints above."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness_check: ReadinessCheck,
        metrics_sources: Sequence[MetricsSource],
        *,
        status_fn: Callable[[], dict[str, Any]] | None = None,
        metrics: Registry | None = None,
        app_probers: Mapping[str, Callable[[], tuple[bool, str]]] | None = None,
    ) -> None:
        self._readiness = readiness_check
        # None: from ISTIO_KUBE_APP_PROBERS, which only the injection webhook sets (so empty on a VM).
        self._app_probers = dict(app_probers_from_env() if app_probers is None else app_probers)
        self._sources = list(metrics_sources)
        self._status_fn = status_fn or (lambda: {})
        reg = metrics or Registry()
        self._m_source_errors = reg.counter(
            "vmagent_metrics_source_errors_total", "Metrics sources that failed during a scrape."
        )
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="status-http", daemon=True
        )
        self._thread.start()
        log.info("status server listening on port %d", self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- responses ------------------------------------------------------------------------------------

    def ready(self) -> tuple[int, bytes]:
        try:
            ok, reason = self._readiness()
        except Exception as exc:
            ok, reason = False, f"readiness check failed: {exc}"
        return (200, b"ready\n") if ok else (503, reason.encode() + b"\n")

    def app_health(self, path: str) -> tuple[int, bytes]:
        check = self._app_probers.get(path)
        if check is None:
            return 404, f"no application probe at {path}\n".encode()
        try:
            ok, message = check()
        except Exception as exc:
            ok, message = False, f"probe failed: {type(exc).__name__}: {exc}"
        return (200 if ok else 503), message.encode() + b"\n"

    def prometheus(self, agent_only: bool = False) -> bytes:
        parts: list[str] = []
        for source in self._sources[:1] if agent_only else self._sources:
            try:
                text = source()
            except Exception as exc:
                self._m_source_errors.inc()
                log.debug("metrics source failed: %s", exc)
                continue
            parts.append(text if text.endswith("\n") or not text else text + "\n")
        return "".join(parts).encode()

    def status(self) -> bytes:
        return json.dumps(self._status_fn(), indent=2, sort_keys=True, default=str).encode() + b"\n"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/healthz/ready":
                    code, body = server.ready()
                    self._reply(code, "text/plain; charset=utf-8", body)
                elif path == "/stats/prometheus":
                    agent_only = "agent" in parse_qs(query).get("source", [])
                    self._reply(200, PROMETHEUS_CONTENT_TYPE, server.prometheus(agent_only))
                elif path == "/status":
                    self._reply(200, "application/json", server.status())
                elif path.startswith(APP_HEALTH_PREFIX):
                    code, body = server.app_health(path)
                    self._reply(code, "text/plain; charset=utf-8", body)
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found\n")

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("status %s " + format, self.client_address[0], *args)

        return Handler
