"""AuthorizationPolicy semantics, checked by evaluating the generated RBAC filters on sample requests.

``Req`` describes a request as Envoy sees it on the inbound side; ``decide`` runs the RBAC filters the
translation produced (the subset of Envoy's matchers it uses) in order, like Envoy: an ALLOW filter
rejects what no policy matches, a DENY filter rejects what one matches, LOG only marks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2

from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate import authn, authz

TD = "cluster.local"


@dataclass
class Req:
    principal: str | None = None  # URI SAN of the client certificate (mutual TLS), None for plaintext
    ip: str = "10.0.0.9"
    port: int = 8080
    method: str = "GET"
    path: str = "/"
    host: str = "api.demo.svc.cluster.local"
    headers: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] | None = None  # verified JWT claims (jwt_authn metadata)
    sni: str = ""

    def header(self, name: str) -> str | None:
        fixed = {":method": self.method, ":path": self.path, ":authority": self.host}
        return fixed.get(name, self.headers.get(name))


def _string(m: Any, value: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    v, ic = value, m.ignore_case
    if kind == "exact":
        return bool(v.lower() == m.exact.lower() if ic else v == m.exact)
    if kind == "prefix":
        return v.lower().startswith(m.prefix.lower()) if ic else v.startswith(m.prefix)
    if kind == "suffix":
        return v.lower().endswith(m.suffix.lower()) if ic else v.endswith(m.suffix)
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, v) is not None
    raise AssertionError(kind)


def _cidr(c: Any, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(f"{c.address_prefix}/{c.prefix_len.value}")


def _header(h: Any, req: Req) -> bool:
    value = req.header(h.name)
    if h.present_match:
        ok = value is not None
    else:
        ok = value is not None and _string(h.string_match, value)
    return bool(ok != h.invert_match)


def _value(vm: Any, value: Any) -> bool:
    kind = vm.WhichOneof("match_pattern")
    if kind == "present_match":
        return value is not None
    if kind == "string_match":
        return isinstance(value, str) and _string(vm.string_match, value)
    if kind == "list_match":
        return isinstance(value, list) and any(_value(vm.list_match.one_of, v) for v in value)
    raise AssertionError(kind)


def _metadata(mm: Any, req: Req) -> bool:
    assert mm.filter == authn.FILTER_NAME
    node: Any = {authn.PAYLOAD_KEY: req.payload} if req.payload is not None else {}
    for seg in mm.path:
        node = node.get(seg.key) if isinstance(node, dict) else None
    return bool(_value(mm.value, node) != mm.invert)


def principal(p: rbac_pb2.Principal, req: Req) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "and_ids":
        return all(principal(i, req) for i in p.and_ids.ids)
    if kind == "or_ids":
        return any(principal(i, req) for i in p.or_ids.ids)
    if kind == "not_id":
        return not principal(p.not_id, req)
    if kind == "authenticated":
        if req.principal is None:
            return False
        pn = p.authenticated
        return not pn.HasField("principal_name") or _string(pn.principal_name, req.principal)
    if kind in ("direct_remote_ip", "remote_ip"):
        return _cidr(getattr(p, kind), req.ip)
    if kind == "header":
        return _header(p.header, req)
    if kind == "metadata":
        return _metadata(p.metadata, req)
    raise AssertionError(kind)


def permission(p: rbac_pb2.Permission, req: Req) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return True
    if kind == "and_rules":
        return all(permission(r, req) for r in p.and_rules.rules)
    if kind == "or_rules":
        return any(permission(r, req) for r in p.or_rules.rules)
    if kind == "not_rule":
        return not permission(p.not_rule, req)
    if kind == "header":
        return _header(p.header, req)
    if kind == "url_path":
        return _string(p.url_path.path, req.path.split("?")[0])
    if kind == "destination_port":
        return bool(p.destination_port == req.port)
    if kind == "requested_server_name":
        return _string(p.requested_server_name, req.sni)
    raise AssertionError(kind)


def decide(policies: list[ConfigObject], req: Req, http: bool = True) -> bool:
    """True when the request passes every RBAC filter generated for ``policies``."""
    for _, rules in authz.rbac_rules(policies, http=http, trust_domain=TD):
        matched = any(
            any(permission(x, req) for x in pol.permissions)
            and any(principal(x, req) for x in pol.principals)
            for pol in rules.policies.values()
        )
        if rules.action == rbac_pb2.RBAC.ALLOW and not matched:
            return False
        if rules.action == rbac_pb2.RBAC.DENY and matched:
            return False
    return True


def ap(name: str, spec: dict[str, Any], ns: str = "demo") -> ConfigObject:
    return ConfigObject("AuthorizationPolicy", "security.istio.io/v1", ns, name, spec)


WEB = "spiffe://cluster.local/ns/demo/sa/web"
OPS = "spiffe://cluster.local/ns/ops/sa/robot"


def test_no_policy_allows_everything() -> None:
    assert decide([], Req())
    assert authz.http_filters([], TD) == []


def test_allow_without_rules_denies_all_and_empty_rule_allows_all() -> None:
    nothing = ap("allow-nothing", {})
    assert not decide([nothing], Req(principal=WEB))
    assert decide([ap("all", {"rules": [{}]})], Req())
    assert decide([nothing, ap("all", {"rules": [{}]})], Req()), "one matching ALLOW policy is enough"


def test_deny_without_rules_matches_nothing_and_deny_beats_allow() -> None:
    assert decide([ap("d", {"action": "DENY"})], Req())
    policies = [
        ap("all", {"rules": [{}]}),
        ap("d", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
    ]
    assert decide(policies, Req(path="/orders"))
    assert not decide(policies, Req(path="/admin/users"))


def test_audit_never_decides() -> None:
    assert decide([ap("a", {"action": "AUDIT", "rules": [{}]})], Req())
    assert authz.rbac_rules([ap("a", {"action": "AUDIT", "rules": [{}]})], True, TD)[0][1].action == (
        rbac_pb2.RBAC.LOG
    )


def test_custom_fails_closed_as_deny() -> None:
    custom = ap(
        "c",
        {
            "action": "CUSTOM",
            "provider": {"name": "ext"},
            "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}],
        },
    )
    assert not decide([custom], Req(path="/x")) and decide([custom], Req(path="/y"))


def test_principals_namespaces_and_ip_blocks() -> None:
    pol = ap(
        "p",
        {
            "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/web"]}}]},
                {"from": [{"source": {"namespaces": ["op*"]}}]},
                {"from": [{"source": {"ipBlocks": ["192.168.0.0/16"], "notIpBlocks": ["192.168.9.9"]}}]},
            ]
        },
    )
    assert decide([pol], Req(principal=WEB))
    assert not decide([pol], Req(principal="spiffe://cluster.local/ns/demo/sa/other"))
    assert decide([pol], Req(principal=OPS))
    assert not decide([pol], Req(principal=None)), "plaintext has no principal"
    assert decide([pol], Req(ip="192.168.1.2")) and not decide([pol], Req(ip="192.168.9.9"))


def test_not_principals_and_wildcards() -> None:
    pol = ap("p", {"rules": [{"from": [{"source": {"notPrincipals": ["*/sa/web"], "principals": ["*"]}}]}]})
    assert decide([pol], Req(principal=OPS))
    assert not decide([pol], Req(principal=WEB))
    assert not decide([pol], Req(principal=None)), "principals: ['*'] requires an authenticated peer"


def test_trust_domains_and_source_trust_domain_condition() -> None:
    other_td = "spiffe://partner.example/ns/demo/sa/web"
    pol = ap("p", {"rules": [{"from": [{"source": {"trustDomains": ["cluster.local"]}}]}]})
    assert decide([pol], Req(principal=WEB))
    assert not decide([pol], Req(principal=other_td))
    assert not decide([pol], Req(principal=None)), "plaintext has no trust domain"
    deny = ap("d", {"action": "DENY", "rules": [{"from": [{"source": {"notTrustDomains": ["cluster.*"]}}]}]})
    assert decide([deny], Req(principal=WEB)) and not decide([deny], Req(principal=other_td))
    cond = ap("c", {"rules": [{"when": [{"key": "source.trustDomain", "values": ["partner.example"]}]}]})
    assert decide([cond], Req(principal=other_td)) and not decide([cond], Req(principal=WEB))


def test_operations_methods_paths_hosts_ports() -> None:
    pol = ap(
        "p",
        {
            "rules": [
                {
                    "to": [
                        {
                            "operation": {
                                "methods": ["GET", "HEAD"],
                                "paths": ["/orders", "/orders/*", "*.css"],
                            }
                        },
                        {"operation": {"hosts": ["*.example.com"], "ports": ["9000"]}},
                    ]
                }
            ]
        },
    )
    assert decide([pol], Req(path="/orders?x=1")) and decide([pol], Req(path="/orders/7", method="HEAD"))
    assert decide([pol], Req(path="/static/site.css"))
    assert not decide([pol], Req(path="/orders", method="POST"))
    assert not decide([pol], Req(path="/ordersX"))
    assert decide([pol], Req(host="Shop.Example.com:9000", port=9000, method="POST", path="/x"))
    assert not decide([pol], Req(host="shop.example.com", port=8080, method="POST", path="/x"))


def test_when_claims_string_or_list_and_not_values() -> None:
    pol = ap(
        "p",
        {
            "rules": [
                {
                    "when": [
                        {"key": "request.auth.claims[groups]", "values": ["customer"]},
                        {"key": "request.auth.claims[org][tier]", "notValues": ["free"]},
                    ]
                }
            ]
        },
    )
    assert decide([pol], Req(payload={"groups": ["staff", "customer"], "org": {"tier": "gold"}}))
    assert decide([pol], Req(payload={"groups": "customer"}))
    assert not decide([pol], Req(payload={"groups": ["staff"]}))
    assert not decide([pol], Req(payload={"groups": ["customer"], "org": {"tier": "free"}}))
    assert not decide([pol], Req(payload=None))


def test_request_principals() -> None:
    def allowed(value: str, payload: dict[str, Any] | None) -> bool:
        return decide(
            [ap("p", {"rules": [{"from": [{"source": {"requestPrincipals": [value]}}]}]})],
            Req(payload=payload),
        )

    tok = {"iss": "https://idp.example.com", "sub": "alice"}
    assert allowed("*", tok) and not allowed("*", None)
    assert allowed("https://idp.example.com/alice", tok)
    assert not allowed("https://idp.example.com/bob", tok)
    assert allowed("https://idp.example.com/*", tok)
    assert not allowed("https://other.example.com/*", tok)
    assert allowed("*/alice", tok) and not allowed("*/bob", tok)


def test_when_source_and_destination_keys() -> None:
    pol = ap(
        "p",
        {
            "rules": [
                {
                    "when": [
                        {"key": "source.principal", "values": [WEB.removeprefix("spiffe://")]},
                        {"key": "source.ip", "values": ["10.0.0.0/8"]},
                        {"key": "destination.port", "values": ["8080"]},
                        {"key": "request.headers[x-env]", "values": ["prod*"]},
                        {"key": "source.namespace", "values": ["demo"]},
                    ]
                }
            ]
        },
    )
    ok = Req(principal=WEB, headers={"x-env": "production"})
    assert decide([pol], ok)
    assert not decide([pol], Req(principal=WEB, headers={"x-env": "dev"}))
    assert not decide([pol], Req(principal=WEB, headers={"x-env": "prod"}, port=9090))
    assert not decide([pol], Req(principal=WEB, headers={"x-env": "prod"}, ip="192.168.0.1"))


def test_tcp_drops_allow_rules_with_http_fields_and_widens_deny_rules() -> None:
    allow = ap(
        "a",
        {
            "rules": [
                {"to": [{"operation": {"methods": ["GET"]}}]},
                {"to": [{"operation": {"ports": ["5432"]}}]},
            ]
        },
    )
    assert decide([allow], Req(port=5432), http=False)
    assert not decide([allow], Req(port=6000), http=False), "the GET rule cannot match a TCP connection"
    deny = ap(
        "d",
        {
            "action": "DENY",
            "rules": [
                {"from": [{"source": {"namespaces": ["ops"]}}], "to": [{"operation": {"paths": ["/x"]}}]}
            ],
        },
    )
    assert not decide([deny], Req(principal=OPS), http=False), "DENY ignores the HTTP-only path on TCP"
    assert decide([deny], Req(principal=WEB), http=False)


def test_network_filters_have_stat_prefixes_and_come_in_order() -> None:
    policies = [
        ap("all", {"rules": [{}]}),
        ap("d", {"action": "DENY", "rules": [{}]}),
        ap("a", {"action": "AUDIT", "rules": [{}]}),
    ]
    actions = [a for a, _ in authz.rbac_rules(policies, False, TD)]
    assert actions == ["AUDIT", "DENY", "ALLOW"]
    filters = authz.network_filters(policies, TD, "tcp.inbound|5432||")
    assert [f.name for f in filters] == [authz.NETWORK_FILTER] * 3
