"""The service registry: services and their endpoints, behind one interface for every platform.

``ServiceRegistry`` is what translation reads. ``ConfigRegistry`` builds it from ServiceEntry and
WorkloadEntry config objects with Istio's semantics:

* one ``Service`` per ServiceEntry host (hosts are kept as written: Istio requires FQDN-like hosts in a
  ServiceEntry and does not expand short names there); location defaults to MESH_EXTERNAL and
  resolution to NONE, as in Istio's API;
* endpoints come from the inline ``endpoints`` or, with a ``workloadSelector``, from the WorkloadEntries
  of the same namespace whose labels include all the selector's labels (config objects and the entries
  returned by ``extra_workload_entries``, e.g. auto-registered VMs);
* a DNS/DNS_ROUND_ROBIN ServiceEntry without endpoints resolves its hosts: each non-wildcard host
  becomes an endpoint with the host name as address;
* an endpoint's port for each service port is the entry's ``ports[port name]``, else the service
  port's ``targetPort``, else its number;
* ``serviceAccount`` becomes ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT``;
* a WorkloadEntry whose status has condition ``Healthy`` = False yields an unhealthy endpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vmagent.controlplane.config.common import as_dict, as_list
from vmagent.controlplane.config.hosts import labels_match
from vmagent.controlplane.config.snapshot import ConfigView
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.specs import ServiceEntry, WorkloadEntry

log = logging.getLogger(__name__)


class ServiceRegistry(Protocol):
    """A platform's services (ServiceEntries here; Kubernetes Services later)."""

    def services(self) -> list[Service]: ...

    def subscribe(self, callback: Callable[[], None]) -> None: ...


class SubscribableConfig(ConfigView, Protocol):
    def subscribe(self, callback: Callable[[Any], None]) -> None: ...


def find_workload_group(configs: ConfigView, namespace: str, name: str) -> ConfigObject | None:
    """The WorkloadGroup ``namespace/name``, or None (token creation refuses unknown groups)."""
    return configs.get("WorkloadGroup", namespace, name)


def workload_group_document(configs: ConfigView, namespace: str, name: str) -> dict[str, Any] | None:
    """The WorkloadGroup as the YAML document users wrote (apiVersion, kind, metadata, spec), or None;
    what joins and registrations are checked against and what a joining VM receives."""
    group = find_workload_group(configs, namespace, name)
    if group is None:
        return None
    return {
        "apiVersion": group.api_version,
        "kind": group.kind,
        "metadata": {"name": group.name, "namespace": group.namespace, "labels": group.labels},
        "spec": group.spec,
    }


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def workload_healthy(entry: ConfigObject) -> bool:
    """False when the WorkloadEntry's status carries condition ``Healthy`` with status False.

    Reads ``entry.status`` when the model has it (set by the health relay), else the spec is healthy.
    """
    status = as_dict(getattr(entry, "status", None))
    for cond in as_list(status.get("conditions")):
        c = as_dict(cond)
        if c.get("type") == "Healthy":
            return str(c.get("status", "True")).lower() != "false"
    return True


def _ports(spec: ServiceEntry) -> tuple[Port, ...]:
    return tuple(
        Port(number=p.number, protocol=p.protocol.upper(), name=p.name, target_port=p.target_port or None)
        for p in spec.ports
    )


