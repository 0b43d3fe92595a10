"""Connected proxies: who they are, bound to their certificate and what the control plane knows.

A proxy's key is its Envoy node id (``TYPE~IP~NAME.NS~NS.svc.DOMAIN``), but nothing in it is believed
just because the client said so (docs/security.md, "Authorization model"):

* the namespace in the node id must be the certificate's (and a ``NAMESPACE`` in the metadata, if
  sent, the same);
* the IP in the node id decides which workload entry the proxy speaks for. An auto-registered entry
  at that address must belong to the caller's identity, and while it is connected only the
  certificate that registered it (or one of the same renewal lineage) may act for it; an operator-written
  WorkloadEntry at that address must name the caller's service account;
* a pod's sidecar (pod mode: no registration, no WorkloadEntry) is known from the cluster: a running
  Pod of the node id's namespace with that IP must run as the caller's service account, and the proxy
  gets the Pod's labels (its inbound ports come, as for any workload, from the Services whose endpoints
  are that address);
* labels and group come from that entry or pod (else from the WorkloadGroup named in the metadata, when its
  service account is the caller's; else none). The metadata's ``LABELS`` are never used: they would let
  a proxy pick the security policies (PeerAuthentication, AuthorizationPolicy) that apply to it;
* one live owner per proxy record: while a node id has open streams of one certificate, a stream of
  another certificate (not a renewal of it) is refused; it never replaces the record.

:class:`ProxyBinder` applies these rules at connect and again on every push round (an entry may be
registered, or change owner, after the proxy connected); a refusal is :class:`Refused` (the stream
ends with PERMISSION_DENIED and the reason).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from vmagent.common import wire
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.config.snapshot import ConfigView
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.registry.workload_entry import RegistrationRefused, normalize_address
from vmagent.controlplane.registry.workload_store import WorkloadRecord
from vmagent.controlplane.specs import WorkloadEntry, WorkloadGroup
from vmagent.controlplane.xds.server import Refused

# (certificate serial, ancestor serial in hex) -> True when the certificate is the ancestor or a renewal of it
Lineage = Callable[[int, str], bool]
AtAddress = Callable[[str, str], list[WorkloadRecord]]
# (namespace, ip) -> the running pods there: objects with name, labels and service_account
PodsAt = Callable[[str, str], list[Any]]


@dataclass(frozen=True)
class ConnectedProxy:
    key: str
    identity: SpiffeId
    namespace: str
    ip: str
    workload_name: str  # the WorkloadGroup (VMs) or workload name; "" when none is known
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # as sent: informational, never trusted
    gateway: bool = False
    serial: int = 0  # the certificate serial of the stream that connected it
    entry: str = ""  # the workload entry it speaks for ("" when none)


@dataclass(frozen=True)
class _Node:
    kind: str
    ip: str
    namespace: str
    workload: str


def _parse_id(identity: SpiffeId, node_id: str, meta: Mapping[str, Any]) -> _Node:
    try:
        parsed = wire.parse_node_id(node_id)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    kind, ip_text, name, namespace = parsed.proxy_type, parsed.ip, parsed.name, parsed.namespace
    if namespace != identity.namespace:
        raise Refused(f"{identity} may not act for a proxy in namespace {namespace!r} (node id {node_id!r})")
    claimed = meta.get(wire.META_NAMESPACE)
    if claimed is not None and claimed != namespace:
        raise Refused(f"node metadata NAMESPACE {claimed!r} does not match the node id's {namespace!r}")
    try:
        ip = normalize_address(ip_text)
    except RegistrationRefused as exc:
        raise Refused(f"node id {node_id!r}: {exc}") from exc
    workload = meta.get(wire.META_WORKLOAD_NAME)
    return _Node(kind, ip, namespace, str(workload) if isinstance(workload, str) and workload else name)


def _service_account(spec: WorkloadEntry) -> str:
    return spec.service_account or "default"


class ProxyBinder:
    """Binds a proxy's node to what the control plane knows about its certificate (see the module doc)."""

    def __init__(
        self,
        trust_domain: str,
        at_address: AtAddress,
        configs: Callable[[], ConfigView],
        lineage: Lineage | None = None,
        pods_at: PodsAt | None = None,
    ) -> None:
        """``at_address(namespace, ip)``: the auto-registered entries there; ``configs()``: the current
        config; ``lineage(serial, ancestor_hex)``: renewal lineage (None: only equal serials match)."""
        self._trust_domain = trust_domain
        self._at_address = at_address
        self._configs = configs
        self._lineage = lineage
        self._pods_at = pods_at  # None: no cluster
        self._lock = threading.Lock()
        self._known: dict[tuple[int, str], bool] = {}  # lineage answers (a lineage never changes)
        self._entries_of: tuple[object, dict[tuple[str, str], list[ConfigObject]]] | None = None

    def related(self, serial: int, ancestor_hex: str) -> bool:
        """True when certificate ``serial`` is ``ancestor_hex`` or a renewal of it."""
        if f"{serial:x}" == ancestor_hex.lower():
            return True
        if self._lineage is None:
            return False
        key = (serial, ancestor_hex.lower())
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        found = self._lineage(serial, ancestor_hex)
        with self._lock:
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[key] = found
        return found

    def same_lineage(self, serial: int, other_hex: str) -> bool:
        """True when one certificate is the other or was renewed (at any depth) from it: one VM's chain."""
        if self.related(serial, other_hex):
            return True
        try:
            other = int(other_hex, 16)
        except ValueError:
            return False
        return self.related(other, f"{serial:x}")

    def bind(self, identity: SpiffeId, serial: int, node: base_pb2.Node) -> ConnectedProxy:
        meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        return self.bind_id(identity, serial, node.id, meta)

    def rebind(self, proxy: ConnectedProxy) -> ConnectedProxy:
        """``proxy`` bound again against the current entries and config (Refused if it may no longer act)."""
        return self.bind_id(proxy.identity, proxy.serial, proxy.key, proxy.metadata)

    def bind_id(
        self, identity: SpiffeId, serial: int, node_id: str, meta: Mapping[str, Any]
    ) -> ConnectedProxy:
        if identity.trust_domain != self._trust_domain:
            raise Refused(f"{identity} is not in trust domain {self._trust_domain}")
        n = _parse_id(identity, node_id, meta)
        labels, group, entry = self._owned(identity, serial, n)
        return ConnectedProxy(
            key=node_id,
            identity=identity,
            namespace=n.namespace,
            ip=n.ip,
            workload_name=group,
            labels=labels,
            metadata=dict(meta),
            gateway=n.kind == "router",
            serial=serial,
            entry=entry,
        )

    def _owned(self, identity: SpiffeId, serial: int, n: _Node) -> tuple[dict[str, str], str, str]:
        """(labels, group, entry name) of what the caller may act for at ``n.ip``; Refused otherwise."""
        records = self._at_address(n.namespace, n.ip)
        for rec in records:
            if rec.spiffe_id != identity.uri:
                raise Refused(
                    f"address {n.ip} in namespace {n.namespace} belongs to workload entry "
                    f"{rec.namespace}/{rec.name} of {rec.spiffe_id}, not to {identity}"
                )
            if rec.connected and not rec.expired and not self.same_lineage(serial, rec.cert_serial):
                raise Refused(
                    f"workload entry {rec.namespace}/{rec.name} at {n.ip} is connected with another "
                    f"certificate (serial {rec.cert_serial}); certificate {serial:x} may not act for it"
                )
        if records:
            rec = next((r for r in records if r.group == n.workload), records[0])
            return dict(rec.labels), rec.group, rec.name
        view = self._configs()
        for we in self._config_entries(view).get((n.namespace, n.ip), []):
            if _service_account(we.spec_as(WorkloadEntry)) != identity.service_account:
                raise Refused(
                    f"address {n.ip} in namespace {n.namespace} belongs to WorkloadEntry "
                    f"{we.namespace}/{we.name} of service account "
                    f"{_service_account(we.spec_as(WorkloadEntry))!r}, "
                    f"not to {identity}"
                )
        entries = self._config_entries(view).get((n.namespace, n.ip), [])
        group = view.get("WorkloadGroup", n.namespace, n.workload)
        group_spec = group.spec_as(WorkloadGroup) if group is not None else None
        group_ok = group_spec is not None and _service_account(group_spec.template) == (
            identity.service_account
        )
        if entries:
            we = entries[0]
            return dict(we.spec_as(WorkloadEntry).labels), n.workload if group_ok else "", we.name
        pods = self._pods_at(n.namespace, n.ip) if self._pods_at is not None else []
        for pod in pods:
            if pod.service_account != identity.service_account:
                raise Refused(
                    f"address {n.ip} in namespace {n.namespace} is pod {pod.namespace}/{pod.name} of "
                    f"service account {pod.service_account!r}, not {identity}"
                )
        if pods:
            return dict(pods[0].labels), "", ""
        if group_spec is not None and group_ok:
            labels = dict(group_spec.template.labels)
            labels.update(group_spec.metadata.labels)
            return labels, n.workload, ""
        return {}, "", ""

    def _config_entries(self, view: ConfigView) -> dict[tuple[str, str], list[ConfigObject]]:
        """Operator-written WorkloadEntries by (namespace, address), computed once per config snapshot."""
        with self._lock:
            cached = self._entries_of
        if cached is not None and cached[0] is view:
            return cached[1]
        index: dict[tuple[str, str], list[ConfigObject]] = {}
        for we in view.list("WorkloadEntry"):
            try:
                ip = normalize_address(we.spec_as(WorkloadEntry).address)
            except RegistrationRefused:
                continue  # a hostname address: not something a node id names
            index.setdefault((we.namespace, ip), []).append(we)
        with self._lock:
            self._entries_of = (view, index)
        return index


