"""Hostile input at the control plane's join port (15012), against a real `vmagent-cp serve`.

Oversized gRPC messages are refused by the fixed receive limit; a slow-loris crowd of idle TCP and
half-finished TLS connections neither blocks a real join nor holds its sockets past the handshake
timeout; a source that keeps failing joins is refused for a while and counted in /metrics.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cp_harness import ControlPlaneProcess, VmDirs, join
from tests.harness import wait_for
from vmagent.agent.join import secure_channel
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.controlplane.ca.join_limiter import MAX_FAILURES
from vmagent.controlplane.grpc_limits import HANDSHAKE_TIMEOUT_MS, JOIN_MAX_RECEIVE_BYTES

IDLE_TCP = 300
HALF_TLS = 50


@pytest.fixture
def stub(control_plane: ControlPlaneProcess) -> Iterator[istio_ca_pb2_grpc.IstioCertificateServiceStub]:
    root = (control_plane.state_dir / "mesh-root.pem").read_bytes()
    ch = secure_channel(control_plane.join_address, root, CP_SERVER_NAME)
    yield istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
    ch.close()


def _metric(cp: ControlPlaneProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.http_port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_oversized_message_is_refused_and_the_port_keeps_serving(
    control_plane: ControlPlaneProcess,
    stub: istio_ca_pb2_grpc.IstioCertificateServiceStub,
    tmp_path: Path,
) -> None:
    tok = control_plane.token("demo/web")
    huge = "A" * (JOIN_MAX_RECEIVE_BYTES + 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=huge),
            metadata=[("authorization", f"Bearer {tok['token']}")],
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    # The refused call consumed nothing: the same one-use token still joins.
    r = join(control_plane, VmDirs.under(tmp_path), tok["token"], tok["ca_hash"])
    assert r.returncode == 0, r.stderr
    print(f"message of {len(huge)} bytes refused with RESOURCE_EXHAUSTED; join afterwards ok")


def _half_tls(port: int) -> socket.socket:
    """A TCP connection that sent the first bytes of a TLS ClientHello and then goes quiet."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=CP_SERVER_NAME)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(hello[: len(hello) // 2])
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_loris_cannot_exhaust_the_join_port(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    port = control_plane.tls_port
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE_TCP)]
    crowd += [_half_tls(port) for _ in range(HALF_TLS)]
    try:
        tok = control_plane.token("demo/web")
        started = time.monotonic()
        r = join(control_plane, VmDirs.under(tmp_path), tok["token"], tok["ca_hash"])
        took = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        # The server drops connections that never finish their TLS handshake.
        wait_for(
            lambda: all(_closed_by_peer(s) for s in crowd),
            timeout=HANDSHAKE_TIMEOUT_MS / 1000 * 6,
            interval=0.5,
            what="the server to drop every idle connection",
        )
    finally:
        for s in crowd:
            s.close()
    print(
        f"{IDLE_TCP} idle TCP + {HALF_TLS} half-open TLS connections: join ok in {took:.1f} s, "
        f"all dropped by the server's {HANDSHAKE_TIMEOUT_MS / 1000:.0f} s handshake timeout"
    )


def test_failed_joins_from_one_source_are_rate_limited_and_counted(
    control_plane: ControlPlaneProcess, stub: istio_ca_pb2_grpc.IstioCertificateServiceStub
) -> None:
    request = istio_ca_pb2.IstioCertificateRequest(csr="not a csr")
    for _ in range(MAX_FAILURES):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateCertificate(request, metadata=[("authorization", "Bearer bogus")], timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Now even a good token from this address is refused unseen, and nothing of it is used.
    tok = control_plane.token("demo/web")
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {tok['token']}")], timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed joins from 127.0.0.1; retry in" in (err.value.details() or "")
    assert _metric(control_plane, "vmagent_cp_join_failures_total") == MAX_FAILURES
    assert _metric(control_plane, "vmagent_cp_join_rate_limited_total") == 1
    listing = control_plane.cp("token", "list", "--state-dir", str(control_plane.state_dir), "-o", "json")
    assert '"used": 0' in listing.stdout, listing.stdout
    print(f"{MAX_FAILURES} failed joins, then the source was refused (1 rate-limited, counted in /metrics)")
