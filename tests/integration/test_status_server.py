"""The status port: readiness with reasons, merged metrics, status JSON (no Envoy needed here)."""

from __future__ import annotations

import datetime
import http.client
import json
from collections.abc import Iterator

import pytest

from tests.harness import free_port
from tests.promtool import sample
from vmagent.agent.status_server import StatusServer, compose_readiness, envoy_metrics_source
from vmagent.common.metrics import Registry, register_process_metrics


class Flags:
    live = False
    acked = False
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)


@pytest.fixture
def server() -> Iterator[tuple[StatusServer, Flags, Registry]]:
    flags = Flags()
    reg = Registry()
    register_process_metrics(reg)
    reg.counter("vmagent_test_events_total", "Test events.", ("kind",)).inc(3, kind="a")
    srv = StatusServer(
        "127.0.0.1",
        0,
        compose_readiness(lambda: flags.live, lambda: flags.acked, lambda: flags.expiry),
        [reg.render, envoy_metrics_source(free_port()), lambda: "envoy_fake_metric 1"],
        status_fn=lambda: {"identity": "spiffe://cluster.local/ns/a/sa/b", "when": flags.expiry},
        metrics=reg,
    )
    srv.start()
    yield srv, flags, reg
    srv.stop()


def _get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        conn.close()


def test_readiness_reports_the_first_unmet_condition(server: tuple[StatusServer, Flags, Registry]) -> None:
    srv, flags, _ = server
    assert _get(srv.port, "/healthz/ready")[::2] == (503, "Envoy is not live\n")
    flags.live = True
    code, _, body = _get(srv.port, "/healthz/ready")
    assert code == 503 and "not acknowledged" in body
    flags.acked = True
    assert _get(srv.port, "/healthz/ready")[::2] == (200, "ready\n")
    flags.expiry = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    code, _, body = _get(srv.port, "/healthz/ready")
    assert code == 503 and "expired" in body


def test_metrics_merge_sources_and_skip_a_failing_one(server: tuple[StatusServer, Flags, Registry]) -> None:
    srv, _, _ = server
    code, ctype, text = _get(srv.port, "/stats/prometheus")
    assert code == 200 and ctype.startswith("text/plain")
    assert sample(text, "vmagent_test_events_total", kind="a") == 3
    assert (sample(text, "vmagent_process_resident_memory_bytes") or 0) > 0
    assert "envoy_fake_metric 1" in text
    # the unreachable Envoy admin source was skipped and counted
    _, _, again = _get(srv.port, "/stats/prometheus")
    assert sample(again, "vmagent_metrics_source_errors_total") == 1  # rendered before this scrape failed


def test_status_json_and_unknown_path(server: tuple[StatusServer, Flags, Registry]) -> None:
    srv, _, _ = server
    code, ctype, body = _get(srv.port, "/status")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body)["identity"] == "spiffe://cluster.local/ns/a/sa/b"
    assert _get(srv.port, "/nope")[0] == 404


def test_app_health_runs_the_original_probes_from_the_injected_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet's rewritten probes (/app-health/...) reach a real application through the agent: the
    table comes from ISTIO_KUBE_APP_PROBERS as the injection webhook writes it."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    healthy = {"ok": True}

    class App(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = (
                200 if self.path == "/healthz" and healthy["ok"] and self.headers["X-Probe"] == "yes" else 500
            )
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    app = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    table = {
        "/app-health/web/livez": {
            "httpGet": {
                "path": "/healthz",
                "port": app.server_address[1],
                "httpHeaders": [{"name": "X-Probe", "value": "yes"}],
            }
        },
        "/app-health/web/readyz": {"tcpSocket": {"port": tcp.getsockname()[1]}, "timeoutSeconds": 2},
    }
    monkeypatch.setenv("ISTIO_KUBE_APP_PROBERS", json.dumps(table))
    srv = StatusServer("127.0.0.1", 0, lambda: (True, "ready"), [])
    srv.start()
    try:
        code, _, body = _get(srv.port, "/app-health/web/livez")
        assert code == 200 and "200 OK" in body, body
        assert _get(srv.port, "/app-health/web/readyz")[0] == 200
        healthy["ok"] = False
        code, _, body = _get(srv.port, "/app-health/web/livez")
        assert code == 503 and "500" in body, body
        tcp.close()
        code, _, body = _get(srv.port, "/app-health/web/readyz")
        assert code == 503 and "TCP connect" in body, body
        assert _get(srv.port, "/app-health/other/livez")[0] == 404
    finally:
        srv.stop()
        app.shutdown()
        app.server_close()


def test_a_broken_probe_table_is_logged_and_serves_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ISTIO_KUBE_APP_PROBERS", '{"/app-health/web/livez": {"httpGet": {"port": "http"}}}')
    srv = StatusServer("127.0.0.1", 0, lambda: (True, "ready"), [])
    srv.start()
    try:
        assert _get(srv.port, "/app-health/web/livez")[0] == 404
    finally:
        srv.stop()
    assert (
        "ISTIO_KUBE_APP_PROBERS['/app-health/web/livez'].httpGet.port: expected a port number" in caplog.text
    )


def test_source_agent_leaves_out_envoys_families(server: tuple[StatusServer, Flags, Registry]) -> None:
    """``?source=agent`` (the control plane's dashboard scrape) is the agent's own registry only."""
    srv, _, _ = server
    code, _, body = _get(srv.port, "/stats/prometheus?source=agent")
    assert code == 200 and 'vmagent_test_events_total{kind="a"} 3.0' in body
    assert "envoy_fake_metric" not in body
    assert "envoy_fake_metric 1" in _get(srv.port, "/stats/prometheus")[2]
