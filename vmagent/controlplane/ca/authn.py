"""Who is calling: the SPIFFE id of an mTLS peer, or the bearer token of a joining VM."""

from __future__ import annotations

import grpc
from cryptography import x509

from vmagent.common import wire
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId, spiffe_ids


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The client certificate verified by the mTLS handshake, or None (TLS-only port, no cert)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") if auth else None
    if not pems:
        return None
    return x509.load_pem_x509_certificate(pems[0])


def peer_identity(context: grpc.ServicerContext) -> tuple[SpiffeId, x509.Certificate] | None:
    """The caller's workload identity and certificate, when it presented a mesh certificate."""
    cert = peer_certificate(context)
    if cert is None:
        return None
    ids = spiffe_ids(cert)
    if not ids:
        return None
    try:
        return SpiffeId.parse(ids[0]), cert
    except VmagentError:
        return None


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key.lower() == wire.AUTHORIZATION_HEADER and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == wire.BEARER_SCHEME.lower() and token.strip():
                return token.strip()
    return None


class Unauthenticated(Exception):
    """The caller presented no usable workload certificate; ``code`` is the gRPC status to end with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def require_workload_identity(
    context: grpc.ServicerContext | grpc.aio.ServicerContext, service: str
) -> tuple[SpiffeId, x509.Certificate]:
    """The caller's SPIFFE id and certificate on the mutual-TLS port, for streams that need one.

    Raises Unauthenticated (UNAUTHENTICATED) without a client certificate or without exactly one
    SPIFFE URI SAN; ``service`` names the service in the message.
    """
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated(
            grpc.StatusCode.UNAUTHENTICATED, f"{service} needs a client certificate (mutual TLS)"
        )
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        uris = spiffe_ids(cert)
        if len(uris) != 1:
            raise VmagentError(f"client certificate has {len(uris)} SPIFFE URI SANs, want exactly 1")
        return SpiffeId.parse(uris[0]), cert
    except (ValueError, VmagentError) as exc:
        raise Unauthenticated(grpc.StatusCode.UNAUTHENTICATED, f"no workload identity: {exc}") from exc
