"""The mesh certificate authority.

A self-signed root is created in the state dir on first start (or an operator's intermediate is loaded
from ``--ca-cert``/``--ca-key``) and reused afterwards. Workload certificates carry exactly one URI SAN,
the SPIFFE id of the *authenticated caller*; nothing the CSR asks for is copied into them.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write, ensure_dir
from vmagent.common.x509util import (
    PrivateKey,
    SpiffeId,
    cert_pem,
    generate_key,
    key_pem,
    load_chain,
    load_key,
    spki_hash,
    verify_chain,
)

log = logging.getLogger(__name__)

MAX_CSR_BYTES = 64 * 1024
MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
# Certificates are valid from a little before issuance, so that a VM whose clock runs behind the control
# plane's accepts them at once: a tenth of the lifetime, at most ten minutes (the default 24 h lifetime gets
# the full ten; short-lived test certificates still renew at about half their life). A VM clock up to that
# much behind joins, rotates and serves; one ahead needs nothing (docs/reliability.md, "Clock skew").
CLOCK_SKEW = datetime.timedelta(minutes=10)
# The root is created once, at first start: backdated by a day, so agents joining right after a fresh
# control plane came up accept it even when their clock is behind.
ROOT_BACKDATE = datetime.timedelta(days=1)
ROOT_LIFETIME = datetime.timedelta(days=3650)
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"


def _leaf_usage(key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=key_encipherment,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# Extensions every leaf carries (immutable values, built once).
_LEAF_BASIC = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_USAGE = _leaf_usage(key_encipherment=False)
_LEAF_USAGE_RSA = _leaf_usage(key_encipherment=True)  # RSA keys may also encipher (TLS RSA kx)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


class CsrError(VmagentError):
    """A CSR that cannot be signed; the message says why (sent back as INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class CaSettings:
    trust_domain: str = "cluster.local"
    default_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    max_ttl: datetime.timedelta = datetime.timedelta(days=7)
    min_ttl: datetime.timedelta = datetime.timedelta(seconds=10)


class CertificateAuthority:
    """Signs workload and server certificates with the mesh's signing key."""

    def __init__(
        self,
        signing_cert: x509.Certificate,
        signing_key: PrivateKey,
        chain_to_root: list[x509.Certificate],
        settings: CaSettings,
    ) -> None:
        """``chain_to_root`` lists the certificates above ``signing_cert``, ending with the root
        (empty when ``signing_cert`` is itself the root)."""
        self._cert = signing_cert
        self._key = signing_key
        self._upper = chain_to_root
        self.settings = settings
        # Fixed for the CA's life, so computed once rather than for every certificate.
        self._issuer_name = signing_cert.subject
        self._not_after_cap = signing_cert.not_valid_after_utc
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
        self._tail_pem = tuple(cert_pem(c).decode() for c in [signing_cert, *chain_to_root])

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        settings: CaSettings,
        ca_cert_file: Path | None = None,
        ca_key_file: Path | None = None,
    ) -> CertificateAuthority:
        """Use the operator's CA (``ca_cert_file`` = signing cert followed by its chain up to the root),
        else the root in ``state_dir``, creating it on first start."""
        if (ca_cert_file is None) != (ca_key_file is None):
            raise VmagentError("--ca-cert and --ca-key go together")
        if ca_cert_file is not None and ca_key_file is not None:
            return cls._from_files(ca_cert_file, ca_key_file, settings)
        ensure_dir(state_dir, 0o700)
        with _state_lock(state_dir):
            return cls._load_or_create_root(state_dir, settings)

    @classmethod
    def _load_or_create_root(cls, state_dir: Path, settings: CaSettings) -> CertificateAuthority:
        cert_path, key_path = state_dir / ROOT_CERT_FILE, state_dir / ROOT_KEY_FILE
        if cert_path.exists() and key_path.exists():
            return cls._from_files(cert_path, key_path, settings)
        if cert_path.exists() or key_path.exists():
            raise VmagentError(
                f"{state_dir} holds only half of the root CA ({ROOT_CERT_FILE}, {ROOT_KEY_FILE})"
            )
        ensure_dir(state_dir, 0o700)
        key = generate_key("ec-p256")
        cert = _self_signed_root(key, settings.trust_domain)
        atomic_write(key_path, key_pem(key), 0o600)
        atomic_write(cert_path, cert_pem(cert), 0o644)
        log.info("created mesh root CA %s in %s", spki_hash(cert), state_dir)
        return cls(cert, key, [], settings)

    @classmethod
    def _from_files(cls, cert_file: Path, key_file: Path, settings: CaSettings) -> CertificateAuthority:
        try:
            chain = load_chain(cert_file.read_bytes())
            key = load_key(key_file.read_bytes())
        except OSError as exc:
            raise VmagentError(f"cannot read CA material: {exc}") from exc
        if not chain:
            raise VmagentError(f"{cert_file}: no certificate found")
        signing = chain[0]
        if spki_hash(signing) != _key_spki_hash(key):
            raise VmagentError(f"{key_file} is not the key of the certificate in {cert_file}")
        try:
            basic = signing.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = x509.BasicConstraints(ca=False, path_length=None)
        if not basic.ca:
            raise VmagentError(f"{cert_file}: the certificate is not a CA (basicConstraints CA:FALSE)")
        upper = chain[1:]
        root = upper[-1] if upper else signing
        verify_chain(chain, root)
        return cls(signing, key, upper, settings)

    # -- facts ------------------------------------------------------------------------------

    @property
    def root(self) -> x509.Certificate:
        return self._upper[-1] if self._upper else self._cert

    @property
    def root_pem(self) -> bytes:
        return cert_pem(self.root)

    @property
    def chain_tail_pem(self) -> tuple[str, ...]:
        """PEM of the signing certificate and those above it, root last: every chain's tail."""
        return self._tail_pem

    @property
    def root_hash(self) -> str:
        """``sha256:HEX`` of the root's SubjectPublicKeyInfo: what ``vmagent join --ca-hash`` pins."""
        return spki_hash(self.root)

    # -- signing ----------------------------------------------------------------------------

    def sign_workload_csr(
        self, csr_pem: bytes, identity: SpiffeId, ttl: datetime.timedelta | None = None
    ) -> list[x509.Certificate]:
        """Validate ``csr_pem`` and issue a certificate for ``identity`` (never the CSR's names).

        Returns the chain leaf first, ending with the root. Raises CsrError for a bad CSR.
        """
        return self.sign_csr(parse_csr(csr_pem), identity, ttl)

    def sign_csr(
        self, csr: x509.CertificateSigningRequest, identity: SpiffeId, ttl: datetime.timedelta | None = None
    ) -> list[x509.Certificate]:
        """Issue a certificate for ``identity`` with the key of ``csr``, which the caller has already
        checked with :func:`parse_csr` (so a CSR is parsed and its signature verified only once).

        Returns the chain leaf first, ending with the root.
        """
        leaf = self._issue(
            csr.public_key(),  # type: ignore[arg-type]
            subject=x509.Name([]),
            san=x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            ttl=self._clamp_ttl(ttl),
            san_critical=True,
        )
        return [leaf, self._cert, *self._upper]

    def issue_server_cert(
        self, dns_names: list[str], ips: list[str], ttl: datetime.timedelta
    ) -> tuple[PrivateKey, list[x509.Certificate]]:
        """A key and chain (leaf first, root last) for the control plane's own TLS listeners."""
        key = generate_key("ec-p256")
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
        leaf = self._issue(
            key.public_key(),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]),
            san=x509.SubjectAlternativeName(names),
            ttl=ttl,
            san_critical=False,
        )
        return key, [leaf, self._cert, *self._upper]

    def _clamp_ttl(self, ttl: datetime.timedelta | None) -> datetime.timedelta:
        s = self.settings
        if ttl is None or ttl <= datetime.timedelta(0):
            return s.default_ttl
        return max(s.min_ttl, min(ttl, s.max_ttl))

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        subject: x509.Name,
        san: x509.SubjectAlternativeName,
        ttl: datetime.timedelta,
        san_critical: bool,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        not_after = min(now + ttl, self._not_after_cap)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - min(CLOCK_SKEW, ttl / 10))
            .not_valid_after(not_after)
            .add_extension(_LEAF_BASIC, critical=True)
            .add_extension(
                _LEAF_USAGE_RSA if isinstance(public_key, rsa.RSAPublicKey) else _LEAF_USAGE, critical=True
            )
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(san, critical=san_critical)
        )
        return builder.sign(self._key, hashes.SHA256())


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """Serialises first-start creation between `serve` and CLI commands started at the same moment."""
    with open(state_dir / ".ca.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a PEM CSR: size, signature and key strength. Raises CsrError with the reason."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrError(f"CSR is {len(csr_pem)} bytes; the limit is {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: found by tests/fuzz
        raise CsrError(f"CSR is not a valid PEM certificate request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, TypeError, UnsupportedAlgorithm):  # the last: found by tests/fuzz
        valid = False
    if not valid:
        raise CsrError("CSR signature does not verify")
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError(f"CSR public key cannot be read: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(f"CSR has an RSA-{key.key_size} key; at least RSA-{MIN_RSA_BITS} is required")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CsrError(f"CSR key uses curve {key.curve.name}; P-256 or P-384 is required")
    else:
        raise CsrError(f"CSR key type {type(key).__name__} is not supported; use ECDSA P-256 or RSA")
    return csr


def _self_signed_root(key: PrivateKey, trust_domain: str) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "vmagent mesh root CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - ROOT_BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_spki_hash(key: PrivateKey) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()
