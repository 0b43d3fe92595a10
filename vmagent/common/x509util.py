"""X.509 and key helpers shared by the CA, the agent and the tests."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vmagent.common.errors import VmagentError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_SPIFFE_RE = re.compile(r"^spiffe://(?P<td>[a-z0-9._-]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


@dataclass(frozen=True)
class SpiffeId:
    """A workload identity ``spiffe://TRUST_DOMAIN/ns/NS/sa/SA``."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        m = _SPIFFE_RE.match(uri)
        if not m:
            raise VmagentError(f"not a workload SPIFFE id: {uri!r}")
        return cls(m["td"], m["ns"], m["sa"])

    def __str__(self) -> str:
        return self.uri


def generate_key(algorithm: str = "ec-p256") -> PrivateKey:
    """Make a private key: ``ec-p256`` (default), ``rsa-2048`` or ``rsa-4096``."""
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm in ("rsa-2048", "rsa-4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise VmagentError(f"unknown key algorithm {algorithm!r}; use ec-p256, rsa-2048 or rsa-4096")


def key_pem(key: PrivateKey | CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise VmagentError("unsupported private key type (want EC or RSA)")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in chain)


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise VmagentError(f"invalid PEM certificate data: {exc}") from exc
    return certs


def spki_hash(cert: x509.Certificate) -> str:
    """``sha256:HEX`` of the certificate's SubjectPublicKeyInfo, as kubeadm pins CAs."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    """The ``spiffe://`` URI SANs of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def verify_chain(chain: list[x509.Certificate], root: x509.Certificate) -> None:
    """Check that ``chain`` (leaf first) is signed link by link up to ``root``; raise VmagentError if not.

    The check covers signatures, issuer names and validity times; it is what the agent runs on every
    chain the control plane returns before it writes anything.
    """
    if not chain:
        raise VmagentError("empty certificate chain")
    now = datetime.datetime.now(datetime.UTC)
    links = [*chain]
    if links[-1].fingerprint(hashes.SHA256()) != root.fingerprint(hashes.SHA256()):
        links.append(root)
    for child, parent in itertools.pairwise(links):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VmagentError(
                f"certificate {child.subject.rfc4514_string()!r} is not issued by "
                f"{parent.subject.rfc4514_string()!r}: {exc}"
            ) from exc
    for cert in links:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise VmagentError(
                f"certificate {cert.subject.rfc4514_string()!r} is outside its validity period"
            )