class ConfigRegistry:
    """A ``ServiceRegistry`` computed from config objects; recomputed lazily after each change."""

    def __init__(
        self,
        configs: SubscribableConfig,
        trust_domain: str,
        extra_workload_entries: Callable[[], list[ConfigObject]] | None = None,
    ) -> None:
        self._configs = configs
        self._trust_domain = trust_domain
        self._extra = extra_workload_entries
        self._lock = threading.Lock()
        self._cache: list[Service] | None = None
        self._subscribers: list[Callable[[], None]] = []
        configs.subscribe(lambda _snapshot: self.notify_changed())

    def notify_changed(self) -> None:
        """Drop the cached services and tell subscribers (call it when the extra entries change)."""
        with self._lock:
            self._cache = None
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb()
            except Exception:
                log.exception("registry subscriber %r failed", cb)

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def services(self) -> list[Service]:
        with self._lock:
            if self._cache is not None:
                return list(self._cache)
        built = self.build()
        with self._lock:
            self._cache = built
        return list(built)

    def workload_entries(self) -> list[ConfigObject]:
        """Config WorkloadEntries plus the extra (auto-registered) ones; config wins on a name clash."""
        entries = {o.key: o for o in self._configs.list("WorkloadEntry")}
        for extra in self._extra() if self._extra is not None else []:
            entries.setdefault(extra.key, extra)
        return [entries[k] for k in sorted(entries)]

    def build(self) -> list[Service]:
        entries = self.workload_entries()
        services: list[Service] = []
        for se in self._configs.list("ServiceEntry"):
            try:
                services.extend(self._from_service_entry(se, entries))
            except (KeyError, TypeError, ValueError) as exc:  # only reachable with unvalidated input
                log.error("ServiceEntry %s/%s skipped: %s", se.namespace, se.name, exc)
        return sorted(services, key=lambda s: (s.hostname, s.namespace, s.source))

    def _from_service_entry(self, se: ConfigObject, entries: Sequence[ConfigObject]) -> list[Service]:
        spec = se.spec_as(ServiceEntry)
        ports = _ports(spec)
        endpoints: list[Endpoint] = []
        if spec.workload_selector is not None:
            selector = dict(spec.workload_selector.labels)
            for we in entries:
                if we.namespace == se.namespace and labels_match(selector, _entry_labels(we)):
                    endpoint = we.spec_as(WorkloadEntry)
                    endpoints.append(self._endpoint(endpoint, ports, we.namespace, we, _entry_labels(we)))
        else:
            for ep in spec.endpoints:
                endpoints.append(self._endpoint(ep, ports, se.namespace, None, dict(ep.labels)))
        out = []
        for host in spec.hosts:
            eps = endpoints
            if not eps and spec.resolution in ("DNS", "DNS_ROUND_ROBIN") and not host.startswith("*"):
                eps = [Endpoint(address=host, ports={p.name: p.target_port or p.number for p in ports})]
            out.append(
                Service(
                    hostname=host,
                    namespace=se.namespace,
                    ports=ports,
                    addresses=spec.addresses,
                    resolution=spec.resolution,
                    location=spec.location,
                    endpoints=tuple(eps),
                    export_to=spec.export_to or ("*",),
                    source=f"ServiceEntry {se.namespace}/{se.name}",
                )
            )
        return out

    def _endpoint(
        self,
        spec: WorkloadEntry,
        ports: Sequence[Port],
        namespace: str,
        entry: ConfigObject | None,
        labels: dict[str, str],
    ) -> Endpoint:
        mapped = {p.name: int(spec.ports.get(p.name) or p.target_port or p.number) for p in ports}
        sa = spec.service_account
        return Endpoint(
            address=spec.address,
            labels={str(k): str(v) for k, v in labels.items()},
            ports=mapped,
            weight=spec.weight or 1,
            locality=spec.locality,
            network=spec.network,
            service_account=spiffe_id(self._trust_domain, namespace, sa) if sa else "",
            healthy=workload_healthy(entry) if entry is not None else True,
            workload_name=entry.name if entry is not None else "",
            namespace=namespace,
        )


def _entry_labels(entry: ConfigObject) -> dict[str, str]:
    """A WorkloadEntry's labels as Istio merges them: spec.labels, overridden by metadata.labels."""
    labels = dict(entry.spec_as(WorkloadEntry).labels)
    labels.update(entry.labels)
    return labels


class AggregateRegistry:
    """Several registries seen as one (ServiceEntries plus Kubernetes later), in the given order."""

    def __init__(self, registries: Sequence[ServiceRegistry]) -> None:
        self._registries = list(registries)

    def services(self) -> list[Service]:
        return [s for r in self._registries for s in r.services()]

    def subscribe(self, callback: Callable[[], None]) -> None:
        for r in self._registries:
            r.subscribe(callback)
