"""Where vmagent's defaults go beyond Istio's, so that losing one endpoint's whole network fails no request.

Istio's defaults hide an endpoint whose application died (the 503 of its proxy is retried on another host)
but not one whose network is cut: a request in flight on, or sent over a pooled connection to, a VM that no
longer answers hangs until the client gives up, and new requests keep choosing that VM until it leaves
EDS. vmagent adds three things (docs/traffic.md, "Failover", with the measurements behind each value),
and the control plane takes a VM whose registration stream was lost out of EDS within seconds
(docs/registration.md, "Lost stream"):

* ``upstream_liveness``: outbound service clusters (not those to the original destination) set TCP
  keepalive (10 s idle, then probes 1 s apart) and ``TCP_USER_TIMEOUT`` (2 s) on their upstream sockets. A connection whose peer
  stops acknowledging what was sent (connect, request, keepalive probe) is closed by the kernel after
  2 s; a live peer acknowledges in a round trip whatever its application does (a full receive window
  too: its zero-window probes are answered), so slow responses and slow readers are not affected. A DestinationRule's ``connectionPool.tcp.tcpKeepalive`` replaces the keepalive values.
* ``default_outlier_detection``: the same clusters, unless a DestinationRule sets ``outlierDetection``,
  eject a host after 5 consecutive locally originated failures (connect failure, reset, timeout: the
  host is unreachable); responses, 5xx included, never eject. Ejections are short (3 s, then 6 s, never
  more than 10 s, checked every second), so a host that comes back (a restart, an upgrade) carries
  traffic again within seconds; a host whose network is gone leaves EDS before its first ejection ends.
  At most half the hosts (at least one) are ejected.
* ``idempotent_reset_retry``: a route with the default retry conditions gets a twin in front of it for
  the idempotent methods (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) that also retries ``reset``
  (the upstream connection closed before any response came back). Such a request may already have
  reached the lost host, so only methods that may be repeated are retried; other methods keep Istio's
  conditions (a connect failure and a 503 are retried for every method, as in Istio).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, socket_option_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from vmagent.controlplane.translate.protos import boolean, duration, u32

TCP_USER_TIMEOUT_MS = 2000
KEEPALIVE_TIME_S = 10
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_PROBES = 3
IPPROTO_TCP, TCP_USER_TIMEOUT = 6, 18  # Linux socket option level and name
LOCAL_ORIGIN_FAILURES = 5
MAX_EJECTION_PERCENT = 50
EJECTION_INTERVAL_S = 1.0
BASE_EJECTION_S = 3.0
MAX_EJECTION_S = 10.0
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


def default_outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    """Short ejection on consecutive locally originated failures only (success-rate and 5xx ejection off)."""
    return outlier_detection_pb2.OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=u32(LOCAL_ORIGIN_FAILURES),
        enforcing_consecutive_local_origin_failure=u32(100),
        enforcing_consecutive_5xx=u32(0),
        enforcing_consecutive_gateway_failure=u32(0),
        enforcing_success_rate=u32(0),
        enforcing_local_origin_success_rate=u32(0),
        interval=duration(EJECTION_INTERVAL_S),
        base_ejection_time=duration(BASE_EJECTION_S),
        max_ejection_time=duration(MAX_EJECTION_S),
        max_ejection_percent=u32(MAX_EJECTION_PERCENT),
        always_eject_one_host=boolean(True),
    )


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
