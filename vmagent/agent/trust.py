"""Establishing trust in the control plane before the VM has any credentials (as ``kubeadm join`` does).

The agent opens a TLS connection without verification only to read the server's chain, finds the
certificate whose SubjectPublicKeyInfo hash equals ``--ca-hash``, checks that the chain links up to it,
and from then on uses that root as the only trust anchor for gRPC.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import spki_hash, verify_chain


def fetch_server_chain(
    host: str, port: int, server_name: str, timeout: float = 10.0
) -> list[x509.Certificate]:
    """The certificates the server sends in its TLS handshake, leaf first (not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            getter = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
            if getter is None:
                getter = tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]  # 3.10-3.12
            ders = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in getter()]  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError) as exc:
        raise VmagentError(f"cannot reach the control plane at {host}:{port}: {exc}") from exc
    return [x509.load_der_x509_certificate(d) for d in ders]


def pin_root(chain: list[x509.Certificate], ca_hash: str, where: str) -> x509.Certificate:
    """Return the root in ``chain`` whose SPKI hash is ``ca_hash``, after checking the chain links to it."""
    want = ca_hash.strip().lower()
    if not want.startswith("sha256:") or len(want) != len("sha256:") + 64:
        raise VmagentError(f"--ca-hash must be sha256: followed by 64 hex digits, got {ca_hash!r}")
    for i, cert in enumerate(chain):
        if spki_hash(cert) == want:
            verify_chain(chain[: i + 1], cert)
            return cert
    got = spki_hash(chain[-1]) if chain else "nothing"
    raise VmagentError(
        f"the control plane at {where} presented a CA with hash {got}, not the --ca-hash given; refusing to trust it"
    )
