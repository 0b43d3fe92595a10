"""The name table for the agent's DNS proxy: hostname -> addresses."""

from __future__ import annotations

from collections.abc import Iterable

from vmagent.controlplane.model import Service
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.services import ip_endpoint_addresses, visible_to


def service_addresses(service: Service) -> list[str]:
    """What a client of ``service`` should connect to: its VIPs (single IPs; CIDRs are not addresses);
    without VIPs, the IP addresses of its endpoints for STATIC and NONE resolution (DNS-resolved
    services are left to real DNS). Unhealthy endpoints stay in: capture routes a connection to any
    endpoint address through the service's cluster, which only uses healthy ones.
    """
    vips = [str(ip) for a in service.addresses if (ip := names.ip_of(a)) is not None]
    if vips:
        return sorted(set(vips), key=names.sort_key_ip)
    if service.resolution in ("DNS", "DNS_ROUND_ROBIN"):
        return []
    return ip_endpoint_addresses(service)


def build_name_table(services: Iterable[Service], namespace: str | None = None) -> dict[str, list[str]]:
    """``{hostname: [address, ...]}`` for every non-wildcard host with addresses, sorted.

    With ``namespace`` (the proxy's), only the services visible from it (``exportTo``) are listed.
    Hostnames are lower-cased; a hostname defined in several namespaces gets the union of their
    addresses. Short names are not added here: the DNS proxy derives them for its own namespace.
    """
    table: dict[str, set[str]] = {}
    for svc in services:
        if namespace is not None and not visible_to(svc, namespace):
            continue
        host = svc.hostname.lower().rstrip(".")
        if not host or "*" in host:
            continue
        addrs = service_addresses(svc)
        if addrs:
            table.setdefault(host, set()).update(addrs)
    return {h: sorted(table[h], key=names.sort_key_ip) for h in sorted(table)}
