"""Network and listener filters shared by the outbound and inbound listeners."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import range_pb2

from vmagent.controlplane.translate.protos import boolean, typed

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"


def original_dst() -> lc.ListenerFilter:
    return lc.ListenerFilter(
        name="envoy.filters.listener.original_dst", typed_config=typed(original_dst_pb2.OriginalDst())
    )


def tls_inspector(disabled_ports: Sequence[int] = ()) -> lc.ListenerFilter:
    """The TLS inspector (sets transport protocol and SNI), skipped on ``disabled_ports``."""
    f = lc.ListenerFilter(
        name="envoy.filters.listener.tls_inspector", typed_config=typed(tls_inspector_pb2.TlsInspector())
    )
    if disabled_ports:
        f.filter_disabled.CopyFrom(ports_predicate(disabled_ports))
    return f


def http_inspector() -> lc.ListenerFilter:
    return lc.ListenerFilter(
        name="envoy.filters.listener.http_inspector", typed_config=typed(http_inspector_pb2.HttpInspector())
    )


def ports_predicate(ports: Sequence[int]) -> lc.ListenerFilterChainMatchPredicate:
    """True for connections to any of ``ports``."""
    preds = [
        lc.ListenerFilterChainMatchPredicate(destination_port_range=range_pb2.Int32Range(start=p, end=p + 1))
        for p in sorted(set(ports))
    ]
    if len(preds) == 1:
        return preds[0]
    return lc.ListenerFilterChainMatchPredicate(
        or_match=lc.ListenerFilterChainMatchPredicate.MatchSet(rules=preds)
    )


def tcp_proxy(
    cluster: str, stat_prefix: str | None = None, weighted: Sequence[tuple[str, int]] = ()
) -> lc.Filter:
    """tcp_proxy to ``cluster``, or split over ``weighted`` ``(cluster, weight)`` when it has two or more."""
    cfg = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix or cluster)
    if len(weighted) > 1:
        for name, weight in weighted:
            cfg.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight)
            )
    else:
        cfg.cluster = cluster
    return lc.Filter(name=TCP_PROXY, typed_config=typed(cfg))


def fault() -> hcm.HttpFilter:
    """The fault filter with nothing to inject; routes carry their faults as per-route config."""
    return hcm.HttpFilter(name=FAULT, typed_config=typed(fault_pb2.HTTPFault()))


def cors() -> hcm.HttpFilter:
    """The CORS filter; routes carry their policies as per-route config (none: the filter does nothing)."""
    return hcm.HttpFilter(name=CORS, typed_config=typed(cors_pb2.Cors()))


def router() -> hcm.HttpFilter:
    return hcm.HttpFilter(name=ROUTER, typed_config=typed(router_pb2.Router()))


def http_connection_manager(config: hcm.HttpConnectionManager) -> lc.Filter:
    return lc.Filter(name=HCM, typed_config=typed(config))


def base_hcm(stat_prefix: str) -> hcm.HttpConnectionManager:
    """Settings both directions share: codec by sniffing, websockets, normalized paths."""
    return hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        normalize_path=boolean(True),
    )
