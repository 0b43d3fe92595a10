"""x509util: chain verification failures, SPIFFE ids, key and PEM helpers."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import (
    SpiffeId,
    cert_pem,
    chain_pem,
    generate_key,
    key_pem,
    load_chain,
    load_key,
    spiffe_ids,
    spki_hash,
    verify_chain,
)

NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    uris: tuple[str, ...] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - HOUR)
        .not_valid_after(not_after or NOW + HOUR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """root -> intermediate -> leaf, all valid now."""

    def __init__(self, root_name: str = "root") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(root_name, self.root_key, ca=True)
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = _cert("intermediate", self.mid_key, (self.root.subject, self.root_key), ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = self.issue_leaf()

    def issue_leaf(self, **kw: object) -> x509.Certificate:
        return _cert("leaf", self.leaf_key, (self.mid.subject, self.mid_key), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def test_a_complete_chain_verifies_with_or_without_the_root_in_it(pki: Pki) -> None:
    verify_chain([pki.leaf, pki.mid, pki.root], pki.root)
    verify_chain([pki.leaf, pki.mid], pki.root)


def test_an_empty_chain_is_refused(pki: Pki) -> None:
    with pytest.raises(VmagentError, match="empty certificate chain"):
        verify_chain([], pki.root)


def test_a_chain_missing_its_intermediate_is_refused(pki: Pki) -> None:
    with pytest.raises(VmagentError, match="'CN=leaf' is not issued by 'CN=root'"):
        verify_chain([pki.leaf], pki.root)


def test_a_chain_from_another_root_is_refused(pki: Pki) -> None:
    other = Pki(root_name="other root")
    with pytest.raises(VmagentError, match="'CN=intermediate' is not issued by 'CN=root'"):
        verify_chain([other.leaf, other.mid], pki.root)


def test_a_chain_from_a_root_with_the_same_name_but_another_key_is_refused(pki: Pki) -> None:
    impostor = Pki()  # same subject names, different keys
    with pytest.raises(VmagentError, match="is not issued by"):
        verify_chain([impostor.leaf, impostor.mid], pki.root)


def test_an_expired_leaf_is_refused(pki: Pki) -> None:
    leaf = pki.issue_leaf(not_before=NOW - 3 * HOUR, not_after=NOW - HOUR)
    with pytest.raises(VmagentError, match="'CN=leaf' is outside its validity period"):
        verify_chain([leaf, pki.mid], pki.root)


def test_a_leaf_that_is_not_yet_valid_is_refused(pki: Pki) -> None:
    leaf = pki.issue_leaf(not_before=NOW + HOUR, not_after=NOW + 3 * HOUR)
    with pytest.raises(VmagentError, match="outside its validity period"):
        verify_chain([leaf, pki.mid], pki.root)


def test_an_expired_intermediate_is_refused() -> None:
    p = Pki()
    p.mid = _cert(
        "intermediate",
        p.mid_key,
        (p.root.subject, p.root_key),
        ca=True,
        not_before=NOW - 3 * HOUR,
        not_after=NOW - HOUR,
    )
    with pytest.raises(VmagentError, match="'CN=intermediate' is outside its validity period"):
        verify_chain([p.issue_leaf(), p.mid], p.root)


def test_a_chain_given_in_the_wrong_order_is_refused(pki: Pki) -> None:
    with pytest.raises(VmagentError, match="is not issued by"):
        verify_chain([pki.mid, pki.leaf], pki.root)


def test_spiffe_id_round_trip_and_refusals() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/web")
    assert (sid.trust_domain, sid.namespace, sid.service_account) == ("cluster.local", "demo", "web")
    assert str(sid) == sid.uri == "spiffe://cluster.local/ns/demo/sa/web"
    for bad in (
        "spiffe://cluster.local/ns/demo",
        "spiffe://cluster.local/ns/demo/sa/web/extra",
        "https://cluster.local/ns/demo/sa/web",
        "spiffe://Cluster.Local/ns/demo/sa/web",
        "",
    ):
        with pytest.raises(VmagentError, match="not a workload SPIFFE id"):
            SpiffeId.parse(bad)


def test_spiffe_ids_lists_only_spiffe_uris(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("x", key, uris=("https://example.com/a", "spiffe://td/ns/a/sa/b"))
    assert spiffe_ids(cert) == ["spiffe://td/ns/a/sa/b"]
    assert spiffe_ids(pki.root) == []


def test_spki_hash_is_sha256_of_the_subject_public_key_info(pki: Pki) -> None:
    der = pki.root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_hash(pki.root) == "sha256:" + hashlib.sha256(der).hexdigest()
    # The hash pins the key, not the certificate: a re-issued root with the same key has the same hash.
    again = _cert("root", pki.root_key, ca=True)
    assert spki_hash(again) == spki_hash(pki.root)


def test_generate_key_algorithms() -> None:
    ec_key = generate_key()
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey) and ec_key.curve.name == "secp256r1"
    rsa_key = generate_key("rsa-2048")
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    with pytest.raises(VmagentError, match="unknown key algorithm 'dsa'"):
        generate_key("dsa")


def test_pem_helpers_round_trip(pki: Pki) -> None:
    assert load_chain(chain_pem([pki.leaf, pki.mid, pki.root])) == [pki.leaf, pki.mid, pki.root]
    assert load_chain(cert_pem(pki.root)) == [pki.root]
    key = generate_key()
    assert load_key(key_pem(key)).private_numbers() == key.private_numbers()
    with pytest.raises(VmagentError, match="invalid PEM certificate data"):
        load_chain(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
