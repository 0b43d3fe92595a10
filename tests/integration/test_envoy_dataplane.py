"""Real Envoy, supervised by the agent, fed by its SDS server and its ADS proxy (loopback only)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import free_port, require_root, wait_for
from tests.integration.certs_helper import TestCA
from tests.integration.test_envoy_support import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    Backend,
    FakeControlPlane,
    tls_get,
)
from tests.promtool import promtool_check
from vmagent.agent.envoy_admin import AdminEndpoint, admin_request, prepare_admin_dir
from vmagent.agent.envoy_bootstrap import (
    BootstrapParams,
    find_envoy_binary,
    render_bootstrap,
    write_bootstrap,
)
from vmagent.agent.envoy_process import EnvoySupervisor
from vmagent.agent.envoy_runtime import lookup_proxy_user, prepare_runtime_dir
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.sds import SdsServer
from vmagent.agent.status_server import StatusServer, compose_readiness, envoy_metrics_source
from vmagent.agent.xds_proxy import Backoff, XdsProxy
from vmagent.common.metrics import Registry


@dataclass
class Stack:
    ca: TestCA
    store: IdentityStore
    cp: FakeControlPlane
    sds: SdsServer
    proxy: XdsProxy
    envoy: EnvoySupervisor
    status: StatusServer
    admin: AdminEndpoint
    listen_port: int
    readiness_port: int
    prometheus_port: int

    def config_dump(self) -> dict[str, Any]:
        code, body = admin_request(self.admin, "GET", "/config_dump?include_eds=false", timeout=2)
        assert code == 200
        return dict(json.loads(body))

    def secret_serials(self) -> dict[str, str]:
        """Envoy's view of the dynamic SDS secrets: secret name -> version_info (``GEN-SERIALHEX``)."""
        out: dict[str, str] = {}
        for cfg in self.config_dump()["configs"]:
            if cfg.get("@type", "").endswith("SecretsConfigDump"):
                for s in cfg.get("dynamic_active_secrets", []):
                    out[s["name"]] = s.get("version_info", "")
        return out

    def get(self, path: str, port: int) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def _channel_factory(port: int) -> tuple[Any, list[grpc.Channel]]:
    made: list[grpc.Channel] = []
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]

    def factory() -> grpc.Channel:
        if not made:
            made.append(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))
        return made[0]

    return factory, made


def _make_stack(
    tmp_path: Path, runtime: Path, *, delta: bool = False, hold: bool = False, run_as: str | None = None
) -> Iterator[Stack]:
    ca = TestCA()
    paths = AgentPaths(config_dir=tmp_path / "etc", state_dir=tmp_path / "state", runtime_dir=runtime)
    store = IdentityStore(paths)
    store.save(ca.issue())
    proxy_user = lookup_proxy_user(run_as) if run_as else None
    peer_gid = proxy_user.gid if proxy_user else None
    prepare_runtime_dir(paths.runtime_dir, peer_gid)
    admin = prepare_admin_dir(paths.runtime_dir, peer_gid)
    ports = {k: free_port() for k in ("cp", "backend", "listen", "prom", "ready", "status")}
    registry = Registry()
    backend = Backend(ports["backend"])
    cp = FakeControlPlane(ports["cp"], ports["listen"], ports["backend"])
    if hold:
        cp.hold.set()
    cp.start()
    sds = SdsServer(store, paths.sds_socket, peer_gid=peer_gid, metrics=registry)
    sds.start()
    factory, channels = _channel_factory(ports["cp"])
    proxy = XdsProxy(
        paths.xds_socket, factory, peer_gid=peer_gid, backoff=Backoff(0.1, 0.5), metrics=registry
    )
    proxy.start()
    params = BootstrapParams(
        node_ip="127.0.0.1",
        name="vm-1",
        namespace="ns1",
        xds_socket=paths.xds_socket,
        sds_socket=paths.sds_socket,
        labels={"app": "demo"},
        admin=admin,
        admin_shared_with_group=proxy_user is not None,
        prometheus_port=ports["prom"],
        readiness_port=ports["ready"],
        status_port=ports["status"],
        listen_host="127.0.0.1",
        delta_xds=delta,
    )
    bootstrap = runtime / "envoy.json"
    write_bootstrap(bootstrap, render_bootstrap(params))
    envoy = EnvoySupervisor(
        find_envoy_binary(),
        bootstrap,
        run_as,
        admin,
        drain_timeout=1,
        term_timeout=3,
        metrics=registry,
    )
    status = StatusServer(
        "127.0.0.1",
        ports["status"],
        compose_readiness(envoy.live, proxy.acked, lambda: store.current().not_after),
        [registry.render, envoy_metrics_source(admin)],
        status_fn=lambda: {"xds": proxy.sync_state(), "envoy_pid": envoy.pid()},
        metrics=registry,
    )
    status.start()
    envoy.start()
    try:
        yield Stack(
            ca,
            store,
            cp,
            sds,
            proxy,
            envoy,
            status,
            admin,
            ports["listen"],
            ports["ready"],
            ports["prom"],
        )
    finally:
        envoy.stop()
        status.stop()
        proxy.stop()
        sds.stop()
        cp.stop()
        backend.stop()
        for ch in channels:
            ch.close()


