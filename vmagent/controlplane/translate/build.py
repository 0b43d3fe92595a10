"""The entry point: everything one proxy gets over ADS, as typed Envoy messages.

Translation has two halves. The *outbound* half (outbound clusters and their load assignments, the
outbound port listeners and route configurations, ``virtualOutbound``; for a gateway proxy its
listeners and routes) depends on the proxy only through :func:`outbound_key`: its namespace (exportTo,
DestinationRule lookup, short host names), its labels (VirtualService ``sourceLabels``, Gateway
selectors) and its mode. The *inbound* half (``virtualInbound``, ``inbound|PORT||`` and the inbound
passthrough clusters, JWKS clusters) depends on the workload: :func:`translation_key` names everything
it reads. So proxies with equal keys get equal resources, and a control plane can build each half once
per key (``snapshots.Translator`` does).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from google.protobuf.message import Message

from vmagent.common.wire import CLUSTER, ENDPOINT, LISTENER, ROUTE
from vmagent.controlplane.model import Service
from vmagent.controlplane.specs.virtualservice import VirtualService
from vmagent.controlplane.translate import authn, clusters, inbound, listeners, names, routes
from vmagent.controlplane.translate.accesslog import AccessLogSettings, with_access_logs
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.endpoints import load_assignment
from vmagent.controlplane.translate.envoyfilter import apply_envoy_filters
from vmagent.controlplane.translate.gateway_listeners import gateway_resources
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.requestmetrics import peer_table, with_request_metrics
from vmagent.controlplane.translate.security import inbound_security
from vmagent.controlplane.translate.services import visible_services
from vmagent.controlplane.translate.sidecar import apply_sidecar
from vmagent.controlplane.translate.telemetry import access_logging_enabled
from vmagent.controlplane.translate.tracing import (
    HcmTracing,
    collector_cluster,
    dedicated_cluster,
    hcm_tracing,
    side_tracing,
    with_tracing,
)
from vmagent.controlplane.translate.wasm import apply_wasm_plugins

Resources = dict[str, dict[str, Any]]
OutboundKey = tuple[str, tuple[tuple[str, str], ...], str]


# The config kinds whose fields select proxies by label, and where: translation reads a proxy's labels
# only through these (VirtualService sourceLabels anywhere in its routes, Gateway selector, the
# workload selector of the security policies).
_SELECTOR_PATHS: Mapping[str, tuple[str, ...]] = {
    "Gateway": ("selector",),
    "PeerAuthentication": ("selector", "matchLabels"),
    "RequestAuthentication": ("selector", "matchLabels"),
    "AuthorizationPolicy": ("selector", "matchLabels"),
    "Sidecar": ("workloadSelector", "labels"),
    "EnvoyFilter": ("workloadSelector", "labels"),
    "Telemetry": ("selector", "matchLabels"),
    "WasmPlugin": ("selector", "matchLabels"),
}


def label_keys_read(configs: ConfigLookup) -> frozenset[str]:
    """Every label key by which ``configs`` select proxies: labels outside it cannot change a proxy's
    resources, so :func:`outbound_key` and :func:`translation_key` may leave them out."""
    keys: set[str] = set()
    for kind, path in _SELECTOR_PATHS.items():
        for obj in configs.list(kind):
            node: Any = obj.spec
            for step in path:
                node = node.get(step) if isinstance(node, Mapping) else None
            if isinstance(node, Mapping):
                keys.update(str(k) for k in node)
    for vs in configs.list("VirtualService"):
        keys.update(_source_label_keys(vs.spec_as(VirtualService)))
    return frozenset(keys)


def _source_label_keys(vs: VirtualService) -> set[str]:
    """The keys of every ``sourceLabels`` map of the VirtualService's HTTP, TLS and TCP matches."""
    found: set[str] = set()
    for kind_routes in (vs.http, vs.tls, vs.tcp):
        for route in kind_routes:
            for match in route.match:
                found.update(match.source_labels)
    return found


def with_labels_read(proxy: ProxyInfo, label_keys: frozenset[str]) -> ProxyInfo:
    """``proxy`` with only the labels in ``label_keys`` (from :func:`label_keys_read`): the same resources."""
    if all(k in label_keys for k in proxy.labels):
        return proxy
    return replace(proxy, labels={k: v for k, v in proxy.labels.items() if k in label_keys})


def outbound_key(proxy: ProxyInfo) -> OutboundKey:
    """What the outbound half reads from ``proxy``: namespace, labels and mode."""
    return (proxy.namespace, tuple(sorted(proxy.labels.items())), proxy.mode)


