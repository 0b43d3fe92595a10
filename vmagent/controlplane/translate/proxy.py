"""What translation needs to know about one proxy and about the mesh, as plain immutable values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vmagent.common import constants, wire
from vmagent.controlplane.model import Port
from vmagent.controlplane.translate.accesslog import AccessLogSettings
from vmagent.controlplane.translate.tracing_config import MeshTracing

ProxyMode = Literal["sidecar", "gateway"]
OutboundPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]


@dataclass(frozen=True)
class ProxyInfo:
    """The proxy a snapshot is built for.

    ``ports`` are the ports its own workload listens on (from its WorkloadEntry/WorkloadGroup, with the
    protocol of the service port that targets them); they become the inbound filter chains.
    ``inbound_address`` is where inbound traffic is forwarded to the application: ``127.0.0.1`` (the
    default, reaches applications bound to 0.0.0.0 or loopback) or the VM's own address (reaches
    applications bound to that address only; Envoy then connects from ``127.0.0.6`` so capture lets it
    through, see docs/capture.md).
    """

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ip_addresses: tuple[str, ...] = ()
    identity: str = ""  # SPIFFE id, e.g. spiffe://cluster.local/ns/demo/sa/web
    ports: tuple[Port, ...] = ()
    mode: ProxyMode = "sidecar"
    inbound_address: str = "127.0.0.1"
    name: str = ""  # for messages only (WorkloadEntry or node name)
    # Its bootstrap has the agent's access-log cluster (node metadata VMAGENT_ALS): the request-metrics
    # loggers need it, and an Envoy without it would reject listeners naming it.
    access_log_service: bool = True


@dataclass(frozen=True)
class MeshOptions:
    """Mesh-wide settings (Istio's MeshConfig subset that translation reads)."""

    trust_domain: str = constants.DEFAULT_TRUST_DOMAIN
    root_namespace: str = "istio-system"
    outbound_traffic_policy: OutboundPolicy = "ALLOW_ANY"
    dns_domain: str = "cluster.local"
    sds_cluster: str = wire.SDS_CLUSTER
    connect_timeout_s: float = 10.0
    # How long the outbound listeners that mix HTTP and other traffic on one port wait for the first bytes
    # to decide (http_inspector / tls_inspector) before treating the connection as opaque TCP.
    protocol_detection_timeout_s: float = 5.0
    outbound_port: int = constants.OUTBOUND_PORT
    inbound_port: int = constants.INBOUND_PORT
    # Source address of Envoy's connections to the application on the VM's own address (capture skips it).
    inbound_passthrough_source_v4: str = "127.0.0.6"
    inbound_passthrough_source_v6: str = "::6"
    # MeshConfig accessLogFile/accessLogEncoding/accessLogFormat; None: no access log (Istio's default).
    access_log: AccessLogSettings | None = None
    # Istio's request metrics (istio_requests_total, ...): gRPC access logs to the agent, which aggregates;
    # MeshConfig defaultProviders.metrics: [] turns them off.
    request_metrics: bool = True
    # MeshConfig extensionProviders / defaultProviders.tracing / defaultConfig.tracing; None: no tracing
    # fields (no proxy gets a tracer unless a Telemetry names a provider, which then cannot be found).
    tracing: MeshTracing | None = None
