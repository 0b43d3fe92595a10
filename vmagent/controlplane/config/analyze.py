"""Cross-object checks in the spirit of ``istioctl analyze``; they produce warnings, never errors.

* a VirtualService (bound to the mesh) whose host matches no known service;
* a route destination host that matches no known service;
* a destination subset that no DestinationRule for that host defines;
* a VirtualService naming a Gateway that does not exist.

Known services are the ServiceEntry hosts plus ``extra_hosts`` (e.g. Kubernetes Services, later).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vmagent.controlplane.config.common import as_dict, as_list
from vmagent.controlplane.config.hosts import hosts_overlap, qualify_host
from vmagent.controlplane.config.issues import Issue, object_label
from vmagent.controlplane.model import ConfigObject


def _destinations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for section in ("http", "tcp", "tls"):
        for i, route in enumerate(as_list(spec.get(section))):
            r = as_dict(route)
            for j, dest in enumerate(as_list(r.get("route"))):
                out.append(
                    (f"spec.{section}[{i}].route[{j}].destination", as_dict(as_dict(dest).get("destination")))
                )
            if r.get("mirror"):
                out.append((f"spec.{section}[{i}].mirror", as_dict(r.get("mirror"))))
            for j, m in enumerate(as_list(r.get("mirrors"))):
                out.append(
                    (f"spec.{section}[{i}].mirrors[{j}].destination", as_dict(as_dict(m).get("destination")))
                )
    return out


def analyze(
    objects: Sequence[ConfigObject],
    extra_hosts: Iterable[str] = (),
    domain_suffix: str = "cluster.local",
) -> list[Issue]:
    """Warnings about references between ``objects`` that point at nothing."""
    services = [
        h
        for o in objects
        if o.kind == "ServiceEntry"
        for h in as_list(o.spec.get("hosts"))
        if isinstance(h, str)
    ]
    services += list(extra_hosts)
    subsets: dict[str, set[str]] = {}
    for dr in (o for o in objects if o.kind == "DestinationRule"):
        host = qualify_host(str(dr.spec.get("host", "")), dr.namespace, domain_suffix)
        names = {str(as_dict(s).get("name")) for s in as_list(dr.spec.get("subsets"))}
        subsets.setdefault(host, set()).update(names)
    gateways = {(o.namespace, o.name) for o in objects if o.kind == "Gateway"}

    def known(host: str) -> bool:
        return any(hosts_overlap(host, s) for s in services)

    issues: list[Issue] = []
    for vs in (o for o in objects if o.kind == "VirtualService"):
        label = object_label(vs.kind, vs.namespace, vs.name)
        gw_refs = [g for g in as_list(vs.spec.get("gateways")) if isinstance(g, str)]
        if not gw_refs or "mesh" in gw_refs:
            for i, h in enumerate(as_list(vs.spec.get("hosts"))):
                host = qualify_host(str(h), vs.namespace, domain_suffix)
                if h != "*" and not known(host):
                    issues.append(
                        Issue(vs.source, label, f"spec.hosts[{i}]", f"host {host!r} matches no known service")
                    )
        for i, g in enumerate(gw_refs):
            if g == "mesh":
                continue
            ns, _, name = g.rpartition("/")
            if (ns or vs.namespace, name) not in gateways:
                issues.append(
                    Issue(
                        vs.source,
                        label,
                        f"spec.gateways[{i}]",
                        f"Gateway {ns or vs.namespace}/{name} not found",
                    )
                )
        for path, dest in _destinations(vs.spec):
            raw = dest.get("host")
            if not isinstance(raw, str):
                continue
            host = qualify_host(raw, vs.namespace, domain_suffix)
            if not known(host):
                issues.append(
                    Issue(vs.source, label, f"{path}.host", f"host {host!r} matches no known service")
                )
            subset = dest.get("subset")
            if subset and not any(subset in names for h, names in subsets.items() if hosts_overlap(host, h)):
                issues.append(
                    Issue(
                        vs.source,
                        label,
                        f"{path}.subset",
                        f"subset {subset!r} is not defined by any DestinationRule for host {host!r}",
                    )
                )
    return issues
