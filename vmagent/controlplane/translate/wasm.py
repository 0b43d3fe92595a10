"""Istio WasmPlugins as Envoy Wasm HTTP filters, delivered to the proxy over ECDS.

Which plugins apply to a proxy follows Istio: those of the root namespace (mesh-wide) and of the proxy's
namespace whose ``selector.matchLabels`` match the workload (all of them without a selector); plugins
bound with ``targetRef(s)`` apply to no VM workload, as for the other policy kinds. A plugin's ``match``
list selects HTTP connection managers by direction (``SERVER``: the inbound chains of ``virtualInbound``;
``CLIENT``: outbound and gateway listeners; ``UNDEFINED``/``CLIENT_AND_SERVER``: both) and by port (the
inbound chain's destination port, or the listener's port).

Within an HTTP connection manager the filters are placed as Istio places them: ``AUTHN`` plugins before
the authentication filter (jwt_authn), ``AUTHZ`` plugins after it and before RBAC, then ``STATS`` and
then ``UNSPECIFIED_PHASE`` plugins after RBAC and before vmagent's other filters (CORS, fault, router).
Within a phase, plugins run by ``priority`` (highest first), then namespace and name.

Each plugin is one ``TypedExtensionConfig`` resource named ``NAMESPACE.NAME`` (Istio's naming) holding
the ``envoy.filters.http.wasm`` configuration with the module's bytes inline (V8 runtime, the one that
works in the bundled Envoy); the HTTP filters only reference it (``config_discovery``), so the bytes
cross the wire once per proxy whatever the number of listeners. When the control plane cannot read the
module (deleted or changed since validation), a ``FAIL_OPEN`` plugin is left out and any other gets an
RBAC filter denying every request in its place, so a fail-closed plugin never silently disappears.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import config_source_pb2, extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2

from vmagent.common.wire import EXTENSION_CONFIG, LISTENER
from vmagent.controlplane.config.wasmplugin import module_path, read_module
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate import authn, authz, filters, names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.protos import ads, typed
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import applicable

log = logging.getLogger(__name__)

KIND = "WasmPlugin"
RUNTIME = "envoy.wasm.runtime.v8"
WASM_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
PHASES = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
SERVER, CLIENT = "SERVER", "CLIENT"
_FAILURE = {
    "FAIL_CLOSE": wasm_pb2.FailurePolicy.FAIL_CLOSED,
    "FAIL_OPEN": wasm_pb2.FailurePolicy.FAIL_OPEN,
    "FAIL_RELOAD": wasm_pb2.FailurePolicy.FAIL_RELOAD,
}


def filter_name(obj: ConfigObject) -> str:
    """Istio's name of a plugin's filter and extension config: ``NAMESPACE.NAME``."""
    return f"{obj.namespace}.{obj.name}"


def _priority(obj: ConfigObject) -> int:
    value = obj.spec.get("priority")
    return int(value) if isinstance(value, int) else 0


def plugins_for(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> list[ConfigObject]:
    """The HTTP WasmPlugins applying to ``proxy``, by priority (highest first), namespace and name."""
    found = [p for p in applicable(KIND, proxy, configs, mesh) if p.spec.get("type") != "NETWORK"]
    return sorted(found, key=lambda o: (-_priority(o), o.namespace, o.name))


def traffic_matches(spec: Mapping[str, Any], direction: str, port: int) -> bool:
    """Whether ``spec.match`` selects a connection manager of ``direction`` (SERVER/CLIENT) on ``port``."""
    selectors: Sequence[Any] = spec.get("match") or []
    if not selectors:
        return True
    for sel in selectors:
        sel = sel if isinstance(sel, Mapping) else {}
        mode = str(sel.get("mode") or "UNDEFINED")
        if mode not in ("UNDEFINED", "CLIENT_AND_SERVER", direction):
            continue
        ports = [p.get("number") for p in sel.get("ports") or [] if isinstance(p, Mapping)]
        if not ports or port in ports:
            return True
    return False


class ModuleCache:
    """Module bytes by (path, size, mtime): the file is read again only when it changes."""

    LIMIT = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[str, int, int], bytes] = {}

    def load(self, url: str, sha256: str) -> bytes:
        """The module at ``url`` (``file://``), checked against ``sha256`` when given (raises ValueError)."""
        path = module_path(url)
        if path is None:
            raise ValueError(f"{url!r} is not a file:// url")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ValueError(f"cannot read the module {path}: {exc.strerror or exc}") from exc
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            data = self._data.get(key)
        if data is None:
            data = read_module(path)
            with self._lock:
                while len(self._data) >= self.LIMIT:
                    self._data.pop(next(iter(self._data)))
                self._data[key] = data
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"the module {path} no longer matches sha256 {sha256}")
        return data


MODULES = ModuleCache()


