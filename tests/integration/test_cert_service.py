"""The certificate services over real gRPC and TLS: identity comes from authentication, never the CSR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.cp_harness import ControlPlaneProcess, VmDirs, cli, join
from vmagent.agent.identity import IdentityStore
from vmagent.agent.join import secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import load_chain, spiffe_ids

WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, sans: list[x509.GeneralName] | None = None
) -> str:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")])
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def tls_stub(control_plane: ControlPlaneProcess) -> Iterator[istio_ca_pb2_grpc.IstioCertificateServiceStub]:
    root = (control_plane.state_dir / "mesh-root.pem").read_bytes()
    ch = secure_channel(control_plane.join_address, root, CP_SERVER_NAME)
    yield istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
    ch.close()


def _create(
    stub: istio_ca_pb2_grpc.IstioCertificateServiceStub, csr: str, token: str | None
) -> list[x509.Certificate]:
    md = [("authorization", f"Bearer {token}")] if token else None
    resp = stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr=csr), metadata=md, timeout=10)
    return load_chain("".join(resp.cert_chain).encode())


def test_csr_asking_for_another_san_gets_the_token_identity(
    control_plane: ControlPlaneProcess, tls_stub: istio_ca_pb2_grpc.IstioCertificateServiceStub
) -> None:
    tok = control_plane.token("demo/web")
    evil = [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/istio-system/sa/admin"),
        x509.DNSName("payments.example.com"),
    ]
    chain = _create(tls_stub, _csr(ec.generate_private_key(ec.SECP256R1()), evil), tok["token"])
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB_ID)]
    assert leaf.subject == x509.Name([])
    assert chain[-1] == load_chain((control_plane.state_dir / "mesh-root.pem").read_bytes())[0]


@pytest.mark.parametrize(
    ("csr_factory", "reason"),
    [
        (
            lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
            "CSR is not a valid PEM certificate request",
        ),
        (lambda: "x" * (64 * 1024 + 1), "the limit is 65536"),
        (
            lambda: _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 - the weak key under test
            "CSR has an RSA-1024 key; at least RSA-2048 is required",
        ),
    ],
    ids=["malformed", "oversized", "rsa1024"],
)
def test_bad_csr_is_invalid_argument(
    control_plane: ControlPlaneProcess,
    tls_stub: istio_ca_pb2_grpc.IstioCertificateServiceStub,
    csr_factory,
    reason: str,
) -> None:  # type: ignore[no-untyped-def]
    tok = control_plane.token("demo/web")
    with pytest.raises(grpc.RpcError) as err:
        _create(tls_stub, csr_factory(), tok["token"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")
    # A refused CSR does not consume the token.
    listing = cli(
        "vmagent-cp", "token", "list", "--state-dir", str(control_plane.state_dir), "-o", "json"
    ).stdout
    assert '"used": 0' in listing


def test_no_token_and_no_certificate_is_unauthenticated(
    tls_stub: istio_ca_pb2_grpc.IstioCertificateServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _create(tls_stub, _csr(ec.generate_private_key(ec.SECP256R1())), None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _joined(control_plane: ControlPlaneProcess, tmp_path: Path) -> IdentityStore:
    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    assert join(control_plane, vm, tok["token"], tok["ca_hash"]).returncode == 0
    return IdentityStore(AgentPaths(vm.config_dir, vm.state_dir, vm.runtime_dir))


def _mtls_stub(
    control_plane: ControlPlaneProcess, store: IdentityStore
) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
    ident = store.load()
    ch = secure_channel(
        f"127.0.0.1:{control_plane.mtls_port}",
        ident.root_pem,
        CP_SERVER_NAME,
        (ident.key_pem, ident.chain_pem),
    )
    return istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)


def test_renewal_over_mtls_keeps_identity(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    store = _joined(control_plane, tmp_path)
    stub = _mtls_stub(control_plane, store)
    other_san = [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/demo/sa/db")]
    chain = _create(stub, _csr(ec.generate_private_key(ec.SECP256R1()), other_san), None)
    assert spiffe_ids(chain[0]) == [WEB_ID]
    assert chain[0].serial_number != store.load().serial


def test_mtls_port_requires_a_mesh_certificate(control_plane: ControlPlaneProcess) -> None:
    root = (control_plane.state_dir / "mesh-root.pem").read_bytes()
    ch = secure_channel(f"127.0.0.1:{control_plane.mtls_port}", root, CP_SERVER_NAME)
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
    with pytest.raises(grpc.RpcError) as err:
        _create(stub, _csr(ec.generate_private_key(ec.SECP256R1())), None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails without a client cert


@pytest.mark.parametrize("by", ["serial", "identity"])
def test_revoked_workload_cannot_renew_even_after_restart(
    control_plane: ControlPlaneProcess, tmp_path: Path, by: str
) -> None:
    store = _joined(control_plane, tmp_path)
    ident = store.load()
    target = ["--serial", f"{ident.serial:x}"] if by == "serial" else ["--identity", WEB_ID]
    r = control_plane.cp("revoke", *target, "--state-dir", str(control_plane.state_dir))
    assert r.returncode == 0, r.stderr
    control_plane.restart()
    stub = _mtls_stub(control_plane, store)
    with pytest.raises(grpc.RpcError) as err:
        _create(stub, _csr(ec.generate_private_key(ec.SECP256R1())), None)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in (err.value.details() or "")
