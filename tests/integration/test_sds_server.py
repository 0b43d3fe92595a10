"""The SDS server seen by a gRPC client on its Unix socket (as Envoy sees it)."""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.harness import wait_for
from tests.integration.certs_helper import TestCA
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.sds import SECRET_TYPE_URL, SdsServer
from vmagent.common.errors import VmagentError


@pytest.fixture
def runtime() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vma-", dir="/tmp"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def setup(tmp_path: Path, runtime: Path) -> Iterator[tuple[TestCA, IdentityStore, SdsServer, grpc.Channel]]:
    ca = TestCA()
    store = IdentityStore(AgentPaths(state_dir=tmp_path / "state", runtime_dir=runtime))
    store.save(ca.issue())
    server = SdsServer(store, runtime / "sds.sock")
    server.start()
    channel = grpc.insecure_channel(f"unix:{runtime / 'sds.sock'}")
    yield ca, store, server, channel
    channel.close()
    server.stop()


def _secrets(resp: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for any_msg in resp.resources:
        s = secret_pb2.Secret()
        assert any_msg.Unpack(s)
        out[s.name] = s
    return out


def test_socket_is_private_to_the_agent_user(
    setup: tuple[TestCA, IdentityStore, SdsServer, grpc.Channel],
) -> None:
    server = setup[2]
    assert server.socket_path.stat().st_mode & 0o777 == 0o600


def test_stream_serves_default_and_rootca_then_pushes_rotation(
    setup: tuple[TestCA, IdentityStore, SdsServer, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca, store, server, channel = setup
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    requests.put(
        discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=["default", "ROOTCA"])
    )

    def gen() -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (r := requests.get(timeout=10)) is not None:
            yield r

    call = stub.StreamSecrets(gen(), timeout=20)
    try:
        first = next(call)
        ident = store.current()
        secrets = _secrets(first)
        assert secrets["default"].tls_certificate.certificate_chain.inline_bytes == ident.chain_pem
        assert secrets["default"].tls_certificate.private_key.inline_bytes == ident.key_pem
        assert secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes == ca.root_pem
        # ACK: no response; then a rotation is pushed on the open stream.
        requests.put(
            discovery_pb2.DiscoveryRequest(
                type_url=SECRET_TYPE_URL,
                resource_names=["default", "ROOTCA"],
                version_info=first.version_info,
                response_nonce=first.nonce,
            )
        )
        wait_for(lambda: server.acked_versions() == [first.version_info], 5, what="ACK recorded")
        rotated = ca.issue()
        store.save(rotated)
        second = next(call)
        assert second.version_info != first.version_info
        assert second.version_info.endswith(f"-{rotated.serial:x}")
        got = _secrets(second)["default"].tls_certificate
        assert got.certificate_chain.inline_bytes == rotated.chain_pem
    finally:
        requests.put(None)
        call.cancel()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert b"PRIVATE KEY" not in logged.encode()
    assert rotated.key_pem.decode().splitlines()[1] not in logged


def test_fetch_secrets_and_unknown_names(
    setup: tuple[TestCA, IdentityStore, SdsServer, grpc.Channel],
) -> None:
    _, store, _, channel = setup
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    resp = stub.FetchSecrets(
        discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=["ROOTCA", "nope"]), timeout=5
    )
    assert list(_secrets(resp)) == ["ROOTCA"]
    assert resp.version_info.endswith(f"-{store.current().serial:x}")


def test_listening_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    store = IdentityStore(AgentPaths(state_dir=tmp_path / "state"))
    with pytest.raises(VmagentError, match=r"directory .*/gone does not exist"):
        SdsServer(store, tmp_path / "gone" / "sds.sock").start()


def test_stale_socket_is_replaced(tmp_path: Path, runtime: Path) -> None:
    import socket

    stale = runtime / "sds.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    ca = TestCA()
    store = IdentityStore(AgentPaths(state_dir=tmp_path / "state"))
    store.save(ca.issue())
    server = SdsServer(store, stale)
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{stale}") as ch:
            resp = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=["default"]), timeout=5
            )
        assert list(_secrets(resp)) == ["default"]
    finally:
        server.stop()
