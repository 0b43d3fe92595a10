"""Clusters: ``outbound|PORT|SUBSET|HOST`` per service port and subset, passthrough, inbound.

Discovery type by the service's resolution (Istio's mapping): STATIC -> EDS (endpoints sent as
ClusterLoadAssignment), DNS -> STRICT_DNS, DNS_ROUND_ROBIN -> LOGICAL_DNS (endpoints inline, resolved by
Envoy), NONE -> ORIGINAL_DST (the connection's original destination).

TLS: a DestinationRule ``tls`` setting decides when present (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL).
Without one, mutual TLS is automatic: endpoints that are mesh workloads (mesh-internal with a SPIFFE
identity) carry the metadata ``tlsMode: istio`` and get Istio mutual TLS through a transport socket
match; the others are reached in plaintext. Mesh-external services get no TLS unless a rule says so.

Failover (beyond Istio's defaults, see ``failover``): service clusters (not ORIGINAL_DST: resolution
NONE, PassthroughCluster) get TCP keepalive, TCP_USER_TIMEOUT and outlier detection on local-origin
failures; a DestinationRule's ``tcpKeepalive`` or ``outlierDetection`` replaces the matching default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import struct_pb2

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.specs.destinationrule import TrafficPolicy
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.destination import DestinationPolicy, find_destination_rule
from vmagent.controlplane.translate.endpoints import load_assignment
from vmagent.controlplane.translate.failover import upstream_liveness
from vmagent.controlplane.translate.protos import ads, duration, socket_address, typed, u32
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.services import is_mesh_endpoint, subset_endpoints
from vmagent.controlplane.translate.tls import UpstreamTls, upstream_socket
from vmagent.controlplane.translate.trafficpolicy import apply_traffic_policy

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_MAX = 4294967295


@dataclass(frozen=True)
class OutboundCluster:
    """One outbound cluster to build: a service port, optionally narrowed to a subset."""

    service: Service
    port: Port
    subset: str = ""
    subset_labels: dict[str, str] = field(default_factory=dict)
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)  # DestinationRule traffic policy in force

    @property
    def name(self) -> str:
        return names.outbound_cluster(self.port.number, self.service.hostname, self.subset)

    @property
    def endpoints(self) -> list[Endpoint]:
        return subset_endpoints(self.service, self.subset_labels)

    @property
    def is_eds(self) -> bool:
        return self.service.resolution not in ("DNS", "DNS_ROUND_ROBIN", "NONE")


def plan_outbound(
    services: Sequence[Service], proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> list[OutboundCluster]:
    """Every outbound cluster for ``services`` (already filtered and sorted), in name order."""
    plans: list[OutboundCluster] = []
    for svc in services:
        rule: DestinationPolicy = find_destination_rule(svc, proxy.namespace, configs, mesh)
        for port in sorted(svc.ports, key=lambda p: p.number):
            plans.append(OutboundCluster(svc, port, policy=rule.traffic_policy(port.number)))
            for sub in rule.subsets():
                plans.append(
                    OutboundCluster(
                        svc, port, sub.name, dict(sub.labels), rule.traffic_policy(port.number, sub.name)
                    )
                )
    return sorted(plans, key=lambda p: p.name)


def _alpn(protocol: str) -> tuple[str, ...]:
    if names.is_http2(protocol):
        return ("h2",)
    if names.is_http(protocol):
        return ("http/1.1",)
    return ()


def rule_tls(plan: OutboundCluster) -> UpstreamTls | None:
    """The DestinationRule's TLS for the plan (mode DISABLE gives ``UpstreamTls('DISABLE')``), or None."""
    tls = plan.policy.tls
    if tls is None:
        return None
    mode = tls.mode.upper()
    host = plan.service.hostname
    sans = tls.subject_alt_names
    if mode == "ISTIO_MUTUAL":
        sans = sans or tuple(sorted({e.service_account for e in plan.endpoints if e.service_account}))
        sni = tls.sni or names.outbound_sni(plan.port.number, host, plan.subset)
        return UpstreamTls("ISTIO_MUTUAL", sni=sni, subject_alt_names=sans, alpn=_alpn(plan.port.protocol))
    if mode in ("SIMPLE", "MUTUAL"):
        default_sni = "" if host.startswith("*") else host
        return UpstreamTls(
            mode,
            sni=tls.sni or default_sni,
            subject_alt_names=sans,
            ca_certificates=tls.ca_certificates,
            client_certificate=tls.client_certificate,
            private_key=tls.private_key,
            credential_name=tls.credential_name,
        )
    return UpstreamTls("DISABLE")


def auto_mtls(plan: OutboundCluster) -> UpstreamTls | None:
    """Istio mutual TLS to the plan's mesh endpoints, or None when it has none."""
    mesh_eps = [e for e in plan.endpoints if is_mesh_endpoint(plan.service, e)]
    if not mesh_eps:
        return None
    return UpstreamTls(
        "ISTIO_MUTUAL",
        sni=names.outbound_sni(plan.port.number, plan.service.hostname, plan.subset),
        subject_alt_names=tuple(sorted({e.service_account for e in mesh_eps})),
        alpn=_alpn(plan.port.protocol),
    )


def _http_options(protocol: str) -> dict[str, Any]:
    if not names.is_http2(protocol):
        return {}
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {HTTP_OPTIONS: typed(opts)}