@pytest.fixture
def runtime() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="vma-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def stack(tmp_path: Path, runtime: Path) -> Iterator[Stack]:
    yield from _make_stack(tmp_path, runtime)


def _serving(s: Stack) -> bool:
    return tls_get(s.listen_port, s.ca.root_pem).status == 200


def test_envoy_gets_secrets_over_sds_and_config_through_the_proxy(stack: Stack) -> None:
    wait_for(stack.envoy.live, 10, what="Envoy LIVE")
    wait_for(lambda: _serving(stack), 5, what="TLS listener serving")
    ident = stack.store.current()
    reply = tls_get(stack.listen_port, stack.ca.root_pem)
    assert (reply.status, reply.body) == (200, b"backend")
    assert reply.peer_serial == ident.serial
    secrets = stack.secret_serials()
    assert secrets["default"].endswith(f"-{ident.serial:x}")
    assert "ROOTCA" in secrets
    assert stack.proxy.acked()
    assert stack.cp.acked_versions(LISTENER_TYPE) and stack.cp.acked_versions(CLUSTER_TYPE)


def test_rotated_certificate_reaches_envoy_without_restart(stack: Stack) -> None:
    wait_for(lambda: _serving(stack), 10, what="TLS listener serving")
    pid = stack.envoy.pid()
    old = stack.store.current().serial
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + 20
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                if tls_get(stack.listen_port, stack.ca.root_pem).status != 200:
                    failures.append("status")
            except OSError as exc:
                failures.append(repr(exc))

    t = threading.Thread(target=loop)
    t.start()
    try:
        new_ident = stack.ca.issue()
        stack.store.save(new_ident)
        wait_for(
            lambda: stack.secret_serials()["default"].endswith(f"-{new_ident.serial:x}"),
            5,
            what="config_dump showing the new certificate",
        )
        wait_for(
            lambda: tls_get(stack.listen_port, stack.ca.root_pem).peer_serial == new_ident.serial,
            5,
            what="listener presenting the new certificate",
        )
    finally:
        stop.set()
        t.join()
    assert new_ident.serial != old
    assert stack.envoy.pid() == pid, "Envoy was restarted"
    assert stack.envoy.restarts == 0
    assert failures == []


def test_envoy_killed_is_restarted_and_serving_within_two_seconds(stack: Stack) -> None:
    wait_for(lambda: _serving(stack), 10, what="TLS listener serving")
    pid = stack.envoy.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: stack.envoy.pid() not in (None, pid) and stack.envoy.live(), 2, what="Envoy live again")
    wait_for(lambda: _serving(stack), max(0.1, 2 - (time.monotonic() - killed_at)), what="traffic again")
    assert stack.envoy.restarts == 1


def test_traffic_flows_while_control_plane_is_away_and_proxy_reconnects(stack: Stack) -> None:
    wait_for(lambda: _serving(stack), 10, what="TLS listener serving")
    stack.cp.stop()
    wait_for(lambda: stack.proxy.last_error is not None, 5, what="proxy noticing the control plane is gone")
    assert not stack.proxy.connected
    ok = 0
    deadline = time.monotonic() + 2
    for _ in range(200):  # a bounded request loop while the control plane is away
        if time.monotonic() > deadline:
            break
        reply = tls_get(stack.listen_port, stack.ca.root_pem)
        assert reply.status == 200
        ok += 1
    assert ok > 5
    pid = stack.envoy.pid()
    stack.cp.start()  # same port: the proxy must find it again by itself
    wait_for(lambda: stack.proxy.connected, 10, what="proxy reconnected upstream")
    new_version = stack.cp.push()
    wait_for(
        lambda: tls_get(stack.listen_port, stack.ca.root_pem).config_version == str(new_version),
        5,
        what="the new push reaching Envoy",
    )
    assert str(new_version) in stack.cp.acked_versions(LISTENER_TYPE)
    assert stack.envoy.pid() == pid


