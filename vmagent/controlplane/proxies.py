"""Connected proxies: who they are (from their certificate and Envoy node) and which config they get.

A proxy's key is its Envoy node id. The node must claim the namespace of its certificate, so a proxy
only ever receives config for its own identity.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.xds.server import Refused


@dataclass(frozen=True)
class ConnectedProxy:
    key: str
    identity: SpiffeId
    namespace: str
    ip: str
    workload_name: str  # the WorkloadGroup (VMs) or workload name
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    gateway: bool = False


def parse_node(identity: SpiffeId, node: base_pb2.Node) -> ConnectedProxy:
    """Check the node against the certificate and extract what translation needs; Refused if not ours."""
    parts = node.id.split("~")
    if len(parts) != 4 or parts[0] not in ("sidecar", "router"):
        raise Refused(f"node id {node.id!r} is not TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN")
    kind, ip, name_ns, _ = parts
    meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    namespace = str(meta.get("NAMESPACE") or name_ns.rpartition(".")[2])
    if namespace != identity.namespace or not name_ns.endswith("." + identity.namespace):
        raise Refused(f"{identity} may not act for a proxy in namespace {namespace!r}")
    labels = {str(k): str(v) for k, v in (meta.get("LABELS") or {}).items()}
    return ConnectedProxy(
        key=node.id,
        identity=identity,
        namespace=namespace,
        ip=ip,
        workload_name=str(meta.get("WORKLOAD_NAME") or name_ns.rpartition(".")[0]),
        labels=labels,
        metadata=meta,
        gateway=kind == "router",
    )


class ProxyTable:
    """Thread-safe table of connected proxies (a proxy may hold several streams)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proxies: dict[str, tuple[ConnectedProxy, int]] = {}

    def add(self, proxy: ConnectedProxy) -> None:
        with self._lock:
            _, n = self._proxies.get(proxy.key, (proxy, 0))
            self._proxies[proxy.key] = (proxy, n + 1)

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