def translation_key(proxy: ProxyInfo) -> Hashable:
    """What the whole translation reads from ``proxy``: equal keys give equal resources.

    The outbound key plus the workload's ports, identity and inbound address, whether its Envoy has the
    agent's access-log cluster (request metrics), and which IP families its addresses have (only IPv6 or not matters: it adds the IPv6 passthrough). Not the addresses
    themselves nor the proxy's name, so the many proxies of one workload group share one key (use
    :func:`with_labels_read` first to make labels no config selects on irrelevant too).
    """
    families = tuple(sorted({ip.version for a in proxy.ip_addresses if (ip := names.ip_of(a)) is not None}))
    return (
        outbound_key(proxy), proxy.ports, proxy.identity, proxy.inbound_address, families,
        proxy.access_log_service,
    )  # fmt: skip


def outbound_view(proxy: ProxyInfo) -> ProxyInfo:
    """``proxy`` reduced to its :func:`outbound_key` (the outbound half sees nothing else)."""
    return ProxyInfo(namespace=proxy.namespace, labels=dict(proxy.labels), mode=proxy.mode)


def _put(out: Resources, type_url: str, name: str, msg: Message) -> None:
    if name in out[type_url]:
        raise ValueError(f"translation produced two {type_url.rsplit('.', 1)[-1]} named {name!r}")
    out[type_url][name] = msg


