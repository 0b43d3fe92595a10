"""WasmPlugin translation: ECDS resources and filter placement with Istio's phase/priority/match semantics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2

from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.translate import ConfigIndex, MeshOptions, ProxyInfo, build_proxy_resources
from vmagent.controlplane.translate.build import (
    Resources,
    build_inbound_resources,
    build_outbound_resources,
    label_keys_read,
)
from vmagent.controlplane.translate.wasm import RUNTIME, WASM_TYPE_URL
from vmagent.controlplane.xds.snapshot import EXTENSION_CONFIG, LISTENER

MODULE = b"\0asm\x01\0\0\0"
API = ProxyInfo(
    namespace="demo",
    labels={"app": "api"},
    ip_addresses=("10.0.0.2",),
    ports=(Port(8080, "HTTP", "http"), Port(9090, "HTTP", "http-admin")),
)
WEB = ProxyInfo(namespace="demo", labels={"app": "web"}, ip_addresses=("10.0.0.3",))
SERVICES = [
    Service(
        "ratings.demo.svc.cluster.local",
        "demo",
        (Port(9080, "HTTP", "http"),),
        endpoints=(Endpoint("10.0.0.9", ports={"http": 9080}),),
    )
]
JWT = "envoy.filters.http.jwt_authn"
RBAC = "envoy.filters.http.rbac"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "m.wasm"
    path.write_bytes(MODULE)
    return path


def plugin(module: Path, name: str = "p", namespace: str = "demo", **spec: Any) -> ConfigObject:
    body = {"selector": {"matchLabels": {"app": "api"}}, "url": f"file://{module}", **spec}
    return ConfigObject("WasmPlugin", "extensions.istio.io/v1alpha1", namespace, name, body)


def security() -> list[ConfigObject]:
    ra = ConfigObject(
        "RequestAuthentication",
        "security.istio.io/v1",
        "demo",
        "jwt",
        {"jwtRules": [{"issuer": "i", "jwks": '{"keys": []}'}]},
    )
    ap = ConfigObject("AuthorizationPolicy", "security.istio.io/v1", "demo", "allow", {"rules": [{}]})
    return [ra, ap]


def build(proxy: ProxyInfo, configs: list[ConfigObject]) -> Resources:
    return build_proxy_resources(proxy, SERVICES, ConfigIndex(configs), MeshOptions())


def chains(res: Resources) -> dict[str, list[tuple[int, list[str]]]]:
    """listener -> [(inbound destination port or 0, HTTP filter names)] per HTTP connection manager."""
    out: dict[str, list[tuple[int, list[str]]]] = {}
    for name, lst in res[LISTENER].items():
        for chain in [*lst.filter_chains, lst.default_filter_chain]:
            for nf in chain.filters:
                if nf.name == HCM:
                    m = hcm.HttpConnectionManager()
                    nf.typed_config.Unpack(m)
                    port = chain.filter_chain_match.destination_port.value
                    out.setdefault(name, []).append((port, [f.name for f in m.http_filters]))
    return out


def inbound(res: Resources, port: int = 8080) -> list[list[str]]:
    return [f for p, f in chains(res)["virtualInbound"] if p == port]


def outbound(res: Resources) -> list[list[str]]:
    return [f for n, cs in chains(res).items() if n != "virtualInbound" for _, f in cs]


def test_plugin_becomes_an_ecds_resource_with_the_module_inline_and_its_config(module: Path) -> None:
    obj = plugin(
        module,
        pluginConfig={"value": "hello", "a": 1},
        pluginName="root",
        failStrategy="FAIL_OPEN",
        vmConfig={"env": [{"name": "H", "valueFrom": "HOST"}, {"name": "K", "value": "v"}]},
    )
    res = build(API, [obj])
    ext = res[EXTENSION_CONFIG]["demo.p"]
    assert isinstance(ext, extension_pb2.TypedExtensionConfig)
    cfg = http_wasm.Wasm()
    assert ext.typed_config.Unpack(cfg)
    assert cfg.config.name == "demo.p"
    assert cfg.config.root_id == "root"
    assert cfg.config.failure_policy == wasm_pb2.FailurePolicy.FAIL_OPEN
    assert cfg.config.vm_config.runtime == RUNTIME
    assert cfg.config.vm_config.code.local.inline_bytes == MODULE
    assert list(cfg.config.vm_config.environment_variables.host_env_keys) == ["H"]
    assert dict(cfg.config.vm_config.environment_variables.key_values) == {"K": "v"}
    text = wrappers_pb2.StringValue()
    assert cfg.config.configuration.Unpack(text)
    assert json.loads(text.value) == {"value": "hello", "a": 1}


def test_fail_close_is_the_default(module: Path) -> None:
    cfg = http_wasm.Wasm()
    build(API, [plugin(module)])[EXTENSION_CONFIG]["demo.p"].typed_config.Unpack(cfg)
    assert cfg.config.failure_policy == wasm_pb2.FailurePolicy.FAIL_CLOSED
    assert not cfg.config.HasField("configuration")


def test_filters_reference_the_ecds_resource(module: Path) -> None:
    res = build(API, [plugin(module)])
    lst = res[LISTENER]["virtualInbound"]
    m = hcm.HttpConnectionManager()
    next(nf for c in lst.filter_chains for nf in c.filters if nf.name == HCM).typed_config.Unpack(m)
    f = next(f for f in m.http_filters if f.name == "demo.p")
    assert f.config_discovery.config_source.HasField("ads")
    assert list(f.config_discovery.type_urls) == [WASM_TYPE_URL]
    assert not f.HasField("typed_config")


def test_unselected_workload_gets_nothing(module: Path) -> None:
    res = build(WEB, [plugin(module)])
    assert EXTENSION_CONFIG not in res
    assert all("demo.p" not in f for cs in chains(res).values() for _, f in cs)


def test_no_selector_applies_to_the_namespace_and_root_namespace_mesh_wide(module: Path) -> None:
    ns_wide = plugin(module, name="ns")
    del ns_wide.spec["selector"]
    mesh_wide = plugin(module, name="mesh", namespace="istio-system")
    del mesh_wide.spec["selector"]
    other = plugin(module, name="other", namespace="elsewhere")
    res = build(WEB, [ns_wide, mesh_wide, other])
    assert set(res[EXTENSION_CONFIG]) == {"demo.ns", "istio-system.mesh"}


def test_target_ref_bound_plugin_applies_to_no_vm_workload(module: Path) -> None:
    obj = plugin(module)
    del obj.spec["selector"]
    obj.spec["targetRefs"] = [{"kind": "Service", "name": "api"}]
    assert EXTENSION_CONFIG not in build(API, [obj])


def test_phases_placed_around_authn_and_authz_as_istio(module: Path) -> None:
    configs = [
        *security(),
        plugin(module, "unspecified"),
        plugin(module, "stats", phase="STATS"),
        plugin(module, "authz", phase="AUTHZ"),
        plugin(module, "authn", phase="AUTHN"),
    ]
    res = build(API, configs)
    expected = ["demo.authn", JWT, "demo.authz", RBAC, "demo.stats", "demo.unspecified", ROUTER]
    assert inbound(res) and all(f == expected for f in inbound(res))
    out = outbound(res)
    assert out and all(
        f == ["demo.authn", "demo.authz", "demo.stats", "demo.unspecified", "envoy.filters.http.cors",
              "envoy.filters.http.fault", ROUTER]
        for f in out
    )  # fmt: skip


def test_priority_orders_a_phase_highest_first_then_namespace_and_name(module: Path) -> None:
    configs = [
        plugin(module, "b"),
        plugin(module, "a"),
        plugin(module, "low", priority=-5),
        plugin(module, "high", priority=100),
        plugin(module, "root", namespace="istio-system", priority=0),
    ]
    [first, *_] = inbound(build(API, configs))
    assert first == ["demo.high", "demo.a", "demo.b", "istio-system.root", "demo.low", ROUTER]


def test_match_mode_server_is_inbound_only_client_outbound_only(module: Path) -> None:
    server = build(API, [plugin(module, match=[{"mode": "SERVER"}])])
    assert all("demo.p" in f for f in inbound(server))
    assert all("demo.p" not in f for f in outbound(server))
    client = build(API, [plugin(module, match=[{"mode": "CLIENT"}])])
    assert all("demo.p" not in f for f in inbound(client))
    assert outbound(client) and all("demo.p" in f for f in outbound(client))
    both = build(API, [plugin(module, match=[{"mode": "CLIENT_AND_SERVER"}])])
    assert all("demo.p" in f for f in [*inbound(both), *outbound(both)])


def test_match_ports_select_the_inbound_port(module: Path) -> None:
    res = build(API, [plugin(module, match=[{"mode": "SERVER", "ports": [{"number": 9090}]}])])
    assert inbound(res, 9090) and all("demo.p" in f for f in inbound(res, 9090))
    assert inbound(res, 8080) and all("demo.p" not in f for f in inbound(res, 8080))


def test_match_ports_select_the_outbound_listener_port(module: Path) -> None:
    res = build(API, [plugin(module, match=[{"ports": [{"number": 9080}]}])])
    by_listener = chains(res)
    assert all("demo.p" in f for _, f in by_listener["0.0.0.0_9080"])
    assert all("demo.p" not in f for _, f in by_listener["virtualInbound"])


def test_unreadable_module_fail_close_denies_and_fail_open_is_left_out(module: Path) -> None:
    closed = plugin(module, "closed", sha256="0" * 64)
    opened = plugin(module, "opened", sha256="0" * 64, failStrategy="FAIL_OPEN")
    res = build(API, [closed, opened])
    assert EXTENSION_CONFIG not in res
    [first, *_] = inbound(res)
    assert first == ["demo.closed", ROUTER]
    lst = res[LISTENER]["virtualInbound"]
    m = hcm.HttpConnectionManager()
    next(nf for c in lst.filter_chains for nf in c.filters if nf.name == HCM).typed_config.Unpack(m)
    rbac = http_rbac.RBAC()
    assert m.http_filters[0].typed_config.Unpack(rbac)
    assert not rbac.rules.policies  # ALLOW with no policy: every request is denied


def test_module_is_read_again_when_the_file_changes(module: Path) -> None:
    sha = hashlib.sha256(MODULE).hexdigest()
    assert "demo.p" in build(API, [plugin(module, sha256=sha)])[EXTENSION_CONFIG]
    changed = MODULE + b"\0"
    module.write_bytes(changed)
    res = build(API, [plugin(module, sha256=hashlib.sha256(changed).hexdigest())])
    cfg = http_wasm.Wasm()
    res[EXTENSION_CONFIG]["demo.p"].typed_config.Unpack(cfg)
    assert cfg.config.vm_config.code.local.inline_bytes == changed


def test_plugins_do_not_leak_into_shared_outbound_messages(module: Path) -> None:
    index = ConfigIndex([plugin(module)])
    shared = build_outbound_resources(API, SERVICES, index, MeshOptions())
    build_inbound_resources(API, shared, index, MeshOptions())
    web = build_inbound_resources(WEB, shared, index, MeshOptions())
    assert all("demo.p" not in f for cs in chains(web).values() for _, f in cs)


def test_selector_labels_are_read_for_sharing(module: Path) -> None:
    assert "app" in label_keys_read(ConfigIndex([plugin(module)]))


def test_gateway_listeners_count_as_client_traffic(module: Path) -> None:
    from tests.unit.test_translate_gateway import GATEWAY, GW_PROXY
    from tests.unit.test_translate_gateway import build as build_gateway

    spec = f"""
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: edge-plugin, namespace: edge}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  url: file://{module}
  match: [{{mode: CLIENT, ports: [{{number: 8080}}]}}]
"""
    res = build_gateway(GATEWAY + spec, GW_PROXY)
    by_listener = chains(res)
    assert by_listener["0.0.0.0_8080"] and all(
        f[0] == "edge.edge-plugin" for _, f in by_listener["0.0.0.0_8080"]
    )
    assert all("edge.edge-plugin" not in f for _, f in by_listener["0.0.0.0_8443"])
    server_only = spec.replace("mode: CLIENT", "mode: SERVER")
    assert EXTENSION_CONFIG in build_gateway(GATEWAY + server_only, GW_PROXY)
    assert all(
        "edge.edge-plugin" not in f
        for cs in chains(build_gateway(GATEWAY + server_only)).values()
        for _, f in cs
    )
