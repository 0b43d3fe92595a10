"""Fuzz the join-token check and the CA's CSR parser: hostile input raises only the typed refusal."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.conftest import EXECUTIONS, fuzzed
from vmagent.controlplane.ca.authority import MAX_CSR_BYTES, CsrError, parse_csr
from vmagent.controlplane.ca.tokens import TokenAuthority, TokenError
from vmagent.controlplane.db import StateDb

TOKENS = "vmagent.controlplane.ca.tokens"  # the module whose coverage is measured
CA = "vmagent.controlplane.ca.authority"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TokenAuthority, str]]:
    state: Path = tmp_path_factory.mktemp("tokens")
    db = StateDb.open(state)
    ta = TokenAuthority.open(state, db)
    import datetime

    token, _ = ta.create("demo", "web", datetime.timedelta(hours=1), uses=1)
    yield ta, token
    db.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(st.data())
def test_mutated_tokens_are_refused_with_token_error(
    authority: tuple[TokenAuthority, str], data: st.DataObject
) -> None:
    ta, good = authority
    header, payload, sig = good.split(".")
    choice = data.draw(st.integers(0, 4))
    if choice == 0:
        token = data.draw(st.text(max_size=300))
    elif choice == 1:
        token = ".".join([header, _b64(data.draw(st.binary(max_size=300))), sig])
    elif choice == 2:
        token = ".".join([_b64(data.draw(st.binary(max_size=100))), payload, sig])
    elif choice == 3:
        pos = data.draw(st.integers(0, len(good) - 1))
        token = good[:pos] + data.draw(st.characters()) + good[pos + 1 :]
    else:
        token = ".".join([header, payload, _b64(data.draw(st.binary(max_size=100)))])
    if token == good:
        EXECUTIONS["tokens: verify"] += 1
        return
    try:
        with fuzzed("tokens: verify", TOKENS):
            ta.verify(token)
    except TokenError:
        return
    # A mutation that still verifies must be the same token (base64 padding bits can differ).
    assert ta.verify(token).jti == ta.verify(good).jti


def _csr_der(n_sans: int = 1) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(f"h{i}.example.com") for i in range(n_sans)]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


GOOD_DER = _csr_der()


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()


@given(st.binary(max_size=4096))
@example(b"")
@example(b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n")
def test_arbitrary_bytes_as_csr(data: bytes) -> None:
    with pytest.raises(CsrError), fuzzed("ca: parse_csr (bytes)", CA):
        parse_csr(data)


@given(st.data())
def test_mutated_der_inside_pem(data: st.DataObject) -> None:
    der = bytearray(GOOD_DER)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(der) - 1))
        der[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(der)))
        der = der[:cut]
    pem = _pem(bytes(der))
    try:
        with fuzzed("ca: parse_csr (mutated DER)", CA):
            parse_csr(pem)
    except CsrError:
        pass


def test_regression_csr_with_an_unknown_version_is_a_csr_error() -> None:
    """Found by test_mutated_der_inside_pem: cryptography raises InvalidVersion (not a ValueError) for a
    CSR whose version is not 0, which escaped parse_csr as an unhandled error in the certificate service."""
    at = GOOD_DER.index(b"\x02\x01\x00")  # CertificationRequestInfo.version INTEGER 0
    bad = GOOD_DER[:at] + b"\x02\x01\x01" + GOOD_DER[at + 3 :]
    with pytest.raises(CsrError, match="not a valid PEM certificate request"):
        with fuzzed("ca: parse_csr (regressions)", CA):
            parse_csr(_pem(bad))


def test_regression_csr_with_an_unknown_key_type_is_a_csr_error() -> None:
    """Found by test_mutated_der_inside_pem: a key-type OID of the wrong length ("Unknown key type") made
    cryptography raise UnsupportedAlgorithm, which escaped parse_csr."""
    oid = bytes.fromhex("06072a8648ce3d0201")  # OID id-ecPublicKey, length 7
    at = GOOD_DER.index(oid)
    bad = GOOD_DER[: at + 1] + b"\x0e" + GOOD_DER[at + 2 :]
    with pytest.raises(CsrError), fuzzed("ca: parse_csr (regressions)", CA):
        parse_csr(_pem(bad))


def test_many_sans_and_huge_inputs_are_bounded() -> None:
    many = _pem(_csr_der(n_sans=4000))
    assert len(many) > MAX_CSR_BYTES
    with pytest.raises(CsrError, match="the limit is"), fuzzed("ca: parse_csr (sizes)", CA):
        parse_csr(many)
    under = _pem(_csr_der(n_sans=500))
    with fuzzed("ca: parse_csr (sizes)", CA):
        parse_csr(under)  # under the limit: parses (the CA ignores the CSR's names)
    huge = b"A" * (100 * 1024 * 1024)
    with pytest.raises(CsrError, match="the limit is"), fuzzed("ca: parse_csr (sizes)", CA):
        parse_csr(huge)