def bind_without_registry(identity: SpiffeId, serial: int, node: base_pb2.Node) -> ConnectedProxy:
    """Binding when no registry is wired in (tests of the ADS machinery): namespace checks only, no labels."""
    meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    n = _parse_id(identity, node.id, meta)
    return ConnectedProxy(
        key=node.id,
        identity=identity,
        namespace=n.namespace,
        ip=n.ip,
        workload_name="",
        metadata=dict(meta),
        gateway=n.kind == "router",
        serial=serial,
    )


# (existing, new) -> True when the new stream's certificate may share the existing record
SameOwner = Callable[[ConnectedProxy, ConnectedProxy], bool]


class ProxyTable:
    """Thread-safe table of connected proxies (a proxy may hold several streams of one owner)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proxies: dict[str, tuple[ConnectedProxy, int]] = {}

    def add(self, proxy: ConnectedProxy, same_owner: SameOwner | None = None) -> None:
        """Count one more stream of ``proxy.key``. Refused when the key is live with another identity, or
        another certificate that ``same_owner`` does not accept (default: the same serial); a renewal's
        stream takes the record over (its serial is the newer one)."""
        with self._lock:
            entry = self._proxies.get(proxy.key)
            if entry is None:
                self._proxies[proxy.key] = (proxy, 1)
                return
            old, n = entry
            same = old.identity == proxy.identity and (
                old.serial == proxy.serial or (same_owner is not None and same_owner(old, proxy))
            )
            if not same:
                raise Refused(
                    f"proxy {proxy.key} is connected with another certificate ({old.identity}, serial "
                    f"{old.serial:x}); one live owner per proxy"
                )
            self._proxies[proxy.key] = (proxy if proxy.serial != old.serial else old, n + 1)

    def update(self, proxy: ConnectedProxy) -> None:
        """Replace the record of a connected proxy (a rebinding); nothing when it is gone."""
        with self._lock:
            entry = self._proxies.get(proxy.key)
            if entry is not None:
                self._proxies[proxy.key] = (proxy, entry[1])

    def remove(self, key: str) -> bool:
        """Drop one stream of ``key``; True when it was the last one."""
        with self._lock:
            entry = self._proxies.get(key)
            if entry is None:
                return False
            proxy, n = entry
            if n > 1:
                self._proxies[key] = (proxy, n - 1)
                return False
            del self._proxies[key]
            return True

    def get(self, key: str) -> ConnectedProxy | None:
        with self._lock:
            entry = self._proxies.get(key)
        return entry[0] if entry else None

    def all(self) -> list[ConnectedProxy]:
        with self._lock:
            return [p for p, _ in self._proxies.values()]


__all__ = ["ConnectedProxy", "ProxyBinder", "ProxyTable", "Refused", "bind_without_registry"]
