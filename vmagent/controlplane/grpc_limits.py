"""Fixed limits of the control plane's two gRPC ports (docs/reliability.md, "Hostile input").

A message larger than the receive limit is refused by gRPC itself with RESOURCE_EXHAUSTED before any of
our code sees it. The join port only ever receives a CSR (at most ``MAX_CSR_BYTES``) and a token; the
mutual-TLS port receives xDS requests, registration messages and renewal CSRs, all far below its limit.
A TLS handshake not finished within ``HANDSHAKE_TIMEOUT_MS`` is dropped, and a join connection idle for
``JOIN_IDLE_MS`` is closed, so idle or slow clients cannot hold the join port's sockets for long.

The mutual-TLS port pings every connection (HTTP/2 PING) after ``KEEPALIVE_TIME_MS`` without a ping and
closes one whose ping is not answered within ``KEEPALIVE_TIMEOUT_MS``, data or not: the registration
stream of a VM whose network was cut is found lost within about 3 s, and its entry leaves EDS
(docs/registration.md, "Lost stream"), instead of after the 15 s heartbeat timeout. A ping is a
few dozen bytes answered by gRPC's core, never by Python code.
"""

from __future__ import annotations

from typing import Any

JOIN_MAX_RECEIVE_BYTES = 256 * 1024
MTLS_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT_MS = 10_000
JOIN_IDLE_MS = 60_000
KEEPALIVE_TIME_MS = 1_000
KEEPALIVE_TIMEOUT_MS = 2_000


def join_port_options(base: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """``base`` plus the join port's (15012) receive limit, handshake timeout and idle close."""
    return [
        *base,
        ("grpc.max_receive_message_length", JOIN_MAX_RECEIVE_BYTES),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", JOIN_IDLE_MS),
    ]


def mtls_port_options(base: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """``base`` plus the mutual-TLS port's (15013) receive limit, handshake timeout and keepalive."""
    keepalive = {"grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms"}
    return [
        *(opt for opt in base if opt[0] not in keepalive),
        ("grpc.max_receive_message_length", MTLS_MAX_RECEIVE_BYTES),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Keep pinging between the agents' messages (gRPC stops after 2 pings without data otherwise).
        ("grpc.http2.max_pings_without_data", 0),
    ]
