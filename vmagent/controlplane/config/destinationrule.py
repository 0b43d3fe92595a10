"""Schema and semantic checks of networking.istio.io DestinationRule."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import (
    EXPORT_TO,
    PORT_SELECTOR,
    WORKLOAD_SELECTOR,
    as_dict,
    as_list,
)
from vmagent.controlplane.config.types import (
    DURATION,
    DURATION_1MS,
    IGNORED,
    LABELS,
    NONNEG,
    PORT,
    REFUSED,
    STR,
    STRINGS,
    UINT32,
    UINT64,
    Bool,
    Ctx,
    Enum,
    F,
    Float,
    Host,
    Int,
    ListOf,
    MapOf,
    Msg,
    child,
    is_dns1123_label,
    item,
)

_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


def _check_consistent_hash(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if all(value.get(k) is None for k in _HASH_KEYS):
        ctx.error(path, f"one of {', '.join(repr(k) for k in _HASH_KEYS)} is required")


CONSISTENT_HASH = Msg(
    "ConsistentHashLB",
    {
        "httpHeaderName": STR,
        "httpCookie": Msg(
            "ConsistentHashLB.HTTPCookie",
            {"name": F(STR, required=True), "path": STR, "ttl": DURATION, "attributes": ListOf(STR)},
        ),
        "useSourceIp": Bool(),
        "httpQueryParameterName": STR,
        "ringHash": Msg("ConsistentHashLB.RingHash", {"minimumRingSize": UINT64}),
        "maglev": Msg("ConsistentHashLB.MagLev", {"tableSize": UINT64}),
        "minimumRingSize": F(UINT64, deprecated="use 'ringHash.minimumRingSize' instead"),
    },
    oneofs=[_HASH_KEYS, ("ringHash", "maglev", "minimumRingSize")],
    checks=[_check_consistent_hash],
)
LOCALITY_LB = Msg(
    "LocalityLoadBalancerSetting",
    {
        "distribute": ListOf(Msg("Distribute", {"from": STR, "to": MapOf(UINT32)})),
        "failover": ListOf(Msg("Failover", {"from": STR, "to": STR})),
        "failoverPriority": STRINGS,
        "enabled": Bool(),
    },
)
LOAD_BALANCER = Msg(
    "LoadBalancerSettings",
    {
        "simple": Enum("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"),
        "consistentHash": CONSISTENT_HASH,
        "localityLbSetting": F(
            LOCALITY_LB, unsupported=IGNORED, note="endpoints of all localities are used alike"
        ),
        "warmupDurationSecs": F(
            DURATION, unsupported=IGNORED, note="new endpoints get their full share at once"
        ),
        "warmup": F(
            Msg(
                "WarmupConfiguration",
                {
                    "duration": F(DURATION, required=True),
                    "minimumPercent": Float(0.0, 100.0),
                    "aggression": Float(1.0, float("inf")),
                },
            ),
            unsupported=IGNORED,
            note="new endpoints get their full share at once",
        ),
    },
    oneofs=[("simple", "consistentHash")],
)
CONNECTION_POOL = Msg(
    "ConnectionPoolSettings",
    {
        "tcp": Msg(
            "ConnectionPoolSettings.TCPSettings",
            {
                "maxConnections": NONNEG,
                "connectTimeout": DURATION_1MS,
                "tcpKeepalive": Msg(
                    "TcpKeepalive", {"probes": UINT32, "time": DURATION_1MS, "interval": DURATION_1MS}
                ),
                "maxConnectionDuration": DURATION_1MS,
                "idleTimeout": DURATION,
            },
        ),
        "http": Msg(
            "ConnectionPoolSettings.HTTPSettings",
            {
                "http1MaxPendingRequests": NONNEG,
                "http2MaxRequests": NONNEG,
                "maxRequestsPerConnection": NONNEG,
                "maxRetries": NONNEG,
                "idleTimeout": DURATION_1MS,
                "h2UpgradePolicy": F(
                    Enum("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"),
                    unsupported=IGNORED,
                    note="the upstream protocol follows the service port's protocol",
                ),
                "useClientProtocol": F(
                    Bool(),
                    unsupported=IGNORED,
                    note="the upstream protocol follows the service port's protocol",
                ),
                "maxConcurrentStreams": F(NONNEG, unsupported=IGNORED, note="Envoy's default limit applies"),
                "http2KeepAlive": F(
                    Msg(
                        "ConnectionPoolSettings.HTTPSettings.HTTP2KeepAlive",
                        {"time": DURATION, "interval": DURATION, "timeout": DURATION},
                    ),
                    unsupported=IGNORED,
                    note="no HTTP/2 PING keepalive is sent",
                ),
            },
        ),
    },
)
OUTLIER_DETECTION = Msg(
    "OutlierDetection",
    {
        "splitExternalLocalOriginErrors": Bool(),
        "consecutiveLocalOriginFailures": UINT32,
        "consecutiveGatewayErrors": UINT32,
        "consecutive5xxErrors": UINT32,
        "consecutiveErrors": F(
            NONNEG, deprecated="use 'consecutiveGatewayErrors' or 'consecutive5xxErrors' instead"
        ),
        "interval": DURATION_1MS,
        "baseEjectionTime": DURATION_1MS,
        "maxEjectionPercent": Int(0, 100, what="a percentage"),
        "minHealthPercent": Int(0, 100, what="a percentage"),
    },
)


def _check_client_tls(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    mode = value.get("mode")
    has_cred = bool(value.get("credentialName"))
    if mode == "MUTUAL" and not has_cred:
        for k in ("clientCertificate", "privateKey"):
            if not value.get(k):
                ctx.error(child(path, k), "required with mode MUTUAL unless 'credentialName' is set")
    if mode == "ISTIO_MUTUAL":
        for k in ("clientCertificate", "privateKey", "caCertificates", "credentialName"):
            if value.get(k):
                ctx.error(child(path, k), "must not be set with mode ISTIO_MUTUAL")


CLIENT_TLS = Msg(
    "ClientTLSSettings",
    {
        "mode": Enum("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"),
        "clientCertificate": STR,
        "privateKey": STR,
        "caCertificates": STR,
        "credentialName": STR,
        "subjectAltNames": STRINGS,
        "sni": STR,
        "insecureSkipVerify": F(
            Bool(), unsupported=IGNORED, note="the server certificate is always verified"
        ),
        "caCrl": F(STR, unsupported=REFUSED, note="certificate revocation lists are not checked"),
    },
    checks=[_check_client_tls],
)
PORT_TRAFFIC_POLICY = Msg(
    "TrafficPolicy.PortTrafficPolicy",
    {
        "port": F(PORT_SELECTOR, required=True),
        "loadBalancer": LOAD_BALANCER,
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": CLIENT_TLS,
    },
)


def _check_port_levels(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    seen: set[int] = set()
    for i, p in enumerate(as_list(value.get("portLevelSettings"))):
        number = as_dict(as_dict(p).get("port")).get("number")
        if isinstance(number, int):
            if number in seen:
                ctx.error(
                    child(item(child(path, "portLevelSettings"), i), "port.number"),
                    f"duplicate port {number}",
                )
            seen.add(number)


TRAFFIC_POLICY = Msg(
    "TrafficPolicy",
    {
        "loadBalancer": LOAD_BALANCER,
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": CLIENT_TLS,
        "portLevelSettings": ListOf(PORT_TRAFFIC_POLICY),
        "tunnel": F(
            unsupported=REFUSED,
            note="HTTP CONNECT tunnels are not built",
            type=Msg(
                "TrafficPolicy.TunnelSettings",
                {
                    "protocol": Enum("CONNECT", "POST"),
                    "targetHost": F(STR, required=True),
                    "targetPort": F(PORT, required=True),
                },
            ),
        ),
        "proxyProtocol": F(
            Msg("TrafficPolicy.ProxyProtocol", {"version": Enum("V1", "V2")}),
            unsupported=REFUSED,
            note="no PROXY protocol header is sent upstream",
        ),
    },
    checks=[_check_port_levels],
)


def _check_subset(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    name = value.get("name")
    if isinstance(name, str) and not is_dns1123_label(name):
        ctx.error(
            child(path, "name"), f"invalid subset name {name!r}, expected a DNS-1123 label such as 'v1'"
        )


SUBSET = Msg(
    "Subset",
    {"name": F(STR, required=True), "labels": LABELS, "trafficPolicy": TRAFFIC_POLICY},
    checks=[_check_subset],
)


def _check_dr(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    seen: set[str] = set()
    for i, s in enumerate(as_list(value.get("subsets"))):
        name = as_dict(s).get("name")
        if isinstance(name, str):
            if name in seen:
                ctx.error(child(item(child(path, "subsets"), i), "name"), f"duplicate subset name {name!r}")
            seen.add(name)


DESTINATION_RULE = Msg(
    "DestinationRule",
    {
        "host": F(Host(), required=True),
        "trafficPolicy": TRAFFIC_POLICY,
        "subsets": ListOf(SUBSET),
        "exportTo": EXPORT_TO,
        "workloadSelector": WORKLOAD_SELECTOR,
    },
    checks=[_check_dr],
)
