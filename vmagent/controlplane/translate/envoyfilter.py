"""Istio EnvoyFilter patches applied to a proxy's generated resources (the subset vmagent implements).

Supported, with Istio's semantics: ``applyTo: HTTP_FILTER`` with ``INSERT_BEFORE``, ``INSERT_AFTER``,
``INSERT_FIRST`` (relative to the HTTP filter named by ``match.listener.filterChain.filter.subFilter.name``)
in every HTTP connection manager of the matching listeners; ``applyTo: CLUSTER`` and ``LISTENER`` with
``MERGE`` (protobuf merge of ``patch.value``). ``match.context`` (ANY, SIDECAR_INBOUND: the
``virtualInbound`` listener, SIDECAR_OUTBOUND: the other listeners and the outbound clusters, GATEWAY:
a gateway proxy), ``match.listener.portNumber`` and ``name``, ``match.cluster.name``, ``service`` and
``portNumber`` select what is patched. An EnvoyFilter applies to the proxies of its namespace whose labels
match its ``workloadSelector`` (all of them without one); one in the root namespace applies mesh-wide.
Filters apply in order of ``priority``, then namespace (root first), then name.

Patched messages are copies: the outbound half of a proxy is shared between proxies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.common.wire import CLUSTER, LISTENER
from vmagent.controlplane.config.envoyfilter import HCM, SUPPORTED, parse_value
from vmagent.controlplane.config.hosts import labels_match
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo


def filters_for(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> list[ConfigObject]:
    found = []
    for ns in dict.fromkeys((mesh.root_namespace, proxy.namespace)):
        for obj in configs.list("EnvoyFilter", ns):
            sel = obj.spec.get("workloadSelector")
            labels = sel.get("labels") if isinstance(sel, Mapping) else None
            if isinstance(labels, Mapping) and not labels_match(labels, proxy.labels):
                continue
            found.append(obj)
    return sorted(
        found, key=lambda o: (int(o.spec.get("priority") or 0), o.namespace != mesh.root_namespace, o.name)
    )


def _context_ok(context: str, proxy: ProxyInfo, inbound: bool) -> bool:
    if context in ("", "ANY"):
        return True
    if context == "GATEWAY":
        return proxy.mode == "gateway"
    if proxy.mode == "gateway":
        return False
    return inbound if context == "SIDECAR_INBOUND" else not inbound


def _listener_ok(match: Mapping[str, Any], lst: listener_pb2.Listener, proxy: ProxyInfo) -> bool:
    inbound = lst.name == names.VIRTUAL_INBOUND
    if not _context_ok(str(match.get("context") or ""), proxy, inbound):
        return False
    lm = match.get("listener") or {}
    port = lm.get("portNumber")
    if port and lst.address.socket_address.port_value != int(port):
        return False
    return not (lm.get("name") and lm.get("name") != lst.name)


def _cluster_ok(match: Mapping[str, Any], c: cluster_pb2.Cluster, proxy: ProxyInfo) -> bool:
    inbound = c.name.startswith("inbound|")
    if not _context_ok(str(match.get("context") or ""), proxy, inbound):
        return False
    cm = match.get("cluster") or {}
    parts = c.name.split("|")
    if cm.get("name") and cm.get("name") != c.name:
        return False
    if cm.get("service") and (len(parts) != 4 or parts[3] != cm.get("service")):
        return False
    return not (cm.get("portNumber") and (len(parts) != 4 or parts[1] != str(cm.get("portNumber"))))


def _sub_filter(match: Mapping[str, Any]) -> str:
    lm = match.get("listener") or {}
    fc = lm.get("filterChain") or {}
    flt = fc.get("filter") or {}
    sub = flt.get("subFilter") or {}
    return str(sub.get("name") or "")


def _insert_http_filter(lst: listener_pb2.Listener, op: str, anchor: str, new: hcm.HttpFilter) -> bool:
    changed = False
    for chain in [
        *lst.filter_chains,
        *([lst.default_filter_chain] if lst.HasField("default_filter_chain") else []),
    ]:
        for nf in chain.filters:
            if nf.name != HCM or not nf.HasField("typed_config"):
                continue
            manager = hcm.HttpConnectionManager()
            nf.typed_config.Unpack(manager)
            current = list(manager.http_filters)
            if op == "INSERT_FIRST":
                index = 0
            else:
                hits = [i for i, f in enumerate(current) if f.name == anchor]
                if not hits:
                    continue
                index = hits[0] if op == "INSERT_BEFORE" else hits[0] + 1
            current.insert(index, new)
            del manager.http_filters[:]
            manager.http_filters.extend(current)
            nf.typed_config.Pack(manager)
            changed = True
    return changed


def apply_envoy_filters(
    out: dict[str, dict[str, Any]], proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> None:
    """Patch ``out`` (a proxy's resources) in place with the EnvoyFilters that select ``proxy``."""
    for ef in filters_for(proxy, configs, mesh):
        patches: Sequence[Any] = ef.spec.get("configPatches") or []
        for cp in patches:
            apply_to = str(cp.get("applyTo") or "")
            match = cp.get("match") or {}
            patch = cp.get("patch") or {}
            op = str(patch.get("operation") or "")
            if (apply_to, op) not in SUPPORTED:
                continue  # refused by validation
            value = parse_value(apply_to, patch.get("value") or {})
            if apply_to == "CLUSTER":
                for name, c in list(out[CLUSTER].items()):
                    if _cluster_ok(match, c, proxy):
                        copy = cluster_pb2.Cluster()
                        copy.CopyFrom(c)
                        copy.MergeFrom(value)
                        copy.name = name
                        out[CLUSTER][name] = copy
                continue
            for name, lst in list(out[LISTENER].items()):
                if not _listener_ok(match, lst, proxy):
                    continue
                copy = listener_pb2.Listener()
                copy.CopyFrom(lst)
                if apply_to == "LISTENER":
                    copy.MergeFrom(value)
                    copy.name = name
                elif not _insert_http_filter(copy, op, _sub_filter(match), value):
                    continue
                out[LISTENER][name] = copy
