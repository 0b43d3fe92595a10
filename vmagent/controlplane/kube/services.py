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

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vmagent.controlplane.config.hosts import labels_match, qualify_host
from vmagent.controlplane.kube.client import JsonObj, KubeClient, Resource
from vmagent.controlplane.kube.informer import Change, Informer
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.registry.services import spiffe_id, workload_healthy

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
        self.services_informer = Informer(client, SERVICES, self._changed)
        self.slices_informer = Informer(client, ENDPOINT_SLICES, self._changed)
        self.pods_informer = Informer(client, PODS, self._pods_changed)
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
        """Drop the cached services and tell subscribers (the WorkloadEntries changed, or the cluster)."""
        with self._lock:
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

    def _changed(self, _changes: list[Change]) -> None:
        self.notify_changed()

    def _pods_changed(self, changes: list[Change]) -> None:
        """Pods matter only through their labels and service account: status churn is ignored."""
        dirty = False
        with self._lock:
            for c in changes:
                view = None if c.type == "DELETED" else _pod_routing_view(c.obj)
                if self._pod_views.get(c.key) != view:
                    dirty = True
                    if view is None:
                        self._pod_views.pop(c.key, None)
                    else:
                        self._pod_views[c.key] = view
        if dirty:
            self.notify_changed()

    # -- building -----------------------------------------------------------------------------------

    def build(self) -> list[Service]:
        services = self.services_informer.objects()
        slices_by_service: dict[tuple[str, str], list[JsonObj]] = {}
        for (ns, _name), sl in self.slices_informer.objects().items():
            owner = str(((sl.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) or "")
            if owner:
                slices_by_service.setdefault((ns, owner), []).append(sl)
        pods = self.pods_informer.objects()
        entries = self._workload_entries()
        out = []
        for (ns, name), svc in sorted(services.items()):
            try:
                out.append(self._service(ns, name, svc, slices_by_service.get((ns, name), []), pods, entries))
            except (KeyError, TypeError, ValueError) as exc:  # a malformed object from the API server
                log.error("Service %s/%s skipped: %s", ns, name, exc)
        return out

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
            labels = {str(k): str(v) for k, v in (we.spec.get("labels") or {}).items()}
            labels.update(we.labels)
            if we.namespace != ns or not labels_match(selector, labels):
                continue
            named = we.spec.get("ports") or {}
            mapped = {}
            for p, raw in zip(ports, raw_ports, strict=True):
                target = raw.get("targetPort")
                mapped[p.name] = int(
                    named.get(p.name) or (target if isinstance(target, int) else None) or p.number
                )
            sa = we.spec.get("serviceAccount")
            out.append(
                Endpoint(
                    address=str(we.spec.get("address", "")),
                    labels=labels,
                    ports=mapped,
                    weight=int(we.spec.get("weight") or 1),
                    locality=str(we.spec.get("locality", "")),
                    network=str(we.spec.get("network", "")),
                    service_account=spiffe_id(self._trust_domain, ns, str(sa)) if sa else "",
                    healthy=workload_healthy(we),
                    workload_name=we.name,
                    namespace=ns,
                )
            )
        return out


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
