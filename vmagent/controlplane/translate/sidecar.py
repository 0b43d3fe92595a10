"""Istio's Sidecar egress hosts: which services a (non-gateway) proxy sees.

The Sidecar of a proxy is, as in Istio: one in the proxy's namespace whose ``workloadSelector`` matches
its labels, else the one without a selector in its namespace, else the one without a selector in the
root namespace (the oldest by name when several qualify). Its ``egress[].hosts`` are ``NS/HOST``: NS is
``*`` (any namespace), ``.`` (the proxy's), ``~`` (none) or a name, matched against the namespace of the
service; HOST is ``*``, a ``*.suffix`` wildcard or an exact host name. A proxy without a Sidecar sees
every visible service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmagent.controlplane.config.hosts import host_covers, labels_match
from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.specs.sidecar import Sidecar
from vmagent.controlplane.translate.configindex import ConfigLookup


def _labels(obj: ConfigObject) -> Mapping[str, str]:
    sel = obj.spec_as(Sidecar).workload_selector
    return sel.labels if sel is not None else {}


def sidecar_for(
    namespace: str, labels: Mapping[str, str], configs: ConfigLookup, root_namespace: str
) -> ConfigObject | None:
    """The Sidecar that applies to a proxy of ``namespace`` with ``labels``, or None."""
    own = sorted(configs.list("Sidecar", namespace), key=lambda o: o.name)
    for obj in own:
        sel = _labels(obj)
        if sel and labels_match(sel, labels):
            return obj
    for obj in own:
        if not _labels(obj):
            return obj
    if namespace != root_namespace:
        for obj in sorted(configs.list("Sidecar", root_namespace), key=lambda o: o.name):
            if not _labels(obj):
                return obj
    return None


def egress_hosts(sidecar: ConfigObject) -> list[str]:
    out: list[str] = []
    for listener in sidecar.spec_as(Sidecar).egress:
        out.extend(listener.hosts)
    return out


def egress_allows(hosts: Sequence[str], service: Service, proxy_ns: str) -> bool:
    """Whether one of the Sidecar's egress ``hosts`` selects ``service`` for a proxy of ``proxy_ns``."""
    for entry in hosts:
        ns, _, host = entry.partition("/")
        if ns == "~":
            continue
        if ns == "." and service.namespace != proxy_ns:
            continue
        if ns not in ("*", ".") and service.namespace != ns:
            continue
        if host_covers(host, service.hostname):
            return True
    return False


def apply_sidecar(
    services: Sequence[Service], namespace: str, labels: Mapping[str, str], configs: ConfigLookup, root: str
) -> list[Service]:
    """``services`` limited by the proxy's Sidecar egress hosts (all of them without a Sidecar)."""
    sidecar = sidecar_for(namespace, labels, configs, root)
    if sidecar is None:
        return list(services)
    hosts = egress_hosts(sidecar)
    return [s for s in services if egress_allows(hosts, s, namespace)]
