"""The SDS server serving a gateway's certificate files (``file-cert:``, ``file-root:``, ``kubernetes://``)."""

from __future__ import annotations

import datetime
import logging
import queue
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.integration.certs_helper import TestCA
from vmagent.agent.gateway import FileCertificates, GatewayConfig, parse_gateway
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.sds import SECRET_TYPE_URL, SdsServer
from vmagent.common.errors import ConfigError, VmagentError


def self_signed(host: str) -> tuple[bytes, bytes]:
    """A self-signed server certificate for ``host`` (it is its own CA) and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(directory: Path, host: str) -> tuple[Path, Path, bytes, bytes]:
    cert, key = self_signed(host)
    directory.mkdir(parents=True, exist_ok=True)
    c, k = directory / f"{host}.crt", directory / f"{host}.key"
    c.write_bytes(cert)
    k.write_bytes(key)
    k.chmod(0o600)
    return c, k, cert, key


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, SdsServer, grpc.Channel]]:
    runtime = Path(tempfile.mkdtemp(prefix="vmagw-", dir="/tmp"))
    runtime.chmod(0o700)
    ca = TestCA()
    paths = AgentPaths(config_dir=tmp_path / "etc", state_dir=tmp_path / "state", runtime_dir=runtime)
    store = IdentityStore(paths)
    store.save(ca.issue())
    certs = tmp_path / "etc" / "certs"
    cfg = parse_gateway({"enabled": True}, "config.yaml", tmp_path / "etc")
    files = FileCertificates(cfg, forbidden_dirs=[paths.state_dir])
    server = SdsServer(store, runtime / "sds.sock", files=files, file_poll_interval=0.1)
    server.start()
    channel = grpc.insecure_channel(f"unix:{runtime / 'sds.sock'}")
    yield certs, server, channel
    channel.close()
    server.stop()
    shutil.rmtree(runtime, ignore_errors=True)


def _secrets(resp: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for any_msg in resp.resources:
        s = secret_pb2.Secret()
        assert any_msg.Unpack(s)
        out[s.name] = s
    return out


def test_file_certificate_is_served_and_a_changed_file_is_pushed(
    env: tuple[Path, SdsServer, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    certs, _, channel = env
    c, k, cert, key = write_pair(certs, "shop.example.com")
    name = f"file-cert:{c}~{k}"
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    requests.put(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=[name]))

    def gen() -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (r := requests.get(timeout=10)) is not None:
            yield r

    call = stub.StreamSecrets(gen(), timeout=20)
    try:
        first = next(call)
        got = _secrets(first)[name].tls_certificate
        assert got.certificate_chain.inline_bytes == cert
        assert got.private_key.inline_bytes == key
        requests.put(
            discovery_pb2.DiscoveryRequest(
                type_url=SECRET_TYPE_URL,
                resource_names=[name],
                version_info=first.version_info,
                response_nonce=first.nonce,
            )
        )
        # The operator replaces the certificate (e.g. a renewal); the stream is pushed the new one.
        new_cert, new_key = self_signed("shop.example.com")
        k.write_bytes(new_key)
        c.write_bytes(new_cert)
        second = next(call)
        assert second.version_info != first.version_info
        assert _secrets(second)[name].tls_certificate.certificate_chain.inline_bytes == new_cert
    finally:
        requests.put(None)
        call.cancel()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PRIVATE KEY" not in logged


def test_root_and_credential_name_secrets(env: tuple[Path, SdsServer, grpc.Channel]) -> None:
    certs, _, channel = env
    c, _, cert, _ = write_pair(certs, "ca.example.com")
    cred = certs.parent / "credentials" / "shop-cert"
    _, _, _, ckey = write_pair(cred, "x")
    (cred / "x.crt").rename(cred / "tls.crt")
    (cred / "x.key").rename(cred / "tls.key")
    (cred / "ca.crt").write_bytes(cert)
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    names = [f"file-root:{c}", "kubernetes://shop-cert", "kubernetes://shop-cert-cacert"]
    resp = stub.FetchSecrets(
        discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=names), timeout=5
    )
    got = _secrets(resp)
    assert got[f"file-root:{c}"].validation_context.trusted_ca.inline_bytes == cert
    assert got["kubernetes://shop-cert"].tls_certificate.private_key.inline_bytes == ckey
    assert got["kubernetes://shop-cert-cacert"].validation_context.trusted_ca.inline_bytes == cert


def test_files_outside_the_certificate_dirs_or_mismatched_are_not_served(
    env: tuple[Path, SdsServer, grpc.Channel], tmp_path: Path
) -> None:
    certs, _, channel = env
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    agent_key = tmp_path / "state" / "key.pem"
    c, k, _, _ = write_pair(certs, "a.example.com")
    _, k2, _, _ = write_pair(certs, "b.example.com")
    outside, _, _, _ = write_pair(tmp_path / "elsewhere", "o.example.com")
    names = [
        f"file-cert:{c}~{agent_key}",  # the agent's own key: never
        f"file-root:{outside}",  # not below certificate_dirs
        f"file-cert:{c}~{k2}",  # a key that is not the certificate's
        f"file-cert:{c}~{k}",  # fine
    ]
    resp = stub.FetchSecrets(
        discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=names), timeout=5
    )
    assert list(_secrets(resp)) == [f"file-cert:{c}~{k}"]


def test_file_certificates_errors_say_what_is_wrong(tmp_path: Path) -> None:
    cfg = GatewayConfig(certificate_dirs=(tmp_path,), credential_dir=tmp_path / "cred")
    files = FileCertificates(cfg)
    with pytest.raises(VmagentError, match="expected file-cert:CERT~KEY"):
        files.build("file-cert:/x")
    with pytest.raises(VmagentError, match="cannot read"):
        files.build(f"file-root:{tmp_path}/missing.pem")
    with pytest.raises(VmagentError, match="plain name"):
        files.build("kubernetes://../etc")
    with pytest.raises(ConfigError, match=r"config.yaml: gateway.certificate_dirs"):
        parse_gateway({"certificate_dirs": ["relative"]}, "config.yaml", tmp_path)
    with pytest.raises(ConfigError, match=r"gateway.bogus: unknown field"):
        parse_gateway({"bogus": 1}, "config.yaml", tmp_path)


def test_a_half_written_renewal_keeps_the_last_good_certificate(
    env: tuple[Path, SdsServer, grpc.Channel],
) -> None:
    certs, _, channel = env
    c, k, cert, key = write_pair(certs, "shop.example.com")
    name = f"file-cert:{c}~{k}"
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)

    def fetch() -> dict[str, secret_pb2.Secret]:
        req = discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=[name])
        return _secrets(stub.FetchSecrets(req, timeout=5))

    assert fetch()[name].tls_certificate.certificate_chain.inline_bytes == cert
    k.write_bytes(self_signed("other")[1])  # the new key is there, the new certificate not yet
    got = fetch()[name].tls_certificate
    assert (got.certificate_chain.inline_bytes, got.private_key.inline_bytes) == (cert, key)


def test_gateway_mode_turns_capture_off_unless_asked_and_never_inbound() -> None:
    from vmagent.agent.gateway import gateway_capture

    on = GatewayConfig(enabled=True)
    assert gateway_capture({"dns": True}, on) == {"dns": True, "enabled": False, "inbound": False}
    assert gateway_capture({"enabled": True}, on) == {"enabled": True, "inbound": False}
    assert gateway_capture({"dns": True}, GatewayConfig()) == {"dns": True}


def test_bootstrap_of_a_gateway_is_a_router_node(tmp_path: Path) -> None:
    from vmagent.agent.envoy_bootstrap import BootstrapParams, render_bootstrap

    p = BootstrapParams(
        node_ip="10.0.0.9", name="ingress-10-0-0-9", namespace="edge", xds_socket=tmp_path / "x",
        sds_socket=tmp_path / "s", proxy_type="router",
    )  # fmt: skip
    node = render_bootstrap(p)["node"]
    assert node["id"] == "router~10.0.0.9~ingress-10-0-0-9.edge~edge.svc.cluster.local"
    assert node["metadata"]["PROXY_TYPE"] == "router"
