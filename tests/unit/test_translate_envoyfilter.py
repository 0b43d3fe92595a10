"""EnvoyFilter: a Lua HTTP filter inserted before the router for `app: reviews`, and MERGE on clusters."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.controlplane.config.validate import validate_document
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.translate import ConfigIndex, MeshOptions, ProxyInfo, build_proxy_resources
from vmagent.controlplane.translate.build import Resources
from vmagent.controlplane.xds.snapshot import CLUSTER, LISTENER

LUA = "function envoy_on_response(h) h:headers():add('x-lua', 'reviews') end"
REVIEWS = ProxyInfo(
    namespace="demo",
    labels={"app": "reviews"},
    ip_addresses=("10.0.0.2",),
    ports=(Port(9080, "HTTP", "http"),),
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


def lua_filter(op: str = "INSERT_BEFORE", context: str = "SIDECAR_OUTBOUND") -> dict[str, Any]:
    return {
        "workloadSelector": {"labels": {"app": "reviews"}},
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": context,
                    "listener": {
                        "filterChain": {
                            "filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.router"},
                            }
                        }
                    },
                },
                "patch": {
                    "operation": op,
                    "value": {
                        "name": "envoy.lua",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                            "inlineCode": LUA,
                        },
                    },
                },
            }
        ],
    }


def ef(spec: dict[str, Any], name: str = "lua") -> ConfigObject:
    return ConfigObject("EnvoyFilter", "networking.istio.io/v1alpha3", "demo", name, spec)


def build(proxy: ProxyInfo, configs: list[ConfigObject]) -> Resources:
    return build_proxy_resources(proxy, SERVICES, ConfigIndex(configs), MeshOptions())


def http_filter_names(res: Resources) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for name, lst in res[LISTENER].items():
        for chain in [*lst.filter_chains, lst.default_filter_chain]:
            for nf in chain.filters:
                if nf.name == "envoy.filters.network.http_connection_manager":
                    m = hcm.HttpConnectionManager()
                    nf.typed_config.Unpack(m)
                    out.setdefault(name, []).append([f.name for f in m.http_filters])
    return out


def test_lua_inserted_before_router_only_for_selected_workload_and_context() -> None:
    patched = http_filter_names(build(REVIEWS, [ef(lua_filter())]))
    chains = [c for name, cs in patched.items() if name != "virtualInbound" for c in cs]
    assert chains and all(c[-2:] == ["envoy.lua", "envoy.filters.http.router"] for c in chains)
    assert all("envoy.lua" not in c for c in patched.get("virtualInbound", []))
    other = http_filter_names(build(WEB, [ef(lua_filter())]))
    assert all("envoy.lua" not in c for cs in other.values() for c in cs)


def test_insert_after_and_inbound_context() -> None:
    patched = http_filter_names(build(REVIEWS, [ef(lua_filter("INSERT_FIRST", "SIDECAR_INBOUND"))]))
    inbound = patched["virtualInbound"]
    assert inbound and all(c[0] == "envoy.lua" for c in inbound)
    assert all("envoy.lua" not in c for n, cs in patched.items() if n != "virtualInbound" for c in cs)


def test_patching_does_not_leak_into_shared_outbound_messages() -> None:
    configs = [ef(lua_filter())]
    index = ConfigIndex(configs)
    from vmagent.controlplane.translate.build import build_inbound_resources, build_outbound_resources

    outbound = build_outbound_resources(REVIEWS, SERVICES, index, MeshOptions())
    build_inbound_resources(REVIEWS, outbound, index, MeshOptions())
    web = build_inbound_resources(WEB, outbound, index, MeshOptions())
    assert all("envoy.lua" not in c for cs in http_filter_names(web).values() for c in cs)


def test_cluster_merge_by_service() -> None:
    spec = {
        "configPatches": [
            {
                "applyTo": "CLUSTER",
                "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "cluster": {"service": "ratings.demo.svc.cluster.local"},
                },
                "patch": {"operation": "MERGE", "value": {"connect_timeout": "7s"}},
            }
        ]
    }
    res = build(WEB, [ef(spec)])
    c = res[CLUSTER]["outbound|9080||ratings.demo.svc.cluster.local"]
    assert c.connect_timeout.seconds == 7
    assert all(other.connect_timeout.seconds != 7 for n, other in res[CLUSTER].items() if "ratings" not in n)


def _validate(spec: dict[str, Any]) -> list[str]:
    doc = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "e"},
        "spec": spec,
    }
    return [f"{e.path}: {e.message}" for e in validate_document(doc, "e.yaml", 1).errors]


def test_envoyfilter_validation_accepts_the_lua_example_and_refuses_the_rest() -> None:
    assert _validate(lua_filter()) == []
    spec = lua_filter("REPLACE")
    assert _validate(spec) == [
        "spec.configPatches[0].patch.operation: applyTo HTTP_FILTER with operation REPLACE is not supported by "
        "vmagent: refused (vmagent implements HTTP_FILTER inserts and CLUSTER/LISTENER merges matched by context, "
        "port and name)"
    ]
    bad = lua_filter()
    bad["configPatches"][0]["patch"]["value"]["typed_config"]["inlineCodee"] = "x"
    (msg,) = _validate(bad)
    assert msg.startswith("spec.configPatches[0].patch.value: not a valid Envoy HTTP_FILTER configuration")