def test_delta_xds_through_the_proxy(tmp_path: Path, runtime: Path) -> None:
    gen = _make_stack(tmp_path, runtime, delta=True)
    s = next(gen)
    try:
        wait_for(lambda: _serving(s), 10, what="TLS listener serving over delta xDS")
        assert s.proxy.acked()
        v = s.cp.push()
        wait_for(lambda: tls_get(s.listen_port, s.ca.root_pem).config_version == str(v), 5, what="delta push")
    finally:
        gen.close()


def test_readiness_and_merged_metrics(tmp_path: Path, runtime: Path) -> None:
    gen = _make_stack(tmp_path, runtime, hold=True)
    s = next(gen)
    try:
        status_port = s.status.port
        wait_for(lambda: s.cp.streams_opened > 0, 10, what="Envoy's ADS stream reaching the control plane")
        code, body = s.get("/healthz/ready", status_port)
        assert code == 503
        assert b"not" in body
        assert not s.proxy.acked()
        s.cp.release()
        wait_for(lambda: s.get("/healthz/ready", status_port)[0] == 200, 10, what="ready on the status port")
        # 15021-style readiness is Envoy's static listener forwarding to the status server.
        wait_for(
            lambda: s.get("/healthz/ready", s.readiness_port) == (200, b"ready\n"), 5, what="ready via Envoy"
        )
        code, metrics = s.get("/stats/prometheus", status_port)
        text = metrics.decode()
        assert code == 200
        assert 'vmagent_xds_acks_total{type="Listener"}' in text
        assert "vmagent_sds_pushes_total" in text
        assert "envoy_server_live" in text or "envoy_server_state" in text
        # The agent's own families in the merged output pass promtool; Envoy's pass through as named.
        ours = [
            ln
            for ln in text.splitlines()
            if ln.startswith(("vmagent_", "# HELP vmagent_", "# TYPE vmagent_"))
        ]
        assert any(ln.startswith("# TYPE vmagent_xds_acks_total counter") for ln in ours)
        promtool_check("\n".join(ours) + "\n")
        code, prom = s.get("/stats/prometheus", s.prometheus_port)
        assert code == 200 and b"envoy_" in prom
        code, st = s.get("/status", status_port)
        assert code == 200 and json.loads(st)["xds"]["Listener"]["acks"] >= 1
    finally:
        gen.close()


def test_envoy_runs_as_the_proxy_user_and_reaches_the_group_only_sockets(
    tmp_path: Path, runtime: Path
) -> None:
    """Envoy as an unprivileged system user (``nobody`` stands in for vmagent-proxy) gets SDS and ADS
    through the 0660 root:GROUP sockets in the 0750 runtime directory."""
    require_root()
    user = lookup_proxy_user("nobody")
    gen = _make_stack(tmp_path, runtime, run_as="nobody")
    s = next(gen)
    try:
        wait_for(lambda: _serving(s), 10, what="TLS listener serving with Envoy as nobody")
        pid = s.envoy.pid()
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
        assert uid_line.split()[1:] == [str(user.uid)] * 4
        assert gid_line.split()[1:] == [str(user.gid)] * 4
        for sock in (runtime / "sds.sock", runtime / "xds.sock"):
            st = sock.stat()
            assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, os.getuid(), user.gid)
        st = runtime.stat()
        assert (st.st_mode & 0o777, st.st_gid) == (0o750, user.gid)
    finally:
        gen.close()


def test_stop_drains_an_in_flight_request_before_terminating_envoy(stack: Stack) -> None:
    wait_for(lambda: _serving(stack), 10, what="TLS listener serving")
    pid = stack.envoy.pid()
    result: list[Any] = []

    def slow() -> None:
        try:
            result.append(tls_get(stack.listen_port, stack.ca.root_pem, timeout=5, path="/slow"))
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: stack.envoy.active_connections() >= 1, 2, what="the slow request in flight")
    started = time.monotonic()
    stack.envoy.stop()
    took = time.monotonic() - started
    t.join(5)
    assert len(result) == 1 and not isinstance(result[0], Exception), result
    assert (result[0].status, result[0].body) == (200, b"backend")
    assert stack.envoy.pid() is None and pid is not None
    assert took < 1 + 3 + 1  # drain_timeout + term_timeout + slack
