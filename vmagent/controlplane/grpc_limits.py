"""Fixed limits of the control plane's two gRPC ports (docs/reliability.md, "Hostile input").

A message larger than the receive limit is refused by gRPC itself with RESOURCE_EXHAUSTED before any of
our code sees it. The join port only ever receives a CSR (at most ``MAX_CSR_BYTES``) and a token; the
mutual-TLS port receives xDS requests, registration messages and renewal CSRs, all far below its limit.
A TLS handshake not finished within ``HANDSHAKE_TIMEOUT_MS`` is dropped, and a join connection idle for
``JOIN_IDLE_MS`` is closed, so idle or slow clients cannot hold the join port's sockets for long.
"""

from __future__ import annotations

from typing import Any

JOIN_MAX_RECEIVE_BYTES = 256 * 1024
MTLS_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT_MS = 10_000
JOIN_IDLE_MS = 60_000


def join_port_options(base: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """``base`` plus the join port's (15012) receive limit, handshake timeout and idle close."""
    return [
        *base,
        ("grpc.max_receive_message_length", JOIN_MAX_RECEIVE_BYTES),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", JOIN_IDLE_MS),
    ]


def mtls_port_options(base: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """``base`` plus the mutual-TLS port's (15013) receive limit and handshake timeout."""
    return [
        *base,
        ("grpc.max_receive_message_length", MTLS_MAX_RECEIVE_BYTES),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ]
