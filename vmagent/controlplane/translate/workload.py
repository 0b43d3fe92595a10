"""The ports a proxy's own workload listens on, derived from the services that select it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.services import endpoint_port


def _is_self(ep: Endpoint, namespace: str, workload_name: str, addresses: Iterable[str]) -> bool:
    if workload_name and ep.workload_name:
        return ep.workload_name == workload_name and (ep.namespace or namespace) == namespace
    return ep.address in set(addresses)


def workload_ports(
    services: Iterable[Service],
    namespace: str,
    workload_name: str = "",
    addresses: Iterable[str] = (),
    named_ports: Mapping[str, int] | None = None,
) -> tuple[Port, ...]:
    """Inbound ports of one workload, as Istio derives them.

    For each service with an endpoint that is this workload (its WorkloadEntry name in ``namespace``,
    or else one of its ``addresses``), each service port gives the endpoint's port with the service
    port's protocol. ``named_ports`` (the WorkloadEntry/WorkloadGroup ``ports`` map) adds ports no
    service covers, their protocol taken from the name (``http-web`` is HTTP). Sorted by number; the
    first service by hostname decides a port's protocol.
    """
    addrs = list(addresses)
    found: dict[int, Port] = {}
    for svc in sorted(services, key=lambda s: (s.hostname, s.namespace)):
        for ep in svc.endpoints:
            if not _is_self(ep, namespace, workload_name, addrs):
                continue
            for port in sorted(svc.ports, key=lambda p: p.number):
                number = endpoint_port(ep, port)
                found.setdefault(number, Port(number=number, protocol=port.protocol or "TCP", name=port.name))
    for name, number in sorted((named_ports or {}).items()):
        found.setdefault(
            int(number), Port(number=int(number), protocol=names.protocol_from_port_name(name), name=name)
        )
    return tuple(found[n] for n in sorted(found))
