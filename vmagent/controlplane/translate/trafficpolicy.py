"""A DestinationRule traffic policy applied to an Envoy cluster (Istio's mapping).

``apply_traffic_policy(cluster, policy, protocol)`` reads the merged policy of one port and subset
(``DestinationPolicy.traffic_policy``; ``tls`` is handled in ``clusters``) and sets:

* ``loadBalancer.simple``: ROUND_ROBIN, LEAST_REQUEST (and the old LEAST_CONN), RANDOM, PASSTHROUGH (the
  cluster becomes ORIGINAL_DST: connections go where the client sent them). ``consistentHash`` makes the
  cluster RING_HASH (``ringHash.minimumRingSize``, the deprecated ``minimumRingSize``) or MAGLEV
  (``maglev.tableSize``); the hash key itself lives on the route (``route_hash_policy``).
* ``connectionPool``: ``tcp.maxConnections`` -> circuit breaker ``max_connections``,
  ``tcp.connectTimeout`` -> ``connect_timeout``, ``tcp.tcpKeepalive``, ``tcp.maxConnectionDuration``;
  ``http.http1MaxPendingRequests`` -> ``max_pending_requests``, ``http.http2MaxRequests`` ->
  ``max_requests``, ``http.maxRetries`` -> ``max_retries``, ``http.maxRequestsPerConnection`` and
  ``http.idleTimeout`` -> the HTTP protocol options (HTTP ports only). Unset limits stay lifted to the
  maximum, as without a rule.
* ``outlierDetection``: ``consecutive5xxErrors`` (enforced at 100 %, or disabled by 0),
  ``consecutiveGatewayErrors``, the deprecated ``consecutiveErrors`` (gateway errors only, as Istio
  reads it), ``interval``, ``baseEjectionTime``, ``maxEjectionPercent``, ``splitExternalLocalOriginErrors``
  with ``consecutiveLocalOriginFailures``; success-rate ejection off; ``minHealthPercent`` becomes the
  cluster's healthy panic threshold (0, panic mode off, when unset), all as Istio maps them.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from vmagent.controlplane.config.types import parse_duration
from vmagent.controlplane.specs.destinationrule import (
    ConnectionPoolSettings,
    ConsistentHashLB,
    HTTPSettings,
    LoadBalancerSettings,
    OutlierDetection,
    TCPSettings,
    TrafficPolicy,
)
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.protos import duration, typed, u32

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ENVOY_MAX_EJECTION_S = 300.0  # Envoy's default max_ejection_time
_SIMPLE = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}


def seconds(value: object) -> float | None:
    """A Go-style duration string (``"1.5s"``) in seconds, None when absent or not a duration."""
    if not isinstance(value, str):
        return None
    return parse_duration(value)


def apply_traffic_policy(cluster: cluster_pb2.Cluster, policy: TrafficPolicy, protocol: str) -> None:
    """Set load balancing, connection pool and outlier detection of ``policy`` on ``cluster``."""
    _load_balancer(cluster, policy.load_balancer or LoadBalancerSettings())
    _connection_pool(cluster, policy.connection_pool or ConnectionPoolSettings(), protocol)
    if policy.outlier_detection is not None:
        outlier = policy.outlier_detection
        cluster.outlier_detection.CopyFrom(outlier_detection(outlier))
        # As in Istio: the panic threshold is minHealthPercent, 0 (panic mode off) when unset, so that
        # ejected hosts of a small service do not get traffic back through Envoy's 50 % default.
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
            percent_pb2.Percent(value=float(outlier.min_health_percent))
        )


def _load_balancer(cluster: cluster_pb2.Cluster, lb: LoadBalancerSettings) -> None:
    simple = lb.simple.upper()
    if simple in _SIMPLE:
        cluster.lb_policy = _SIMPLE[simple]
    elif simple == "PASSTHROUGH":
        cluster.ClearField("eds_cluster_config")
        cluster.ClearField("load_assignment")
        cluster.type = cluster_pb2.Cluster.ORIGINAL_DST
        cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    ch = lb.consistent_hash
    if ch is None or ch == ConsistentHashLB():
        return
    if ch.maglev is not None:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        size = ch.maglev.table_size
        if size:
            cluster.maglev_lb_config.table_size.CopyFrom(wrappers_pb2.UInt64Value(value=size))
        return
    cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    size = (ch.ring_hash.minimum_ring_size if ch.ring_hash is not None else 0) or ch.minimum_ring_size
    if size:
        cluster.ring_hash_lb_config.minimum_ring_size.CopyFrom(wrappers_pb2.UInt64Value(value=size))


def _set_threshold(cluster: cluster_pb2.Cluster, field: str, value: int) -> None:
    if value <= 0:
        return  # 0 means "unset" in Istio's API
    if not cluster.circuit_breakers.thresholds:
        cluster.circuit_breakers.thresholds.add()
    getattr(cluster.circuit_breakers.thresholds[0], field).CopyFrom(u32(value))


def _connection_pool(cluster: cluster_pb2.Cluster, pool: ConnectionPoolSettings, protocol: str) -> None:
    tcp, http = pool.tcp or TCPSettings(), pool.http or HTTPSettings()
    _set_threshold(cluster, "max_connections", tcp.max_connections)
    if (t := seconds(tcp.connect_timeout)) is not None:
        cluster.connect_timeout.CopyFrom(duration(t))
    keepalive = tcp.tcp_keepalive
    if keepalive is not None:
        ka = address_pb2.TcpKeepalive()
        if keepalive.probes is not None:
            ka.keepalive_probes.CopyFrom(u32(keepalive.probes))
        if (t := seconds(keepalive.time)) is not None:
            ka.keepalive_time.CopyFrom(u32(max(1, round(t))))
        if (t := seconds(keepalive.interval)) is not None:
            ka.keepalive_interval.CopyFrom(u32(max(1, round(t))))
        cluster.upstream_connection_options.tcp_keepalive.CopyFrom(ka)
    _set_threshold(cluster, "max_pending_requests", http.http1_max_pending_requests)
    _set_threshold(cluster, "max_requests", http.http2_max_requests)
    _set_threshold(cluster, "max_retries", http.max_retries)
    if not names.is_http(protocol):
        return
    common = protocol_pb2.HttpProtocolOptions()
    if http.max_requests_per_connection:
        common.max_requests_per_connection.CopyFrom(u32(http.max_requests_per_connection))
    if (t := seconds(http.idle_timeout)) is not None:
        common.idle_timeout.CopyFrom(duration(t))
    if (t := seconds(tcp.max_connection_duration)) is not None:
        common.max_connection_duration.CopyFrom(duration(t))
    if common.ByteSize() == 0:
        return
    opts = hpo.HttpProtocolOptions()
    if HTTP_OPTIONS in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(opts)
    else:
        opts.explicit_http_config.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    opts.common_http_protocol_options.CopyFrom(common)
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(typed(opts))


def outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """Istio's outlier detection settings as Envoy's, the way Istio maps them.

    Success-rate detection is off (Envoy enables it by default, Istio turns it off); a detector Istio
    leaves unset keeps Envoy's default; ``maxEjectionPercent`` 0 means Envoy's default (10 %);
    a ``baseEjectionTime`` above Envoy's ``max_ejection_time`` (300 s) raises that cap too; local-origin
    failures count separately only with ``splitExternalLocalOriginErrors``.
    """
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=u32(0))
    errors = od.consecutive_errors
    if errors is not None and errors > 0:
        # The deprecated field counts gateway errors (502, 503, 504) only, as in Istio.
        out.consecutive_gateway_failure.CopyFrom(u32(errors))
        out.enforcing_consecutive_gateway_failure.CopyFrom(u32(100))
        out.enforcing_consecutive_5xx.CopyFrom(u32(0))
    if (gw := od.consecutive_gateway_errors) is not None:
        out.consecutive_gateway_failure.CopyFrom(u32(gw))
        out.enforcing_consecutive_gateway_failure.CopyFrom(u32(100 if gw > 0 else 0))
    if (five := od.consecutive5xx_errors) is not None:
        out.consecutive_5xx.CopyFrom(u32(five))
        out.enforcing_consecutive_5xx.CopyFrom(u32(100 if five > 0 else 0))
    if (t := seconds(od.interval)) is not None:
        out.interval.CopyFrom(duration(t))
    if (t := seconds(od.base_ejection_time)) is not None:
        out.base_ejection_time.CopyFrom(duration(t))
        if t > ENVOY_MAX_EJECTION_S:
            out.max_ejection_time.CopyFrom(duration(t))
    if od.max_ejection_percent > 0:
        out.max_ejection_percent.CopyFrom(u32(od.max_ejection_percent))
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        local = od.consecutive_local_origin_failures
        if local > 0:
            out.consecutive_local_origin_failure.CopyFrom(u32(local))
            out.enforcing_consecutive_local_origin_failure.CopyFrom(u32(100))
        out.enforcing_local_origin_success_rate.CopyFrom(u32(0))
    return out


def route_hash_policy(policy: TrafficPolicy) -> list[rc.RouteAction.HashPolicy]:
    """The route's hash policy for a destination whose rule uses ``consistentHash`` (else empty)."""
    lb = policy.load_balancer
    ch = (lb.consistent_hash if lb is not None else None) or ConsistentHashLB()
    HP = rc.RouteAction.HashPolicy
    if ch.http_header_name:
        return [HP(header=HP.Header(header_name=ch.http_header_name))]
    if ch.http_cookie is not None:
        cookie = ch.http_cookie
        c = HP.Cookie(name=cookie.name, path=cookie.path)
        if (t := seconds(cookie.ttl)) is not None:
            c.ttl.CopyFrom(duration(t))
        return [HP(cookie=c)]
    if ch.use_source_ip:
        return [HP(connection_properties=HP.ConnectionProperties(source_ip=True))]
    if ch.http_query_parameter_name:
        return [HP(query_parameter=HP.QueryParameter(name=ch.http_query_parameter_name))]
    return []
