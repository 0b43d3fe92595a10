"""Kubernetes Services as a service registry, with Istio's semantics.

* A Service ``NAME`` in ``NS`` is the host ``NAME.NS.svc.DOMAIN`` (``DOMAIN``: the cluster's DNS domain,
  ``cluster.local`` by default) with the Service's ports. A port's protocol comes from ``appProtocol``,
  else from the port name's prefix (``http``, ``http-web``, ``grpc-api``, ...), as Istio selects it;
  other ports are TCP (vmagent does not sniff protocols).
* Endpoints come from the Service's EndpointSlices (``discovery.k8s.io/v1``, label
  ``kubernetes.io/service-name``): an address is healthy when its ``ready`` condition is true or unset;
  not-ready and terminating addresses are kept as unhealthy (they leave EDS, the name table keeps them).
  Labels and service account come from the Pod the endpoint's ``targetRef`` names; an endpoint speaks
  Istio mutual TLS only when its pod carries Istio's label ``security.istio.io/tlsMode: istio`` (what
  sidecar injection sets), so pods without a sidecar are reached in plain text, as in Istio.
* The Service's selector also selects the WorkloadEntries (VMs: configured or auto-registered) of its
  namespace whose labels match, so one Service can be backed by pods and VMs at once (Istio's rule).
  A VM's port for a Service port is the entry's ``ports[port name]``, else the numeric ``targetPort``,
  else the port number.
* ``clusterIP: None`` (headless) gives resolution NONE (connections go to the address the client
  resolved, through the original-destination cluster); ``type: ExternalName`` gives a mesh-external
  service resolved by DNS to the external name, as Istio does.
* ``networking.istio.io/exportTo`` (annotation, comma-separated) limits visibility; default ``*``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmagent.controlplane.config.hosts import labels_match, qualify_host
from vmagent.controlplane.kube.client import JsonObj, KubeClient, Resource
from vmagent.controlplane.kube.informer import Change, Informer
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.registry.services import spiffe_id, workload_healthy
from vmagent.controlplane.specs import WorkloadEntry

log = logging.getLogger(__name__)

SERVICES = Resource("", "v1", "services", "Service")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
PODS = Resource("", "v1", "pods", "Pod")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"

_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "h2c": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "GRPC_WEB",
    "https": "HTTPS",
    "tls": "TLS",
    "tcp": "TCP",
    "udp": "UDP",
    "mongo": "MONGO",
    "mysql": "MYSQL",
    "redis": "REDIS",
}


def port_protocol(port: Mapping[str, Any]) -> str:
    """Istio's protocol selection for a Service port: appProtocol, then the name's prefix, else TCP."""
    app = str(port.get("appProtocol") or "").lower()
    if app in _PROTOCOLS:
        return _PROTOCOLS[app]
    name = str(port.get("name") or "").lower()
    for prefix in (name, name.split("-", 1)[0]):
        if prefix in _PROTOCOLS:
            return _PROTOCOLS[prefix]
    if str(port.get("protocol") or "TCP").upper() == "UDP":
        return "UDP"
    return "TCP"


class KubeServiceRegistry:
    """A ``ServiceRegistry`` of the cluster's Services (see the module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        trust_domain: str,
        workload_entries: Callable[[], list[ConfigObject]],
        cluster_domain: str = "cluster.local",
    ) -> None:
        self._trust_domain = trust_domain
        self._workload_entries = workload_entries
        self._domain = cluster_domain
        self._lock = threading.Lock()
        self._cache: list[Service] | None = None
        self._subscribers: list[Callable[[], None]] = []
        self._pod_views: dict[tuple[str, str], tuple[dict[str, str], str]] = {}
        # Running pods by (namespace, IP): how the xDS server knows a pod's sidecar (pods_at).
        self._pod_ip: dict[tuple[str, str], str] = {}
        self._pods_by_ip: dict[tuple[str, str], set[str]] = {}
        self._pod_subscribers: list[Callable[[], None]] = []
        # Incremental rebuilds: the Service built per (ns, name), the keys to build again, and which
        # Services a slice or a pod feeds. ``_all_dirty``: everything (the first build, VMs changed).
        self._built: dict[tuple[str, str], Service] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._all_dirty = True
        self._slice_owner: dict[tuple[str, str], tuple[str, str]] = {}
        self._pod_services: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._build_lock = threading.Lock()  # one build at a time: each starts from the last one's result
        self.builds = 0  # Services built (full and incremental), for tests and benchmarks
        self.services_informer = Informer(client, SERVICES, self._services_changed)
        self.slices_informer = Informer(client, ENDPOINT_SLICES, self._slices_changed)
        self.pods_informer = Informer(client, PODS, self._pods_changed, transform=pod_routing_fields)
        self.informers = (self.services_informer, self.slices_informer, self.pods_informer)

    # -- ServiceRegistry ----------------------------------------------------------------------------

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

    def notify_changed(self) -> None:
        """Rebuild every Service and tell subscribers (the WorkloadEntries changed: any selector may)."""
        self._invalidate(None)

    def _invalidate(self, keys: Iterable[tuple[str, str]] | None) -> None:
        """Build ``keys`` (None: every Service) again on the next ``services()`` and tell subscribers."""
        with self._lock:
            if keys is None:
                self._all_dirty = True
            else:
                self._dirty.update(keys)
            self._cache = None
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb()
            except Exception:
                log.exception("registry subscriber %r failed", cb)

    def start(self) -> None:
        for inf in self.informers:
            inf.start()

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop()

    def wait_synced(self, timeout: float) -> bool:
        return all(inf.wait_synced(timeout) for inf in self.informers)

    # -- changes ------------------------------------------------------------------------------------

    def _services_changed(self, changes: list[Change]) -> None:
        self._invalidate([c.key for c in changes])

    def _slices_changed(self, changes: list[Change]) -> None:
        keys = []
        with self._lock:
            for c in changes:
                # The Service it fed before (its label may have changed, or it is gone) and the one it feeds now.
                old = self._slice_owner.pop(c.key, None)
                if old is not None:
                    keys.append(old)
                owner = _slice_service(c.obj)
                if owner and c.type != "DELETED":
                    self._slice_owner[c.key] = (c.key[0], owner)
                    keys.append((c.key[0], owner))
        self._invalidate(keys)

    def _pods_changed(self, changes: list[Change]) -> None:
        """Pods matter only through their labels and service account: status churn is ignored."""
        keys: set[tuple[str, str]] = set()
        proxies_changed = False
        with self._lock:
            for c in changes:
                view = None if c.type == "DELETED" else _pod_routing_view(c.obj)
                ip = "" if view is None else _running_pod_ip(c.obj)
                if self._pod_ip.get(c.key, "") != ip or (ip and self._pod_views.get(c.key) != view):
                    proxies_changed = True  # a sidecar at that address speaks for another pod, or labels
                    self._index_pod_ip(c.key, ip)
                if self._pod_views.get(c.key) != view:
                    fed = (
                        self._pod_services.pop(c.key, set())
                        if view is None
                        else self._pod_services.get(c.key)
                    )
                    keys.update(fed or ())
                    if view is None:
                        self._pod_views.pop(c.key, None)
                    else:
                        self._pod_views[c.key] = view
        if keys:
            self._invalidate(keys)
        if proxies_changed:  # not a change of Services: only the binding of pods' proxies may change
            with self._lock:
                callbacks = list(self._pod_subscribers)
            for cb in callbacks:
                cb()

    def subscribe_pods(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when a running pod's address, labels or service account changed."""
        with self._lock:
            self._pod_subscribers.append(callback)

    def _index_pod_ip(self, key: tuple[str, str], ip: str) -> None:
        old = self._pod_ip.pop(key, "")
        if old:
            names = self._pods_by_ip.get((key[0], old), set())
            names.discard(key[1])
            if not names:
                self._pods_by_ip.pop((key[0], old), None)
        if ip:
            self._pod_ip[key] = ip
            self._pods_by_ip.setdefault((key[0], ip), set()).add(key[1])

    def pods_at(self, namespace: str, ip: str) -> list[PodView]:
        """The running pods of ``namespace`` with address ``ip`` (one, unless the cluster is mid-change)."""
        with self._lock:
            names = sorted(self._pods_by_ip.get((namespace, ip), ()))
            out = []
            for name in names:
                view = self._pod_views.get((namespace, name))
                if view is not None:
                    out.append(PodView(namespace, name, dict(view[0]), view[1]))
        return out

    # -- building -----------------------------------------------------------------------------------

    def build(self) -> list[Service]:
        """The Services, building again only those whose Service, slices or pods changed since the last
        build (all of them the first time and when the WorkloadEntries changed)."""
        with self._build_lock:
            return self._build()

    def _build(self) -> list[Service]:
        with self._lock:
            full, dirty = self._all_dirty, self._dirty
            self._all_dirty, self._dirty = False, set()
        services = self.services_informer.objects()
        todo = set(services) if full else {k for k in dirty if k in services}
        slices_by_service: dict[tuple[str, str], list[JsonObj]] = {}
        for (ns, _name), sl in self.slices_informer.objects().items():
            owner = _slice_service(sl)
            if owner and (ns, owner) in todo:
                slices_by_service.setdefault((ns, owner), []).append(sl)
        pods = self.pods_informer.objects()
        entries = self._workload_entries()
        built: dict[tuple[str, str], Service] = {} if full else dict(self._built)
        for key in dirty - set(services):
            built.pop(key, None)
        for key in sorted(todo):
            ns, name = key
            slices = slices_by_service.get(key, [])
            with self._lock:
                for sl in slices:
                    for ep in sl.get("endpoints") or []:
                        ref = ep.get("targetRef") if isinstance(ep, dict) else None
                        if isinstance(ref, dict) and ref.get("kind") == "Pod":
                            pod = (str(ref.get("namespace") or ns), str(ref.get("name") or ""))
                            self._pod_services.setdefault(pod, set()).add(key)
            try:
                built[key] = self._service(ns, name, services[key], slices, pods, entries)
            except (KeyError, TypeError, ValueError) as exc:  # a malformed object from the API server
                built.pop(key, None)
                log.error("Service %s/%s skipped: %s", ns, name, exc)
        self.builds += len(todo)
        self._built = built
        return [built[k] for k in sorted(built)]

    def _service(
        self,
        ns: str,
        name: str,
        svc: JsonObj,
        slices: list[JsonObj],
        pods: Mapping[tuple[str, str], JsonObj],
        entries: Iterable[ConfigObject],
    ) -> Service:
        spec = svc.get("spec") or {}
        meta = svc.get("metadata") or {}
        raw_ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        ports = tuple(
            Port(
                number=int(p["port"]),
                protocol=port_protocol(p),
                name=str(p.get("name") or ""),
                target_port=int(p["targetPort"]) if isinstance(p.get("targetPort"), int) else None,
            )
            for p in raw_ports
        )
        export = str((meta.get("annotations") or {}).get(EXPORT_TO_ANNOTATION) or "")
        export_to = tuple(x.strip() for x in export.split(",") if x.strip()) or ("*",)
        hostname = qualify_host(name, ns, self._domain)
        source = f"Kubernetes Service {ns}/{name}"
        if spec.get("type") == "ExternalName":
            external = str(spec.get("externalName") or "")
            eps = (Endpoint(address=external, ports={p.name: p.number for p in ports}, namespace=ns),)
            return Service(
                hostname, ns, ports, (), "DNS", "MESH_EXTERNAL", eps if external else (), export_to, source
            )
        cluster_ip = str(spec.get("clusterIP") or "")
        headless = cluster_ip == "None"
        addresses = tuple(ip for ip in (spec.get("clusterIPs") or [cluster_ip]) if ip and ip != "None")
        endpoints = [*self._slice_endpoints(ns, slices, ports, pods)]
        selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        if selector:
            endpoints.extend(self._vm_endpoints(ns, selector, ports, raw_ports, entries))
        return Service(
            hostname=hostname,
            namespace=ns,
            ports=ports,
            addresses=() if headless else addresses,
            resolution="NONE" if headless else "STATIC",
            location="MESH_INTERNAL",
            endpoints=tuple(endpoints),
            export_to=export_to,
            source=source,
        )

    def _slice_endpoints(
        self,
        ns: str,
        slices: list[JsonObj],
        ports: tuple[Port, ...],
        pods: Mapping[tuple[str, str], JsonObj],
    ) -> list[Endpoint]:
        out: dict[str, Endpoint] = {}
        for sl in sorted(slices, key=lambda s: str((s.get("metadata") or {}).get("name"))):
            if str(sl.get("addressType", "IPv4")) == "FQDN":
                continue
            slice_ports = {
                str(p.get("name") or ""): int(p["port"])
                for p in sl.get("ports") or []
                if isinstance(p, dict) and p.get("port") is not None
            }
            mapped = {p.name: slice_ports.get(p.name, p.target_port or p.number) for p in ports}
            for ep in sl.get("endpoints") or []:
                if not isinstance(ep, dict):
                    continue
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False and cond.get("terminating") is not True
                pod = _target_pod(ep, ns, pods)
                labels, sa = _pod_identity(pod)
                for addr in ep.get("addresses") or []:
                    address = str(addr)
                    if address in out and out[address].healthy:
                        continue  # listed by two slices (a slice being replaced): keep the healthy one
                    out[address] = Endpoint(
                        address=address,
                        labels=labels,
                        ports=mapped,
                        service_account=spiffe_id(self._trust_domain, ns, sa) if sa else "",
                        healthy=ready,
                        workload_name=str((ep.get("targetRef") or {}).get("name") or ""),
                        namespace=ns,
                    )
        return [out[a] for a in sorted(out)]

    def _vm_endpoints(
        self,
        ns: str,
        selector: dict[str, str],
        ports: tuple[Port, ...],
        raw_ports: list[JsonObj],
        entries: Iterable[ConfigObject],
    ) -> list[Endpoint]:
        out = []
        for we in entries:
            spec = we.spec_as(WorkloadEntry)
            labels = dict(spec.labels)
            labels.update(we.labels)
            if we.namespace != ns or not labels_match(selector, labels):
                continue
            named = spec.ports
            mapped = {}
            for p, raw in zip(ports, raw_ports, strict=True):
                target = raw.get("targetPort")
                mapped[p.name] = int(
                    named.get(p.name) or (target if isinstance(target, int) else None) or p.number
                )
            sa = spec.service_account
            out.append(
                Endpoint(
                    address=spec.address,
                    labels=labels,
                    ports=mapped,
                    weight=spec.weight or 1,
                    locality=spec.locality,
                    network=spec.network,
                    service_account=spiffe_id(self._trust_domain, ns, sa) if sa else "",
                    healthy=workload_healthy(we),
                    workload_name=we.name,
                    namespace=ns,
                )
            )
        return out


def _slice_service(sl: JsonObj) -> str:
    """The Service an EndpointSlice belongs to (its ``kubernetes.io/service-name`` label), or ""."""
    return str(((sl.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) or "")


def pod_routing_fields(pod: JsonObj) -> JsonObj:
    """What the registry keeps of a Pod (the informer's transform): name, labels, service account, node,
    IP and phase. A full Pod is several kilobytes; a cluster has tens of thousands."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels") if k in meta
        },
        "spec": {k: spec[k] for k in ("serviceAccountName", "nodeName") if k in spec},
        "status": {k: status[k] for k in ("podIP", "phase") if k in status},
    }


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    labels: dict[str, str]
    service_account: str


def _running_pod_ip(pod: JsonObj) -> str:
    """The pod's IP while it can run a sidecar ("" once it has finished: its IP may be reused)."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return ""
    ip = str(status.get("podIP") or "")
    try:
        return str(ipaddress.ip_address(ip)) if ip else ""
    except ValueError:
        return ""


def _target_pod(ep: JsonObj, ns: str, pods: Mapping[tuple[str, str], JsonObj]) -> JsonObj | None:
    ref = ep.get("targetRef") or {}
    if not isinstance(ref, dict) or ref.get("kind") != "Pod":
        return None
    return pods.get((str(ref.get("namespace") or ns), str(ref.get("name") or "")))


def _pod_identity(pod: JsonObj | None) -> tuple[dict[str, str], str]:
    """(labels, service account for mutual TLS or "") of an endpoint's pod."""
    if pod is None:
        return {}, ""
    view = _pod_routing_view(pod)
    assert view is not None
    labels, sa = view
    return labels, sa if labels.get(TLS_MODE_LABEL) == "istio" else ""


def _pod_routing_view(pod: JsonObj) -> tuple[dict[str, str], str] | None:
    meta = pod.get("metadata") or {}
    if not meta:
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    sa = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
    return labels, sa
