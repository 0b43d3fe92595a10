"""The mesh CA: root creation and reuse, operator intermediates, what a workload certificate carries,
lifetime clamping, and the CSRs it refuses."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import (
    PrivateKey,
    SpiffeId,
    cert_pem,
    generate_key,
    key_pem,
    spki_hash,
    verify_chain,
)
from vmagent.controlplane.ca.authority import (
    MAX_CSR_BYTES,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    CaSettings,
    CertificateAuthority,
    CsrError,
    parse_csr,
)

IDENTITY = SpiffeId("cluster.local", "demo", "web")


def _csr(
    key: PrivateKey | ed25519.Ed25519PrivateKey,
    sans: list[x509.GeneralName] | None = None,
    cn: str | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _ca_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    lifetime: datetime.timedelta = datetime.timedelta(days=30),
    ca: bool = True,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "state", CaSettings())


# -- the root ----------------------------------------------------------------------------------------


def test_first_start_creates_a_root_with_a_private_key_and_later_starts_reuse_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = CertificateAuthority.load_or_create(state, CaSettings())
    key_file, cert_file = state / ROOT_KEY_FILE, state / ROOT_CERT_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert cert_file.read_bytes() == first.root_pem
    root = first.root
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.subject == root.issuer
    key_bytes = key_file.read_bytes()

    second = CertificateAuthority.load_or_create(state, CaSettings())
    assert second.root_hash == first.root_hash == spki_hash(root)
    assert second.root_pem == first.root_pem
    assert key_file.read_bytes() == key_bytes
    # A certificate from the restarted CA verifies against the root the first start handed out.
    chain = second.sign_workload_csr(_csr(generate_key()), IDENTITY)
    verify_chain(chain, root)


def test_half_a_root_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    CertificateAuthority.load_or_create(state, CaSettings())
    (state / ROOT_KEY_FILE).unlink()
    cert_before = (state / ROOT_CERT_FILE).read_bytes()
    with pytest.raises(VmagentError, match="holds only half of the root CA"):
        CertificateAuthority.load_or_create(state, CaSettings())
    assert (state / ROOT_CERT_FILE).read_bytes() == cert_before
    assert not (state / ROOT_KEY_FILE).exists()


# -- an operator's intermediate ----------------------------------------------------------------------


class OperatorPki:
    def __init__(self, tmp: Path, mid_lifetime: datetime.timedelta = datetime.timedelta(days=30)) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca_cert("corp root", self.root_key, lifetime=datetime.timedelta(days=365))
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = _ca_cert("corp mesh intermediate", self.mid_key, (self.root, self.root_key), mid_lifetime)
        self.cert_file = tmp / "ca-cert.pem"
        self.key_file = tmp / "ca-key.pem"
        self.cert_file.write_bytes(cert_pem(self.mid) + cert_pem(self.root))
        self.key_file.write_bytes(key_pem(self.mid_key))


def test_an_operator_intermediate_signs_and_the_chain_runs_leaf_first_up_to_the_root(tmp_path: Path) -> None:
    pki = OperatorPki(tmp_path)
    state = tmp_path / "state"
    ca = CertificateAuthority.load_or_create(state, CaSettings(), pki.cert_file, pki.key_file)
    assert ca.root == pki.root
    assert ca.root_hash == spki_hash(pki.root)
    chain = ca.sign_workload_csr(_csr(generate_key()), IDENTITY)
    assert len(chain) == 3
    assert chain[1:] == [pki.mid, pki.root]
    assert chain[0].issuer == pki.mid.subject
    verify_chain(chain, pki.root)
    # The operator's CA is used as it is: no self-signed root is created beside it.
    assert not (state / ROOT_KEY_FILE).exists() and not (state / ROOT_CERT_FILE).exists()


def test_a_leaf_never_outlives_the_operator_intermediate(tmp_path: Path) -> None:
    pki = OperatorPki(tmp_path, mid_lifetime=datetime.timedelta(hours=2))
    ca = CertificateAuthority.load_or_create(
        tmp_path / "state", CaSettings(default_ttl=datetime.timedelta(days=1)), pki.cert_file, pki.key_file
    )
    leaf = ca.sign_workload_csr(_csr(generate_key()), IDENTITY)[0]
    assert leaf.not_valid_after_utc == pki.mid.not_valid_after_utc


def test_operator_ca_files_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    pki = OperatorPki(tmp_path)
    state = tmp_path / "state"
    with pytest.raises(VmagentError, match="--ca-cert and --ca-key go together"):
        CertificateAuthority.load_or_create(state, CaSettings(), pki.cert_file, None)

    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(key_pem(generate_key()))
    with pytest.raises(VmagentError, match="is not the key of the certificate"):
        CertificateAuthority.load_or_create(state, CaSettings(), pki.cert_file, other_key)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_ca = _ca_cert("not a ca", leaf_key, (pki.root, pki.root_key), ca=False)
    not_ca_file = tmp_path / "not-ca.pem"
    not_ca_file.write_bytes(cert_pem(not_ca) + cert_pem(pki.root))
    leaf_key_file = tmp_path / "leaf-key.pem"
    leaf_key_file.write_bytes(key_pem(leaf_key))
    with pytest.raises(VmagentError, match=r"not a CA \(basicConstraints CA:FALSE\)"):
        CertificateAuthority.load_or_create(state, CaSettings(), not_ca_file, leaf_key_file)

    with pytest.raises(VmagentError, match="cannot read CA material"):
        CertificateAuthority.load_or_create(state, CaSettings(), tmp_path / "missing.pem", pki.key_file)


# -- what a workload certificate carries -------------------------------------------------------------


def test_the_certificate_names_only_the_callers_identity_whatever_the_csr_asks_for(
    ca: CertificateAuthority,
) -> None:
    key = generate_key()
    csr = _csr(
        key,
        sans=[
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
            x509.DNSName("evil.example.com"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ],
        cn="admin",
    )
    leaf = ca.sign_workload_csr(csr, IDENTITY)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/demo/sa/web")]
    assert san.critical  # the subject is empty, so the SAN must be critical (RFC 5280)
    assert leaf.subject == x509.Name([])
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_a_csr_parsed_once_is_signed_like_a_pem_one(tmp_path: Path) -> None:
    pki = OperatorPki(tmp_path)
    ca = CertificateAuthority.load_or_create(tmp_path / "state", CaSettings(), pki.cert_file, pki.key_file)
    key = generate_key()
    csr = parse_csr(_csr(key, sans=[x509.DNSName("evil.example.com")], cn="admin"))
    chain = ca.sign_csr(csr, IDENTITY, datetime.timedelta(minutes=20))
    verify_chain(chain, pki.root)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(IDENTITY.uri)]
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert lifetime == datetime.timedelta(minutes=22)  # 20 min asked + backdated a tenth of it
    # The PEM tail every response carries is the signing certificate and those above it.
    assert ca.chain_tail_pem == (cert_pem(pki.mid).decode(), cert_pem(pki.root).decode())
    assert [cert_pem(c).decode() for c in chain[1:]] == list(ca.chain_tail_pem)


def test_each_certificate_gets_a_fresh_serial(ca: CertificateAuthority) -> None:
    csr = _csr(generate_key())
    serials = {ca.sign_workload_csr(csr, IDENTITY)[0].serial_number for _ in range(20)}
    assert len(serials) == 20


def test_an_rsa_2048_csr_is_signed(ca: CertificateAuthority) -> None:
    leaf = ca.sign_workload_csr(_csr(generate_key("rsa-2048")), IDENTITY)[0]
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        (None, datetime.timedelta(minutes=30)),  # the default
        (datetime.timedelta(0), datetime.timedelta(minutes=30)),  # 0 means "the default" (Istio)
        (datetime.timedelta(seconds=-5), datetime.timedelta(minutes=30)),
        (datetime.timedelta(seconds=2), datetime.timedelta(seconds=10)),  # raised to the minimum
        (datetime.timedelta(minutes=20), datetime.timedelta(minutes=20)),  # within bounds: as asked
        (datetime.timedelta(days=30), datetime.timedelta(hours=1)),  # cut to the maximum
    ],
)
def test_the_lifetime_is_clamped_between_the_minimum_and_the_maximum(
    tmp_path: Path, asked: datetime.timedelta | None, granted: datetime.timedelta
) -> None:
    settings = CaSettings(
        default_ttl=datetime.timedelta(minutes=30),
        max_ttl=datetime.timedelta(hours=1),
        min_ttl=datetime.timedelta(seconds=10),
    )
    ca = CertificateAuthority.load_or_create(tmp_path / "state", settings)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    leaf = ca.sign_workload_csr(_csr(generate_key()), IDENTITY, asked)[0]
    after = datetime.datetime.now(datetime.UTC)
    assert before + granted <= leaf.not_valid_after_utc <= after + granted
    # Backdated for clock skew by a tenth of the lifetime, at most ten minutes.
    skew = min(datetime.timedelta(minutes=10), granted / 10)
    assert before - skew - datetime.timedelta(seconds=1) <= leaf.not_valid_before_utc <= after - skew


def test_server_certificates_name_the_given_hosts(ca: CertificateAuthority) -> None:
    key, chain = ca.issue_server_cert(
        ["cp.example", "localhost"], ["127.0.0.1", "::1"], datetime.timedelta(days=1)
    )
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert chain[1:] == [ca.root]
    verify_chain(chain, ca.root)
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


# -- refused CSRs ------------------------------------------------------------------------------------


def _big_csr() -> bytes:
    names: list[x509.GeneralName] = [x509.DNSName(f"host-{i:05d}.padding.example.com") for i in range(2500)]
    return _csr(generate_key(), sans=names)


def _rsa_1024_csr() -> bytes:
    return _csr(rsa.generate_private_key(65537, 1024))  # noqa: S505 - the weak key is the point


def _bad_signature_csr() -> bytes:
    der = bytearray(
        x509.load_pem_x509_csr(_csr(generate_key(), cn="victim")).public_bytes(serialization.Encoding.DER)
    )
    # The subject's "victim" sits inside the signed part: change one letter, keep the signature.
    at = bytes(der).index(b"victim")
    der[at] = ord("V")
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"this is not a CSR", "CSR is not a valid PEM certificate request"),
        (
            lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "CSR is not a valid PEM certificate request",
        ),
        (_big_csr, f"the limit is {MAX_CSR_BYTES}"),
        (_rsa_1024_csr, "CSR has an RSA-1024 key; at least RSA-2048"),
        (_bad_signature_csr, "CSR signature does not verify"),
        (lambda: _csr(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1; P-256 or P-384"),
        (lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "key type .* is not supported"),
    ],
    ids=["garbage", "bad-der", "over-64KiB", "rsa-1024", "bad-signature", "p521", "ed25519"],
)
def test_bad_csrs_are_refused_with_a_reason(ca: CertificateAuthority, make: object, reason: str) -> None:
    csr = make()  # type: ignore[operator]
    with pytest.raises(CsrError, match=reason):
        ca.sign_workload_csr(csr, IDENTITY)


def test_the_size_limit_is_checked_on_a_real_csr_just_over_it(ca: CertificateAuthority) -> None:
    csr = _big_csr()
    assert len(csr) > MAX_CSR_BYTES
    assert x509.load_pem_x509_csr(csr).is_signature_valid  # a valid CSR: only its size is wrong
    with pytest.raises(CsrError, match=f"CSR is {len(csr)} bytes"):
        ca.sign_workload_csr(csr, IDENTITY)


def test_csr_errors_are_user_facing_errors() -> None:
    assert issubclass(CsrError, VmagentError)


def test_an_operator_bundle_with_the_wrong_root_of_the_same_name_is_refused(tmp_path: Path) -> None:
    pki = OperatorPki(tmp_path)
    renewed_key = ec.generate_private_key(ec.SECP256R1())
    renewed_root = _ca_cert("corp root", renewed_key)  # same name as the real issuer, another key
    pki.cert_file.write_bytes(cert_pem(pki.mid) + cert_pem(renewed_root))
    with pytest.raises(VmagentError, match="is not issued by"):
        CertificateAuthority.load_or_create(tmp_path / "state", CaSettings(), pki.cert_file, pki.key_file)


def test_backdating_is_a_tenth_of_the_lifetime_capped_at_ten_minutes(tmp_path: Path) -> None:
    """The clock-skew allowance promised in docs/reliability.md: 10 min for the default 24 h lifetime;
    the self-made root is backdated a day so a VM behind accepts it right after first start."""
    ca = CertificateAuthority.load_or_create(tmp_path / "state", CaSettings())
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - ca.root.not_valid_before_utc).total_seconds() - 86400) < 30
    for asked, backdate in ((datetime.timedelta(hours=24), 600), (datetime.timedelta(minutes=30), 180)):
        leaf = ca.sign_workload_csr(_csr(generate_key()), IDENTITY, asked)[0]
        now = datetime.datetime.now(datetime.UTC)
        assert abs((now - leaf.not_valid_before_utc).total_seconds() - backdate) < 30
        assert abs((leaf.not_valid_after_utc - now - asked).total_seconds()) < 30