def wasm_config(obj: ConfigObject, module: bytes) -> http_wasm.Wasm:
    """The ``envoy.filters.http.wasm`` configuration of ``obj`` running ``module``."""
    spec = obj.spec
    plugin = wasm_pb2.PluginConfig(
        name=filter_name(obj),
        root_id=str(spec.get("pluginName") or ""),
        failure_policy=_FAILURE[str(spec.get("failStrategy") or "FAIL_CLOSE")],
    )
    vm = plugin.vm_config
    vm.runtime = RUNTIME
    vm.code.local.inline_bytes = module
    env: Sequence[Any] = (spec.get("vmConfig") or {}).get("env") or []
    for var in env:
        if var.get("valueFrom") == "HOST":
            vm.environment_variables.host_env_keys.append(str(var["name"]))
        else:
            vm.environment_variables.key_values[str(var["name"])] = str(var.get("value") or "")
    config = spec.get("pluginConfig")
    if isinstance(config, Mapping) and config:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        plugin.configuration.Pack(wrappers_pb2.StringValue(value=text))
    return http_wasm.Wasm(config=plugin)


def extension_config(obj: ConfigObject, module: bytes) -> extension_pb2.TypedExtensionConfig:
    """The ECDS resource of ``obj``."""
    return extension_pb2.TypedExtensionConfig(
        name=filter_name(obj), typed_config=typed(wasm_config(obj, module))
    )


def discovered_filter(name: str) -> hcm.HttpFilter:
    """An HTTP filter whose configuration comes from the ECDS resource ``name``."""
    return hcm.HttpFilter(
        name=name,
        config_discovery=config_source_pb2.ExtensionConfigSource(
            config_source=ads(), type_urls=[WASM_TYPE_URL]
        ),
    )


def deny_all_filter(name: str) -> hcm.HttpFilter:
    """An RBAC filter allowing nothing: what a fail-closed plugin becomes when its module is unreadable."""
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    return hcm.HttpFilter(name=name, typed_config=typed(http_rbac.RBAC(rules=rules)))


@dataclass(frozen=True)
class _Placed:
    obj: ConfigObject
    http_filter: hcm.HttpFilter

    @property
    def phase(self) -> str:
        phase = str(self.obj.spec.get("phase") or "UNSPECIFIED_PHASE")
        return phase if phase in PHASES else "UNSPECIFIED_PHASE"


def ordered_filters(current: Sequence[hcm.HttpFilter], plugins: Sequence[_Placed]) -> list[hcm.HttpFilter]:
    """``current`` (vmagent's filters of one connection manager) with ``plugins`` placed by phase."""
    by_phase = {p: [x.http_filter for x in plugins if x.phase == p] for p in PHASES}
    authn_filters = [f for f in current if f.name == authn.FILTER_NAME]
    authz_filters = [f for f in current if f.name == authz.HTTP_FILTER]
    rest = [f for f in current if f.name not in (authn.FILTER_NAME, authz.HTTP_FILTER)]
    return [
        *by_phase["AUTHN"],
        *authn_filters,
        *by_phase["AUTHZ"],
        *authz_filters,
        *by_phase["STATS"],
        *by_phase["UNSPECIFIED_PHASE"],
        *rest,
    ]


def _with_plugins(lst: listener_pb2.Listener, plugins: Sequence[_Placed], gateway: bool) -> bool:
    """Add the matching ``plugins`` to every HTTP connection manager of ``lst`` (in place)."""
    inbound = lst.name == names.VIRTUAL_INBOUND and not gateway
    direction = SERVER if inbound else CLIENT
    changed = False
    chains = [
        *lst.filter_chains,
        *([lst.default_filter_chain] if lst.HasField("default_filter_chain") else []),
    ]
    for chain in chains:
        port = lst.address.socket_address.port_value
        if inbound:
            dest = chain.filter_chain_match
            port = dest.destination_port.value if dest.HasField("destination_port") else 0
        selected = [p for p in plugins if traffic_matches(p.obj.spec, direction, port)]
        if not selected:
            continue
        for nf in chain.filters:
            if nf.name != filters.HCM or not nf.HasField("typed_config"):
                continue
            manager = hcm.HttpConnectionManager()
            nf.typed_config.Unpack(manager)
            placed = ordered_filters(list(manager.http_filters), selected)
            del manager.http_filters[:]
            manager.http_filters.extend(placed)
            nf.typed_config.Pack(manager)
            changed = True
    return changed


def apply_wasm_plugins(
    out: dict[str, dict[str, Any]], proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> None:
    """Add the WasmPlugins selecting ``proxy`` to ``out`` (its resources, changed in place): the ECDS
    resources and the filters in the listeners' HTTP connection managers (copies; the originals may be
    shared with other proxies)."""
    plugins = plugins_for(proxy, configs, mesh)
    if not plugins:
        return
    placed: list[_Placed] = []
    for obj in plugins:
        name = filter_name(obj)
        try:
            module = MODULES.load(str(obj.spec.get("url") or ""), str(obj.spec.get("sha256") or ""))
        except ValueError as exc:
            strategy = obj.spec.get("failStrategy") or "FAIL_CLOSE"
            log.error("WasmPlugin %s/%s: %s (%s)", obj.namespace, obj.name, exc, strategy)
            if strategy != "FAIL_OPEN":
                placed.append(_Placed(obj, deny_all_filter(name)))
            continue
        out.setdefault(EXTENSION_CONFIG, {})[name] = extension_config(obj, module)
        placed.append(_Placed(obj, discovered_filter(name)))
    for lname, lst in list(out[LISTENER].items()):
        copy = listener_pb2.Listener()
        copy.CopyFrom(lst)
        if _with_plugins(copy, placed, proxy.mode == "gateway"):
            out[LISTENER][lname] = copy
