"""Readiness probes against real local servers: HTTP(S), TCP, exec and gRPC health, with thresholds."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.harness import free_port, wait_for
from vmagent.agent.probes import Prober, Thresholds, make_check, marked_connect, parse_probe
from vmagent.common import constants
from vmagent.common.errors import ConfigError
from vmagent.common.x509util import cert_pem, key_pem


class App:
    """A local HTTP application whose readiness status the test flips."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.status = 200
        self.requests: list[tuple[str, dict[str, str]]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.requests.append((self.path, dict(self.headers.items())))
                self.send_response(app.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    yield a
    a.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert_pem(cert))
    (tmp / "key.pem").write_bytes(key_pem(key))
    return tmp / "cert.pem", tmp / "key.pem"


def probe(kind: str, handler: dict[str, Any], **timing: Any) -> dict[str, Any]:
    return {kind: handler, **timing}


def check(spec: dict[str, Any]) -> tuple[bool, str]:
    return make_check(parse_probe(spec))()


# -- parsing ------------------------------------------------------------------------------------


def test_defaults_are_kubernetes_defaults_and_zero_means_default() -> None:
    cfg = parse_probe({"tcpSocket": {"port": 80}, "periodSeconds": 0})
    assert (cfg.initial_delay, cfg.period, cfg.timeout, cfg.success_threshold, cfg.failure_threshold) == (
        0.0,
        10.0,
        1.0,
        1,
        3,
    )
    assert cfg.tcp == {"port": 80, "host": "localhost"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec.probe: exactly one of httpGet, tcpSocket, exec or grpc is required"),
        ({"tcpSocket": {"port": 1}, "exec": {"command": ["true"]}}, "exactly one of"),
        ({"httpGet": {"path": "/"}}, "spec.probe.httpGet.port: expected a port number 1-65535, got None"),
        ({"grpc": {"port": 70000}}, "spec.probe.grpc.port: expected a port number"),
        ({"exec": {"command": []}}, "spec.probe.exec.command: expected a non-empty list of strings"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "spec.probe.httpGet.scheme: expected HTTP or HTTPS"),
        (
            {"tcpSocket": {"port": 80}, "periodSeconds": -1},
            "spec.probe.periodSeconds: expected a non-negative",
        ),
    ],
)
def test_invalid_probe_names_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_probe(spec)
    assert message in str(err.value)


# -- handlers against real servers ---------------------------------------------------------------


def test_http_probe_sends_path_host_and_headers_and_judges_the_status(app: App) -> None:
    spec = probe(
        "httpGet",
        {
            "port": app.port,
            "host": "127.0.0.1",
            "path": "/ready?full=1",
            "httpHeaders": [{"name": "X-Probe", "value": "vmagent"}, {"name": "Host", "value": "api.local"}],
        },
    )
    ok, msg = check(spec)
    assert ok, msg
    path, headers = app.requests[-1]
    assert path == "/ready?full=1"
    assert headers["X-Probe"] == "vmagent" and headers["Host"] == "api.local"
    assert msg == f"HTTP GET http://127.0.0.1:{app.port}/ready?full=1: 200 OK"
    app.status = 302
    assert check(spec)[0]  # 2xx and 3xx are success
    app.status = 503
    ok, msg = check(spec)
    assert not ok and msg.endswith(": 503 Service Unavailable")


def test_https_probe_does_not_verify_the_certificate(tmp_path: Path) -> None:
    app = App(tls=_self_signed(tmp_path))
    try:
        ok, msg = check(probe("httpGet", {"port": app.port, "host": "127.0.0.1", "scheme": "HTTPS"}))
        assert ok, msg
        # Plain HTTP against the TLS port fails.
        assert not check(probe("httpGet", {"port": app.port, "host": "127.0.0.1"}))[0]
    finally:
        app.close()


def test_http_probe_of_a_hung_server_fails_within_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts (backlog) but never answers
        port = listener.getsockname()[1]
        cfg = parse_probe(probe("httpGet", {"port": port, "host": "127.0.0.1"}, timeoutSeconds=0.3))
        started = datetime.datetime.now()
        ok, msg = make_check(cfg)()
        elapsed = (datetime.datetime.now() - started).total_seconds()
    assert not ok and "timed out" in msg
    assert elapsed < 2.0


def test_tcp_probe_connects_or_fails() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok, msg = check(probe("tcpSocket", {"port": port, "host": "127.0.0.1"}))
        assert ok and msg == f"TCP connect 127.0.0.1:{port}: connected"
    ok, msg = check(probe("tcpSocket", {"port": port, "host": "127.0.0.1"}))
    assert not ok and "Connection refused" in msg


def test_tcp_probe_default_host_localhost_reaches_an_ipv4_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert check(probe("tcpSocket", {"port": listener.getsockname()[1]}))[0]


