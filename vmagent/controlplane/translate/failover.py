"""Where vmagent's defaults go beyond Istio's, so that losing one endpoint's whole network fails fewer requests.

Istio's defaults hide an endpoint whose application died (the 503 of its proxy is retried on another host)
but not one whose network is cut: a request in flight on, or sent over a pooled connection to, a VM that no
longer answers hangs until the client gives up. vmagent adds two things (docs/traffic.md, "Failover", which
also says why a default outlier detection was tried and taken out, and what gap remains):

* ``upstream_liveness``: outbound service clusters (not those to the original destination) set TCP
  keepalive (10 s idle, then probes 1 s apart) and ``TCP_USER_TIMEOUT`` (2 s) on their upstream sockets. A connection whose peer
  stops acknowledging what was sent (connect, request, keepalive probe) is closed by the kernel after
  2 s; a live peer acknowledges in a round trip whatever its application does (a full receive window
  too: its zero-window probes are answered), so slow responses and slow readers are not affected. A DestinationRule's ``connectionPool.tcp.tcpKeepalive`` replaces the keepalive values.
* ``idempotent_reset_retry``: a route with the default retry conditions gets a twin in front of it for
  the idempotent methods (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) that also retries ``reset``
  (the upstream connection closed before any response came back). Such a request may already have
  reached the lost host, so only methods that may be repeated are retried; other methods keep Istio's
  conditions (a connect failure and a 503 are retried for every method, as in Istio).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, socket_option_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from vmagent.controlplane.translate.protos import u32

TCP_USER_TIMEOUT_MS = 2000
KEEPALIVE_TIME_S = 10
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_PROBES = 3
IPPROTO_TCP, TCP_USER_TIMEOUT = 6, 18  # Linux socket option level and name
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
RESET = "reset"


def user_timeout_option() -> socket_option_pb2.SocketOption:
    return socket_option_pb2.SocketOption(
        description="TCP_USER_TIMEOUT",
        level=IPPROTO_TCP,
        name=TCP_USER_TIMEOUT,
        int_value=TCP_USER_TIMEOUT_MS,
        state=socket_option_pb2.SocketOption.STATE_PREBIND,
    )


def upstream_liveness(cluster: cluster_pb2.Cluster) -> None:
    """TCP keepalive and TCP_USER_TIMEOUT on ``cluster``'s upstream connections."""
    cluster.upstream_connection_options.tcp_keepalive.CopyFrom(
        address_pb2.TcpKeepalive(
            keepalive_time=u32(KEEPALIVE_TIME_S),
            keepalive_interval=u32(KEEPALIVE_INTERVAL_S),
            keepalive_probes=u32(KEEPALIVE_PROBES),
        )
    )
    cluster.upstream_bind_config.socket_options.append(user_timeout_option())


def idempotent_method_matcher() -> rc.HeaderMatcher:
    return rc.HeaderMatcher(
        name=":method",
        string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex="|".join(IDEMPOTENT_METHODS))
        ),
    )


def idempotent_reset_retry(route: rc.Route, default_retry_on: str) -> list[rc.Route]:
    """``route`` alone, or, when it forwards with the retry conditions ``default_retry_on``, a copy for
    the idempotent methods that also retries ``reset``, followed by ``route`` (the other methods)."""
    if not route.HasField("route") or route.route.retry_policy.retry_on != default_retry_on:
        return [route]
    twin = rc.Route()
    twin.CopyFrom(route)
    twin.match.headers.append(idempotent_method_matcher())
    twin.route.retry_policy.retry_on = f"{default_retry_on},{RESET}"
    return [twin, route]
