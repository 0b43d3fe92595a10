"""`vmagent-cp serve --ca-workers N`: extra processes serve joins on the TLS port, never the mTLS port."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cp_harness import ControlPlaneProcess
from tests.harness import wait_for
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import load_chain, spiffe_ids, verify_chain

WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"
WORKERS = 2
CALLS = 30


@pytest.fixture
def cp_with_workers(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path, extra_args=["--ca-workers", str(WORKERS)])
    cp.add_group("demo", "web")
    cp.start()
    try:
        wait_for(lambda: len(_workers(cp)) == WORKERS, timeout=30, what=f"{WORKERS} CA workers to listen")
        yield cp
    finally:
        pids = [p.pid for p in _worker_procs(cp)]
        cp.stop()
        for pid in pids:  # never leave a worker behind, even when a test failed
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def _worker_procs(cp: ControlPlaneProcess) -> list[psutil.Process]:
    if cp.proc is None:
        return []
    try:
        children = psutil.Process(cp.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "vmagent.controlplane.ca.workers" in " ".join(c.cmdline())]


def _listening_ports(proc: psutil.Process) -> set[int]:
    return {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def _workers(cp: ControlPlaneProcess) -> list[psutil.Process]:
    """Worker processes that listen on the join port."""
    return [w for w in _worker_procs(cp) if cp.tls_port in _listening_ports(w)]


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _channel(cp: ControlPlaneProcess, index: int) -> grpc.Channel:
    root = (cp.state_dir / "mesh-root.pem").read_bytes()
    # A local subchannel pool and a distinct argument: a TCP connection of its own per channel.
    options = [
        ("grpc.ssl_target_name_override", CP_SERVER_NAME),
        ("grpc.use_local_subchannel_pool", 1),
        ("vmagent.test.connection", index),
    ]
    return grpc.secure_channel(cp.join_address, grpc.ssl_channel_credentials(root), options=options)


def _create(channel: grpc.Channel, token: str) -> list[x509.Certificate]:
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
    resp = stub.CreateCertificate(
        istio_ca_pb2.IstioCertificateRequest(csr=_csr()),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=20,
    )
    return load_chain("".join(resp.cert_chain).encode())


def _issued_serials(cp: ControlPlaneProcess) -> set[str]:
    url = f"http://{cp.host}:{cp.http_port}/api/v1/certificates"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return {c["serial"] for c in json.load(resp)}


def test_joins_spread_over_the_workers_and_a_token_use_count_holds_across_processes(
    cp_with_workers: ControlPlaneProcess,
) -> None:
    cp = cp_with_workers
    # The mutual-TLS port (ADS, registration) stays with the main process alone.
    for w in _workers(cp):
        assert cp.mtls_port not in _listening_ports(w)
    root = load_chain((cp.state_dir / "mesh-root.pem").read_bytes())[0]
    tok = cp.token("demo/web", uses=CALLS)
    channels = [_channel(cp, i) for i in range(CALLS)]
    try:
        serials = set()
        for ch in channels:
            chain = _create(ch, tok["token"])
            verify_chain(chain, root)
            assert spiffe_ids(chain[0]) == [WEB_ID]
            serials.add(f"{chain[0].serial_number:x}")
        # Some of the connections (each its own) were accepted by workers, not by the main process.
        by_workers = sum(
            1
            for w in _workers(cp)
            for c in w.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == cp.tls_port
        )
        assert by_workers > 0
        # The token had CALLS uses in total, whichever process consumed them.
        with pytest.raises(grpc.RpcError) as err:
            _create(channels[0], tok["token"])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"used {CALLS} of {CALLS} times" in (err.value.details() or "")
    finally:
        for ch in channels:
            ch.close()
    # Every certificate, from whichever process, is in the main process's certificate list.
    wait_for(lambda: serials <= _issued_serials(cp), timeout=10, what="the workers' issued certificates")


def test_a_worker_that_dies_is_replaced_and_workers_stop_with_serve(
    cp_with_workers: ControlPlaneProcess,
) -> None:
    cp = cp_with_workers
    victim = _workers(cp)[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_for(
        lambda: len(_workers(cp)) == WORKERS and victim.pid not in [w.pid for w in _workers(cp)],
        timeout=30,
        what="the killed CA worker to be replaced",
    )
    assert "CA worker" in cp.log_path.read_text()
    tok = cp.token("demo/web", uses=1)
    ch = _channel(cp, 0)
    try:
        assert spiffe_ids(_create(ch, tok["token"])[0]) == [WEB_ID]
    finally:
        ch.close()
    workers = _workers(cp)
    cp.stop()
    for w in workers:
        w.wait(15)  # raises psutil.TimeoutExpired if it outlives serve


def test_workers_exit_when_serve_is_killed(cp_with_workers: ControlPlaneProcess) -> None:
    cp = cp_with_workers
    workers = _workers(cp)
    assert cp.proc is not None
    cp.proc.send_signal(signal.SIGKILL)  # no clean stop: the workers notice their stdin closing
    cp.proc.wait(10)
    for w in workers:
        w.wait(15)