def test_exec_probe_uses_the_exit_status() -> None:
    assert check(probe("exec", {"command": ["true"]})) == (True, "exec 'true': exit status 0")
    ok, msg = check(probe("exec", {"command": ["false"]}))
    assert not ok and msg == "exec 'false': exit status 1"
    ok, msg = check(probe("exec", {"command": ["sh", "-c", "echo not ready >&2; exit 3"]}))
    assert not ok and msg == "exec 'sh -c echo not ready >&2; exit 3': not ready"
    ok, msg = check(probe("exec", {"command": ["/nonexistent/check"]}))
    assert not ok and "not found" in msg


def test_exec_probe_is_killed_at_the_timeout() -> None:
    ok, msg = check(probe("exec", {"command": ["sleep", "5"]}, timeoutSeconds=0.3))
    assert not ok and "timed out after 0.3s" in msg


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(0)


def test_grpc_probe_asks_grpc_health_v1(grpc_health: tuple[int, health.HealthServicer]) -> None:
    port, servicer = grpc_health
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    servicer.set("", serving)
    servicer.set("api.v1.Orders", not_serving)
    c = make_check(parse_probe(probe("grpc", {"port": port}, timeoutSeconds=2)))
    assert c() == (True, f"gRPC health localhost:{port}: SERVING")
    c2 = make_check(parse_probe(probe("grpc", {"port": port, "service": "api.v1.Orders"}, timeoutSeconds=2)))
    assert c2() == (False, f"gRPC health localhost:{port} service 'api.v1.Orders': NOT_SERVING")
    servicer.set("api.v1.Orders", serving)
    assert c2()[0]
    ok, msg = make_check(parse_probe(probe("grpc", {"port": port, "service": "unknown"}, timeoutSeconds=2)))()
    assert not ok and "NOT_FOUND" in msg


def test_grpc_probe_of_a_closed_port_fails() -> None:
    ok, msg = check(probe("grpc", {"port": free_port()}, timeoutSeconds=0.5))
    assert not ok and ("UNAVAILABLE" in msg or "DEADLINE_EXCEEDED" in msg)


def test_probe_sockets_carry_the_bypass_mark() -> None:
    if os.geteuid() != 0:
        pytest.skip("setting SO_MARK needs CAP_NET_ADMIN (root)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sock = marked_connect("127.0.0.1", listener.getsockname()[1], 1.0, constants.BYPASS_MARK)
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36)) == constants.BYPASS_MARK


# -- thresholds -------------------------------------------------------------------------------


def test_thresholds_report_first_result_and_changes_only() -> None:
    t = Thresholds(success_threshold=2, failure_threshold=3)
    # First result is reported even though one success is not enough to be healthy.
    assert [
        (t.observe(ok), t.healthy) for ok in (True, True, True, False, False, True, False, False, False)
    ] == [
        (True, False),  # first result: unhealthy (1 of 2 successes)
        (True, True),  # 2 successes: healthy
        (False, True),
        (False, True),  # 1 of 3 failures
        (False, True),  # 2 of 3
        (False, True),  # a success resets the failure count
        (False, True),
        (False, True),
        (True, False),  # 3 failures in a row: unhealthy
    ]


def test_first_failure_is_reported_at_once() -> None:
    t = Thresholds(1, 3)
    assert (t.observe(False), t.healthy) == (True, False)
    assert (t.observe(False), t.healthy) == (False, False)


def test_prober_thread_reports_transitions_of_a_real_app(app: App) -> None:
    transitions: list[tuple[bool, str]] = []
    spec = probe(
        "httpGet",
        {"port": app.port, "host": "127.0.0.1", "path": "/ready"},
        periodSeconds=0.05,
        failureThreshold=3,
        successThreshold=2,
    )
    prober = Prober(spec, lambda ok, msg: transitions.append((ok, msg)))
    prober.start()
    try:
        wait_for(lambda: transitions[-1:] and transitions[-1][0] is True, 5, what="healthy")
        assert [ok for ok, _ in transitions] == [False, True]  # first result (1 of 2), then healthy
        before = len(app.requests)
        app.status = 500
        wait_for(lambda: transitions[-1][0] is False, 5, what="unhealthy")
        assert transitions[-1][1].endswith("500 Internal Server Error")
        # failureThreshold (3) probes failed before the report.
        assert len(app.requests) - before >= 3 and len(transitions) == 3
        app.status = 200
        wait_for(lambda: transitions[-1][0] is True, 5, what="healthy again")
        assert [ok for ok, _ in transitions] == [False, True, False, True]
        assert prober.healthy
    finally:
        prober.stop()


def test_initial_delay_postpones_the_first_probe(app: App) -> None:
    seen = threading.Event()
    prober = Prober(
        probe(
            "httpGet", {"port": app.port, "host": "127.0.0.1"}, initialDelaySeconds=0.5, periodSeconds=0.05
        ),
        lambda ok, msg: seen.set(),
    )
    started = datetime.datetime.now()
    prober.start()
    try:
        assert seen.wait(5)
        assert (datetime.datetime.now() - started).total_seconds() >= 0.5
    finally:
        prober.stop()
