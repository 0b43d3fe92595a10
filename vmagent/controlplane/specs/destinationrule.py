"""View of DestinationRule; schema in :mod:`vmagent.controlplane.config.destinationrule`.

Optional messages and fields whose absence means something (detectors, probe counts) are ``None`` when
not set; other scalars default to Istio's zero value (0 = "unset" for Istio's limits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.common import PortSelector, WorkloadSelector


@dataclass(frozen=True)
class HTTPCookie:
    name: str = ""
    path: str = ""
    ttl: str | None = None
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RingHash:
    minimum_ring_size: int = 0


@dataclass(frozen=True)
class MagLev:
    table_size: int = 0


@dataclass(frozen=True)
class ConsistentHashLB:
    http_header_name: str = ""
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: int = 0


@dataclass(frozen=True)
class Distribute:
    from_: str = ""
    to: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Failover:
    from_: str = ""
    to: str = ""


@dataclass(frozen=True)
class LocalityLoadBalancerSetting:
    distribute: tuple[Distribute, ...] = ()
    failover: tuple[Failover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None


@dataclass(frozen=True)
class WarmupConfiguration:
    duration: str = ""
    minimum_percent: float | None = None
    aggression: float | None = None


@dataclass(frozen=True)
class LoadBalancerSettings:
    simple: str = ""
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    warmup_duration_secs: str | None = None
    warmup: WarmupConfiguration | None = None


@dataclass(frozen=True)
class TcpKeepalive:
    probes: int | None = None
    time: str | None = None
    interval: str | None = None


@dataclass(frozen=True)
class TCPSettings:
    max_connections: int = 0
    connect_timeout: str | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: str | None = None
    idle_timeout: str | None = None


@dataclass(frozen=True)
class HTTP2KeepAlive:
    time: str | None = None
    interval: str | None = None
    timeout: str | None = None


@dataclass(frozen=True)
class HTTPSettings:
    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0
    idle_timeout: str | None = None
    h2_upgrade_policy: str = ""
    use_client_protocol: bool | None = None
    max_concurrent_streams: int = 0
    http2_keep_alive: HTTP2KeepAlive | None = None


@dataclass(frozen=True)
class ConnectionPoolSettings:
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@dataclass(frozen=True)
class OutlierDetection:
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int = 0
    consecutive_gateway_errors: int | None = None
    consecutive5xx_errors: int | None = None
    consecutive_errors: int | None = None
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: int = 0
    min_health_percent: int = 0


@dataclass(frozen=True)
class ClientTLSSettings:
    mode: str = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool | None = None
    ca_crl: str = ""


@dataclass(frozen=True)
class PortTrafficPolicy:
    port: PortSelector = field(default_factory=PortSelector)
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


@dataclass(frozen=True)
class TunnelSettings:
    protocol: str = ""
    target_host: str = ""
    target_port: int = 0


@dataclass(frozen=True)
class ProxyProtocol:
    version: str = ""


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None

    def overridden(self, layer: TrafficPolicy | PortTrafficPolicy) -> TrafficPolicy:
        """This policy with every field ``layer`` sets replaced (Istio's field-by-field precedence);
        ``portLevelSettings`` and a port level's ``port`` are not carried over."""
        changes = {
            f.name: getattr(layer, f.name)
            for f in dataclasses.fields(layer)
            if f.name not in ("port_level_settings", "port") and getattr(layer, f.name) is not None
        }
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Subset:
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    host: str = ""
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: WorkloadSelector | None = None