def _circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    """Envoy's default limits (1024) are far below what a mesh proxy must carry; lift them, as Istio does."""
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=u32(_MAX),
                max_pending_requests=u32(_MAX),
                max_requests=u32(_MAX),
                max_retries=u32(_MAX),
                track_remaining=True,
            )
        ]
    )


def outbound_cluster(plan: OutboundCluster, mesh: MeshOptions) -> tuple[cluster_pb2.Cluster, bool]:
    """The cluster for ``plan`` and whether its endpoints carry the ``tlsMode`` metadata (auto mTLS)."""
    c = cluster_pb2.Cluster(
        name=plan.name,
        connect_timeout=duration(mesh.connect_timeout_s),
        circuit_breakers=_circuit_breakers(),
    )
    for key, value in _http_options(plan.port.protocol).items():
        c.typed_extension_protocol_options[key].CopyFrom(value)
    res = plan.service.resolution
    auto = False
    explicit = rule_tls(plan)
    if explicit is not None:
        if explicit.mode != "DISABLE":
            c.transport_socket.CopyFrom(upstream_socket(explicit, mesh.sds_cluster))
    elif res != "NONE":
        mtls = auto_mtls(plan)
        if mtls is not None:
            auto = True
            c.transport_socket_matches.extend(
                [
                    cluster_pb2.Cluster.TransportSocketMatch(
                        name="tlsMode-istio",
                        match=_struct({"tlsMode": "istio"}),
                        transport_socket=upstream_socket(mtls, mesh.sds_cluster),
                    ),
                    cluster_pb2.Cluster.TransportSocketMatch(
                        name="tlsMode-disabled",
                        match=_struct({}),
                        transport_socket=base_pb2.TransportSocket(
                            name="envoy.transport_sockets.raw_buffer",
                            typed_config=typed(raw_buffer_pb2.RawBuffer()),
                        ),
                    ),
                ]
            )
    if res == "NONE":
        c.type = cluster_pb2.Cluster.ORIGINAL_DST
        c.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    elif res in ("DNS", "DNS_ROUND_ROBIN"):
        eps = plan.endpoints
        if res == "DNS_ROUND_ROBIN" and len(eps) == 1:
            c.type = cluster_pb2.Cluster.LOGICAL_DNS
        else:
            c.type = cluster_pb2.Cluster.STRICT_DNS
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        c.load_assignment.CopyFrom(load_assignment(plan.name, plan.service, plan.port, eps, auto))
    else:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.CopyFrom(
            cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads(), service_name=plan.name)
        )
    if res != "NONE":
        # vmagent's failover defaults (docs/traffic.md, "Failover"); the rule's settings win.
        upstream_liveness(c)
        apply_traffic_policy(c, plan.policy, plan.port.protocol)
    return c, auto


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def passthrough_cluster(mesh: MeshOptions) -> cluster_pb2.Cluster:
    """``PassthroughCluster``: to the connection's original destination (unknown hosts, ALLOW_ANY)."""
    return cluster_pb2.Cluster(
        name=names.PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration(mesh.connect_timeout_s),
        circuit_breakers=_circuit_breakers(),
    )


def blackhole_cluster(mesh: MeshOptions) -> cluster_pb2.Cluster:
    """``BlackHoleCluster``: no endpoints, so connections sent there are closed (REGISTRY_ONLY)."""
    return cluster_pb2.Cluster(
        name=names.BLACKHOLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(mesh.connect_timeout_s),
    )


def _bind(source: str) -> address_pb2.BindConfig:
    return address_pb2.BindConfig(source_address=address_pb2.SocketAddress(address=source, port_value=0))


def inbound_passthrough_clusters(proxy: ProxyInfo, mesh: MeshOptions) -> list[cluster_pb2.Cluster]:
    """Clusters for inbound traffic to ports no service declares: to the original destination (the VM's
    own address), connecting from ``127.0.0.6`` / ``::6`` so that capture does not take it again."""
    out = []
    families = [(names.INBOUND_PASSTHROUGH_V4, mesh.inbound_passthrough_source_v4)]
    if any((ip := names.ip_of(a)) is not None and ip.version == 6 for a in proxy.ip_addresses):
        families.append((names.INBOUND_PASSTHROUGH_V6, mesh.inbound_passthrough_source_v6))
    for name, source in families:
        out.append(
            cluster_pb2.Cluster(
                name=name,
                type=cluster_pb2.Cluster.ORIGINAL_DST,
                lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
                connect_timeout=duration(mesh.connect_timeout_s),
                upstream_bind_config=_bind(source),
                circuit_breakers=_circuit_breakers(),
            )
        )
    return out


def inbound_cluster(port: Port, proxy: ProxyInfo, mesh: MeshOptions) -> cluster_pb2.Cluster:
    """``inbound|PORT||``: the local application at ``proxy.inbound_address:PORT``."""
    name = names.inbound_cluster(port.number)
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(mesh.connect_timeout_s),
        circuit_breakers=_circuit_breakers(),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[
                        ec.LbEndpoint(
                            endpoint=ec.Endpoint(address=socket_address(proxy.inbound_address, port.number))
                        )
                    ]
                )
            ],
        ),
    )
    for key, value in _http_options(port.protocol).items():
        c.typed_extension_protocol_options[key].CopyFrom(value)
    if not names.is_loopback(proxy.inbound_address):
        ip = names.ip_of(proxy.inbound_address)
        v6 = ip is not None and ip.version == 6
        c.upstream_bind_config.CopyFrom(
            _bind(mesh.inbound_passthrough_source_v6 if v6 else mesh.inbound_passthrough_source_v4)
        )
    return c