def build_outbound_resources(
    proxy: ProxyInfo, services: Iterable[Service], configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """The outbound half for ``proxy``'s :func:`outbound_key` (types and names sorted).

    Callers may share the result between proxies with the same key; nobody may mutate it.
    """
    view = outbound_view(proxy)
    visible = visible_services(services, view.namespace)
    if view.mode != "gateway":  # as in Istio, a Sidecar resource does not apply to gateways
        visible = apply_sidecar(visible, view.namespace, view.labels, configs, mesh.root_namespace)
    out: Resources = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
    for plan in clusters.plan_outbound(visible, view, configs, mesh):
        cluster, auto_tls = clusters.outbound_cluster(plan, mesh)
        _put(out, CLUSTER, cluster.name, cluster)
        if plan.is_eds:
            msg = load_assignment(plan.name, plan.service, plan.port, plan.endpoints, auto_tls)
            _put(out, ENDPOINT, plan.name, msg)
    _put(out, CLUSTER, names.PASSTHROUGH_CLUSTER, clusters.passthrough_cluster(mesh))
    _put(out, CLUSTER, names.BLACKHOLE_CLUSTER, clusters.blackhole_cluster(mesh))
    if view.mode == "gateway":
        gw = gateway_resources(view, visible, configs, mesh)
        for lst in gw.listeners:
            _put(out, LISTENER, lst.name, lst)
        for rc in gw.routes:
            _put(out, ROUTE, rc.name, rc)
        return _sorted(out)
    _put(out, LISTENER, names.VIRTUAL_OUTBOUND, listeners.virtual_outbound(mesh))
    for plan_port in listeners.plan_ports(visible, view, configs, mesh):
        lst = listeners.port_listener(plan_port, mesh)
        _put(out, LISTENER, lst.name, lst)
        if plan_port.http:
            rc = routes.outbound_route_config(plan_port.port, plan_port.http, view, mesh, configs, visible)
            _put(out, ROUTE, rc.name, rc)
    return _sorted(out)


def build_inbound_resources(
    proxy: ProxyInfo, outbound: Mapping[str, Mapping[str, Any]], configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """``outbound`` (from :func:`build_outbound_resources` for ``proxy``) completed with the inbound half.

    Returns new dicts (``outbound`` is not modified; its messages are reused, not copied).
    """
    out: Resources = {t: dict(outbound.get(t, {})) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    if proxy.mode == "gateway":
        out = _with_access_logs(out, proxy, configs, mesh)
        out = _with_request_metrics(out, proxy, configs, mesh)
        out = _with_tracing(out, proxy, configs, mesh)
        apply_wasm_plugins(out, proxy, configs, mesh)
        apply_envoy_filters(out, proxy, configs, mesh)
        return _sorted(out)
    for c in clusters.inbound_passthrough_clusters(proxy, mesh):
        _put(out, CLUSTER, c.name, c)
    for port in inbound.inbound_ports(proxy):
        c = clusters.inbound_cluster(port, proxy, mesh)
        _put(out, CLUSTER, c.name, c)
    security = inbound_security(proxy, configs, mesh)
    # JWKS hosts that no ServiceEntry registers still need a cluster for Envoy to fetch keys through.
    for c in authn.jwks_clusters(security.request_authentications, out[CLUSTER].keys(), mesh):
        _put(out, CLUSTER, c.name, c)
    _put(out, LISTENER, names.VIRTUAL_INBOUND, inbound.virtual_inbound(proxy, security, mesh))
    out = _with_access_logs(out, proxy, configs, mesh)
    out = _with_request_metrics(out, proxy, configs, mesh)
    out = _with_tracing(out, proxy, configs, mesh)
    apply_wasm_plugins(out, proxy, configs, mesh)
    apply_envoy_filters(out, proxy, configs, mesh)
    return _sorted(out)


def _with_request_metrics(
    resources: Resources, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """Istio's request metrics: gRPC access loggers to the agent on every listener (``requestmetrics``),
    for proxies whose Envoy has the agent's access-log cluster."""
    if not mesh.request_metrics or not proxy.access_log_service:
        return resources
    peers = peer_table(configs, mesh.trust_domain)
    return {**resources, LISTENER: with_request_metrics(resources[LISTENER], peers)}


def _with_tracing(
    resources: Resources, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """Envoy's tracer on the HTTP connection managers (``tracing``): the client side on outbound and
    gateway listeners, the server side on inbound ones; plus the collector's cluster when the proxy has
    no outbound cluster for it."""
    client = side_tracing(proxy, configs, mesh, "client")
    server = side_tracing(proxy, configs, mesh, "server")
    if client.provider is None and server.provider is None:
        return resources
    clusters_out = dict(resources[CLUSTER])
    service = _service_name(proxy, configs, mesh)
    blocks: list[HcmTracing | None] = []
    for side in (client, server):
        if side.provider is None:
            blocks.append(None)
            continue
        cluster = collector_cluster(side.provider, clusters_out)
        if cluster not in clusters_out:
            clusters_out[cluster] = dedicated_cluster(side.provider, mesh)
        blocks.append(hcm_tracing(side, cluster, service))
    listeners_out = with_tracing(resources[LISTENER], blocks[0], blocks[1])
    return {**resources, CLUSTER: clusters_out, LISTENER: listeners_out}


def _service_name(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> str:
    """The OpenTelemetry service name, ``APP.NAMESPACE`` as Istio's canonical service: the workload's
    ``app`` label, else its WorkloadGroup's name, else the service account of its identity."""
    workload, app, _version = peer_table(configs, mesh.trust_domain).get(proxy.identity, ["", "", ""])
    name = app or workload or proxy.identity.rpartition("/sa/")[2] or "unknown"
    return f"{name}.{proxy.namespace}"


def _with_access_logs(
    resources: Resources, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """The access log on every listener's HTTP connection managers and tcp_proxies: MeshConfig's settings,
    unless a Telemetry turns it off for this workload; a Telemetry turning it on without MeshConfig
    settings logs to /dev/stdout in the default TEXT format (Istio's built-in ``envoy`` provider)."""
    settings = mesh.access_log
    enabled = access_logging_enabled(proxy, configs, mesh)
    if enabled is False:
        return resources
    if enabled is True and settings is None:
        settings = AccessLogSettings("/dev/stdout")
    if settings is None:
        return resources
    return {**resources, LISTENER: with_access_logs(resources[LISTENER], settings)}


def build_proxy_resources(
    proxy: ProxyInfo, services: Iterable[Service], configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """``type URL -> {resource name -> message}`` for CDS, EDS, LDS and RDS (every type present, maybe empty).

    Pure and deterministic: equal inputs give equal messages in equal order, and proxies with equal
    :func:`translation_key` get equal resources. Gateway proxies get the outbound clusters and
    endpoints and the listeners and routes of the Gateways selecting them (``gateway_listeners``),
    nothing of the sidecar's.
    """
    outbound = build_outbound_resources(proxy, services, configs, mesh)
    return build_inbound_resources(proxy, outbound, configs, mesh)


def _sorted(resources: Resources) -> Resources:
    return {t: {n: resources[t][n] for n in sorted(resources[t])} for t in sorted(resources)}


def all_messages(resources: Resources) -> list[Message]:
    """Every message of ``resources`` in a flat list (for ``Snapshot.from_messages``)."""
    return [msg for t in sorted(resources) for _, msg in sorted(resources[t].items())]
