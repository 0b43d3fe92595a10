"""Which services a proxy sees, and the endpoints of a service port (subset)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmagent.controlplane.config.hosts import labels_match, visible_from
from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate import names


def visible_to(service: Service, namespace: str) -> bool:
    """Istio's ``exportTo``: ``*`` everywhere, ``.`` the service's own namespace, else the listed ones."""
    return visible_from(service.export_to, service.namespace, namespace)


def visible_services(services: Iterable[Service], proxy_ns: str) -> list[Service]:
    """The services ``proxy_ns`` may reach, one per hostname, sorted by hostname.

    When several namespaces define the same hostname, the proxy's own namespace wins, then the first
    namespace by name (Istio picks one too; it merges nothing).
    """
    chosen: dict[str, Service] = {}
    for s in sorted(services, key=lambda s: (s.hostname, s.namespace != proxy_ns, s.namespace, s.source)):
        if visible_to(s, proxy_ns) and s.hostname not in chosen:
            chosen[s.hostname] = s
    return [chosen[h] for h in sorted(chosen)]


def endpoint_port(ep: Endpoint, port: Port) -> int:
    """The endpoint's port for a service port: its named port, else the target port, else the number."""
    return ep.ports.get(port.name) or port.target_port or port.number


def subset_endpoints(service: Service, labels: Mapping[str, str]) -> list[Endpoint]:
    """Endpoints whose labels include all of ``labels`` (all endpoints for an empty selector)."""
    return [ep for ep in service.endpoints if labels_match(labels, ep.labels)]


def is_mesh_endpoint(service: Service, ep: Endpoint) -> bool:
    """An endpoint that speaks Istio mutual TLS: a mesh-internal workload with a SPIFFE identity.

    The label ``security.istio.io/tlsMode: disabled`` opts a workload out.
    """
    return (
        service.location == "MESH_INTERNAL"
        and bool(ep.service_account)
        and ep.labels.get(names.TLS_MODE_LABEL, "istio") != "disabled"
    )


def ip_endpoint_addresses(service: Service) -> list[str]:
    """The endpoint addresses that are IPs (not DNS names), sorted and unique."""
    found = {str(ip) for ep in service.endpoints if (ip := names.ip_of(ep.address)) is not None}
    return sorted(found, key=names.sort_key_ip)
