"""RequestAuthentication to jwt_authn, which policies apply to a workload, and the inbound filter order."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.controlplane.model import ConfigObject, Port
from vmagent.controlplane.translate import ConfigIndex, MeshOptions, ProxyInfo, authn, build_proxy_resources
from vmagent.controlplane.translate.security import inbound_security
from vmagent.controlplane.xds.snapshot import LISTENER

MESH = MeshOptions()
PROXY = ProxyInfo(
    namespace="demo",
    labels={"app": "api"},
    ip_addresses=("10.0.0.3",),
    ports=(Port(8080, "HTTP", "http"), Port(5432, "TCP", "tcp")),
)


def ra(
    ns: str, name: str, rules: list[dict[str, Any]], selector: dict[str, str] | None = None
) -> ConfigObject:
    spec: dict[str, Any] = {"jwtRules": rules}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return ConfigObject("RequestAuthentication", "security.istio.io/v1", ns, name, spec)


RULE = {"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/keys"}


def test_applicable_policies_root_namespace_namespace_and_selector() -> None:
    objs = [
        ra("istio-system", "mesh", [RULE]),
        ra("istio-system", "root-selects-api", [RULE], {"app": "api"}),
        ra("istio-system", "root-selects-web", [RULE], {"app": "web"}),
        ra("demo", "ns", [RULE]),
        ra("demo", "mine", [RULE], {"app": "api"}),
        ra("demo", "other", [RULE], {"app": "web"}),
        ra("elsewhere", "x", [RULE]),
        ConfigObject(
            "RequestAuthentication",
            "security.istio.io/v1",
            "demo",
            "gw",
            {"targetRef": {"kind": "Gateway", "name": "g"}},
        ),
    ]
    sec = inbound_security(PROXY, ConfigIndex(objs), MESH)
    assert [(o.namespace, o.name) for o in sec.request_authentications] == [
        ("demo", "mine"),
        ("demo", "ns"),
        ("istio-system", "mesh"),
        ("istio-system", "root-selects-api"),
    ]


def test_provider_fields_and_requirement() -> None:
    rule = {
        **RULE,
        "audiences": ["orders", "web"],
        "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
        "fromParams": ["tok"],
        "forwardOriginalToken": True,
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
        "timeout": "2s",
    }
    cfg = authn.jwt_authentication([ra("demo", "a", [rule, {"issuer": "i2", "jwks": "{}"}])])
    assert cfg is not None
    p = cfg.providers["origins-0"]
    assert p.issuer == "https://idp.example.com" and list(p.audiences) == ["orders", "web"]
    assert p.from_headers[0].name == "x-jwt" and p.from_headers[0].value_prefix == "Bearer "
    assert list(p.from_params) == ["tok"] and p.forward and p.forward_payload_header == "x-payload"
    assert p.claim_to_headers[0].header_name == "x-sub" and p.claim_to_headers[0].claim_name == "sub"
    assert p.remote_jwks.http_uri.cluster == "outbound|443||idp.example.com"
    assert p.remote_jwks.http_uri.timeout.seconds == 2
    assert p.payload_in_metadata == authn.PAYLOAD_KEY
    assert cfg.providers["origins-1"].local_jwks.inline_string == "{}"
    reqs = cfg.rules[0].requires.requires_any.requirements
    assert [r.provider_name for r in reqs[:2]] == ["origins-0", "origins-1"]
    assert reqs[2].HasField("allow_missing"), "a request without a token passes; an invalid one fails"


def test_no_rules_no_filter_and_duplicates_merge() -> None:
    assert authn.jwt_filter([ra("demo", "empty", [])]) is None
    cfg = authn.jwt_authentication([ra("demo", "a", [RULE]), ra("istio-system", "b", [RULE])])
    assert cfg is not None and list(cfg.providers) == ["origins-0"]


def test_jwks_clusters_only_for_hosts_without_a_cluster() -> None:
    policies = [ra("demo", "a", [RULE, {"issuer": "x", "jwksUri": "http://keys.internal:8081/k"}])]
    existing = {"outbound|8081||keys.internal"}
    clusters = authn.jwks_clusters(policies, existing, MESH)
    assert [c.name for c in clusters] == ["outbound|443||idp.example.com"]
    c = clusters[0]
    assert (
        c.type == cluster_pb2.Cluster.STRICT_DNS and c.transport_socket.name == "envoy.transport_sockets.tls"
    )


def _http_filters(objs: list[ConfigObject]) -> list[str]:
    res = build_proxy_resources(PROXY, [], ConfigIndex(objs), MESH)
    chain = next(c for c in res[LISTENER]["virtualInbound"].filter_chains if c.name == "inbound|8080||/mtls")
    cfg = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(cfg)
    return [f.name for f in cfg.http_filters]


def test_inbound_filter_order() -> None:
    deny = ConfigObject(
        "AuthorizationPolicy", "security.istio.io/v1", "demo", "d", {"action": "DENY", "rules": [{}]}
    )
    allow = ConfigObject("AuthorizationPolicy", "security.istio.io/v1", "demo", "a", {"rules": [{}]})
    names = _http_filters([ra("demo", "j", [RULE]), deny, allow])
    assert names == [
        authn.FILTER_NAME,
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]
    assert _http_filters([]) == ["envoy.filters.http.router"]
    res = build_proxy_resources(PROXY, [], ConfigIndex([deny]), MESH)
    for chain in res[LISTENER]["virtualInbound"].filter_chains:
        if chain.name.startswith(("inbound|5432||", "InboundPassthrough")):
            assert [f.name for f in chain.filters] == [
                "envoy.filters.network.rbac",
                "envoy.filters.network.tcp_proxy",
            ]


def test_jwt_config_type() -> None:
    f = authn.jwt_filter([ra("demo", "a", [RULE])])
    assert f is not None
    cfg = jwt.JwtAuthentication()
    assert f.typed_config.Unpack(cfg) and cfg.bypass_cors_preflight
