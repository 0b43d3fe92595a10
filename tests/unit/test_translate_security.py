"""PeerAuthentication precedence and what it does to the inbound listener."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.model import ConfigObject, Port
from vmagent.controlplane.translate import (
    ConfigIndex,
    MeshOptions,
    ProxyInfo,
    build_proxy_resources,
    effective_mtls,
)
from vmagent.controlplane.translate.security import InboundSecurity, inbound_security
from vmagent.controlplane.xds.snapshot import LISTENER

MESH = MeshOptions()
PROXY = ProxyInfo(
    namespace="demo",
    labels={"app": "api"},
    ip_addresses=("10.0.0.3",),
    ports=(Port(8080, "HTTP", "http"), Port(5432, "TCP", "tcp")),
)


def pa(
    ns: str, name: str, mode: str | None = None, selector: dict[str, str] | None = None, **extra: Any
) -> ConfigObject:
    spec: dict[str, Any] = dict(extra)
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return ConfigObject("PeerAuthentication", "security.istio.io/v1", ns, name, spec)


def mode(*objs: ConfigObject, port: int = 8080) -> str:
    return effective_mtls(PROXY, ConfigIndex(objs), MESH).for_port(port)


def test_default_is_permissive() -> None:
    assert mode() == "PERMISSIVE"


def test_mesh_wide_applies_from_root_namespace_only() -> None:
    assert mode(pa("istio-system", "default", "STRICT")) == "STRICT"
    assert mode(pa("elsewhere", "default", "STRICT")) == "PERMISSIVE"
    custom = MeshOptions(root_namespace="mesh-root")
    assert effective_mtls(PROXY, ConfigIndex([pa("mesh-root", "d", "STRICT")]), custom).mode == "STRICT"


def test_namespace_overrides_mesh_and_workload_overrides_namespace() -> None:
    mesh_strict = pa("istio-system", "default", "STRICT")
    ns_disable = pa("demo", "default", "DISABLE")
    wl_permissive = pa("demo", "api", "PERMISSIVE", {"app": "api"})
    assert mode(mesh_strict, ns_disable) == "DISABLE"
    assert mode(mesh_strict, ns_disable, wl_permissive) == "PERMISSIVE"


def test_selector_must_match_the_workload() -> None:
    assert mode(pa("demo", "other", "STRICT", {"app": "web"})) == "PERMISSIVE"
    assert mode(pa("demo", "mine", "STRICT", {"app": "api"})) == "STRICT"


def test_unset_inherits_from_the_level_above() -> None:
    assert mode(pa("demo", "default", "STRICT"), pa("demo", "api", "UNSET", {"app": "api"})) == "STRICT"
    assert mode(pa("istio-system", "default", "STRICT"), pa("demo", "default")) == "STRICT"


def test_port_level_overrides_workload_mode() -> None:
    wl = pa(
        "demo",
        "api",
        "STRICT",
        {"app": "api"},
        portLevelMtls={8080: {"mode": "DISABLE"}, "5432": {"mode": "UNSET"}},
    )
    assert mode(wl, port=8080) == "DISABLE"
    assert mode(wl, port=5432) == "STRICT"  # UNSET inherits the workload's mode
    assert mode(wl, port=9999) == "STRICT"


def _inbound_chains(*objs: ConfigObject) -> dict[str, dict[str, Any]]:
    res = build_proxy_resources(PROXY, [], ConfigIndex(objs), MESH)
    lst = res[LISTENER]["virtualInbound"]
    out = {}
    for c in lst.filter_chains:
        m = c.filter_chain_match
        out[c.name] = {
            "port": m.destination_port.value,
            "transport": m.transport_protocol,
            "tls": c.HasField("transport_socket"),
        }
    return out


def test_inbound_chains_follow_the_mode() -> None:
    permissive = _inbound_chains()
    assert permissive["inbound|8080||/mtls"] == {"port": 8080, "transport": "tls", "tls": True}
    assert permissive["inbound|8080||/plaintext"] == {"port": 8080, "transport": "", "tls": False}
    strict = _inbound_chains(pa("demo", "default", "STRICT"))
    assert "inbound|8080||/plaintext" not in strict and "inbound|5432||/plaintext" not in strict
    assert "InboundPassthroughClusterIpv4/plaintext" not in strict
    assert strict["inbound|8080||/mtls"]["tls"]
    disabled = _inbound_chains(pa("demo", "default", "DISABLE"))
    assert not any(c["tls"] for c in disabled.values())


def test_strict_port_refuses_plaintext_instead_of_passing_it_through() -> None:
    """A STRICT port must not fall back to a passthrough chain: the listener has no default chain."""
    res = build_proxy_resources(PROXY, [], ConfigIndex([pa("demo", "default", "STRICT")]), MESH)
    assert not res[LISTENER]["virtualInbound"].HasField("default_filter_chain")


def test_inbound_http_sets_xfcc_like_istio() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    res = build_proxy_resources(PROXY, [], ConfigIndex(), MESH)
    chain = next(c for c in res[LISTENER]["virtualInbound"].filter_chains if c.name == "inbound|8080||/mtls")
    cfg = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(cfg)
    assert cfg.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET
    details = cfg.set_current_client_cert_details
    assert details.subject.value and details.uri and details.dns and not details.cert
    assert cfg.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|8080||"


def test_root_namespace_selector_policy_is_not_mesh_wide() -> None:
    """A PeerAuthentication with a selector in the root namespace selects workloads of that namespace only."""
    assert mode(pa("istio-system", "api", "STRICT", {"app": "api"})) == "PERMISSIVE"


def test_port_level_needs_a_workload_policy() -> None:
    """``portLevelMtls`` of a namespace-wide policy is not applied (Istio requires a selector)."""
    assert mode(pa("demo", "default", "STRICT", portLevelMtls={8080: {"mode": "DISABLE"}})) == "STRICT"


def test_inbound_security_carries_the_authorization_and_authentication_policies() -> None:
    ap_ns = ConfigObject("AuthorizationPolicy", "security.istio.io/v1", "demo", "a", {"rules": [{}]})
    ap_other = ConfigObject(
        "AuthorizationPolicy",
        "security.istio.io/v1",
        "demo",
        "b",
        {"selector": {"matchLabels": {"app": "web"}}},
    )
    ap_root = ConfigObject("AuthorizationPolicy", "security.istio.io/v1", "istio-system", "r", {})
    sec = inbound_security(PROXY, ConfigIndex([ap_ns, ap_other, ap_root]), MESH)
    assert isinstance(sec, InboundSecurity)
    assert [o.name for o in sec.authorization_policies] == ["a", "r"]
