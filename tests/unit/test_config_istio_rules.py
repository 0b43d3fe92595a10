"""Istio's validation rules (its webhook in pkg/config/validation and its CRD schemas), one test per rule.

Each test feeds the smallest document breaking one rule and checks the exact field path and message,
and, where Istio accepts a near variant, that the variant passes (so the rule is not broader than Istio's).
"""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.validate import DocResult, validate_document

NET = "networking.istio.io/v1"
SEC = "security.istio.io/v1"


def check(kind: str, spec: dict[str, Any], api: str = NET, namespace: str = "demo") -> DocResult:
    doc = {"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": namespace}, "spec": spec}
    return validate_document(doc, "f.yaml", 1)


def errors(kind: str, spec: dict[str, Any], api: str = NET) -> list[str]:
    result = check(kind, spec, api)
    return [f"{e.path}: {e.message}" for e in result.errors]


def assert_valid(kind: str, spec: dict[str, Any], api: str = NET) -> DocResult:
    result = check(kind, spec, api)
    assert result.errors == [], [str(e) for e in result.errors]
    assert result.obj is not None
    return result


# -- regular expressions: RE2 ------------------------------------------------------------------------------


def test_regex_must_compile_with_re2_lookahead_refused() -> None:
    spec = {
        "hosts": ["r"],
        "http": [{"match": [{"uri": {"regex": "/a(?=b)"}}], "route": [{"destination": {"host": "r"}}]}],
    }
    (msg,) = errors("VirtualService", spec)
    assert msg.startswith("spec.http[0].match[0].uri.regex: invalid regular expression '/a(?=b)': RE2 cannot")


def test_regex_must_compile_with_re2_backreference_refused() -> None:
    spec = {
        "hosts": ["r"],
        "http": [
            {"match": [{"headers": {"x": {"regex": r"(a)\1"}}}], "route": [{"destination": {"host": "r"}}]}
        ],
    }
    (msg,) = errors("VirtualService", spec)
    assert "RE2 cannot compile it" in msg and "spec.http[0].match[0].headers.x.regex" in msg


def test_regex_re2_syntax_accepted() -> None:
    spec = {
        "hosts": ["r"],
        "http": [
            {
                "match": [{"uri": {"regex": r"(?i)^/api/v[0-9]+/\d+$"}}],
                "route": [{"destination": {"host": "r"}}],
            }
        ],
    }
    assert_valid("VirtualService", spec)


# -- AuthorizationPolicy -----------------------------------------------------------------------------------


def _authz_source(source: dict[str, Any]) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": source}]}]}


def test_authz_service_accounts_with_namespaces_or_principals_refused() -> None:
    for other in ({"namespaces": ["a"]}, {"principals": ["td/ns/a/sa/b"]}, {"notNamespaces": ["a"]}):
        msgs = errors("AuthorizationPolicy", _authz_source({"serviceAccounts": ["a/b"], **other}), SEC)
        assert msgs == [
            "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"
        ]


def test_authz_service_account_form_refused() -> None:
    for bad in ("a/b*", "a/b/c", "/b", "a/"):
        msgs = errors("AuthorizationPolicy", _authz_source({"serviceAccounts": [bad]}), SEC)
        assert msgs == [
            f"spec.rules[0].from[0].source.serviceAccounts[0]: invalid service account {bad!r}, "
            "expected 'NAMESPACE/NAME' or 'NAME'"
        ]
    assert_valid("AuthorizationPolicy", _authz_source({"serviceAccounts": ["ns/sa", "sa"]}), SEC)


def test_authz_service_accounts_at_most_16() -> None:
    msgs = errors(
        "AuthorizationPolicy", _authz_source({"serviceAccounts": [f"s{i}" for i in range(17)]}), SEC
    )
    assert msgs == ["spec.rules[0].from[0].source.serviceAccounts: too many items (17), at most 16 allowed"]


def test_authz_trust_domains_and_condition_key_accepted() -> None:
    spec = {
        "rules": [
            {
                "from": [{"source": {"trustDomains": ["td1"], "notTrustDomains": ["td2"]}}],
                "when": [{"key": "source.trustDomain", "values": ["td1"]}],
            }
        ]
    }
    assert_valid("AuthorizationPolicy", spec, SEC)


def test_authz_empty_values_refused() -> None:
    msgs = errors("AuthorizationPolicy", _authz_source({"principals": [""]}), SEC)
    assert msgs == ["spec.rules[0].from[0].source.principals[0]: must not be empty"]


# -- selectors and targetRefs ------------------------------------------------------------------------------


def test_workload_selector_wildcard_value_refused() -> None:
    msgs = errors("AuthorizationPolicy", {"selector": {"matchLabels": {"app": "*"}}}, SEC)
    assert msgs == ["spec.selector.matchLabels.app: wildcard is not supported in selector: 'app=*'"]
    msgs = errors("ServiceEntry", {"hosts": ["a.example"], "workloadSelector": {"labels": {"app": "re*"}}})
    assert msgs == ["spec.workloadSelector.labels.app: wildcard is not supported in selector: 'app=re*'"]


def test_target_ref_cross_namespace_refused() -> None:
    ref = {"kind": "Service", "group": "", "name": "s", "namespace": "other"}
    msgs = errors("AuthorizationPolicy", {"targetRefs": [ref]}, SEC)
    assert msgs == [
        "spec.targetRefs[0].namespace: targetRef namespace must not be set; "
        "cross namespace referencing is not supported"
    ]


def test_target_ref_kind_must_be_allowed() -> None:
    msgs = errors(
        "RequestAuthentication", {"targetRef": {"kind": "Deployment", "group": "apps", "name": "d"}}, SEC
    )
    assert len(msgs) == 1 and msgs[0].startswith("spec.targetRef: targetRef must be to one of core/Service")
    assert msgs[0].endswith("but was apps/Deployment")
    assert_valid("AuthorizationPolicy", {"targetRef": {"kind": "Service", "group": "", "name": "s"}}, SEC)
    gw = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"}
    assert_valid("AuthorizationPolicy", {"targetRefs": [gw]}, SEC)


def test_target_ref_group_and_kind_patterns() -> None:
    msgs = errors(
        "AuthorizationPolicy", {"targetRef": {"kind": "Ser vice", "group": "Bad_Group", "name": "s"}}, SEC
    )
    assert (
        "spec.targetRef.group: invalid value 'Bad_Group', expected an API group (DNS subdomain) or empty"
        in msgs
    )
    assert "spec.targetRef.kind: invalid value 'Ser vice', expected a kind such as 'Service'" in msgs


def test_target_ref_name_must_not_be_empty() -> None:
    msgs = errors("AuthorizationPolicy", {"targetRef": {"kind": "Service", "name": ""}}, SEC)
    assert msgs == ["spec.targetRef.name: must not be empty"]


# -- RequestAuthentication ---------------------------------------------------------------------------------


def _jwt(**rule: Any) -> dict[str, Any]:
    return {"jwtRules": [{"issuer": "iss", "jwksUri": "https://idp.example/jwks", **rule}]}


def test_jwt_audience_must_be_non_empty() -> None:
    assert errors("RequestAuthentication", _jwt(audiences=["a", ""]), SEC) == [
        "spec.jwtRules[0].audiences[1]: must not be empty"
    ]


def test_jwt_from_params_and_cookies_must_be_non_empty() -> None:
    assert errors("RequestAuthentication", _jwt(fromParams=[""], fromCookies=[""]), SEC) == [
        "spec.jwtRules[0].fromParams[0]: must not be empty",
        "spec.jwtRules[0].fromCookies[0]: must not be empty",
    ]


def test_jwt_issuer_or_jwks_uri_required() -> None:
    assert errors("RequestAuthentication", {"jwtRules": [{"jwks": "{}"}]}, SEC) == [
        "spec.jwtRules[0].issuer: issuer or jwksUri must be non-empty string"
    ]
    assert_valid("RequestAuthentication", {"jwtRules": [{"jwksUri": "https://idp.example/jwks"}]}, SEC)


def test_jwt_output_claim_header_name_strict_and_not_reserved() -> None:
    bad = [{"header": "x_claim", "claim": "sub"}, {"header": "Host", "claim": "sub"}]
    assert errors("RequestAuthentication", _jwt(outputClaimToHeaders=bad), SEC) == [
        "spec.jwtRules[0].outputClaimToHeaders[0].header: header name 'x_claim' is not a valid header name",
        "spec.jwtRules[0].outputClaimToHeaders[1].header: header name 'Host' is reserved and cannot be set "
        "from a claim",
    ]
    assert_valid(
        "RequestAuthentication", _jwt(outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}]), SEC
    )


def test_jwt_space_delimited_claims_is_not_supported_ignored() -> None:
    result = assert_valid("RequestAuthentication", _jwt(spaceDelimitedClaims=["roles"]), SEC)
    assert [w.message for w in result.warnings] == [
        "field 'spaceDelimitedClaims' of JWTRule is not supported by vmagent: ignored "
        "(only 'scope' and 'permission' claims are split at spaces)"
    ]


# -- PeerAuthentication ------------------------------------------------------------------------------------


def test_peer_authn_empty_port_level_mtls_refused() -> None:
    spec = {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {}}
    assert errors("PeerAuthentication", spec, SEC) == [
        "spec.portLevelMtls: port level mTLS, if defined, must have at least one element"
    ]


def test_peer_authn_port_level_mtls_needs_selector() -> None:
    assert errors("PeerAuthentication", {"portLevelMtls": {"8080": {"mode": "DISABLE"}}}, SEC) == [
        "spec.portLevelMtls: requires a workload 'selector' (not allowed mesh- or namespace-wide)"
    ]


# -- ServiceEntry, WorkloadEntry, WorkloadGroup ------------------------------------------------------------


def test_service_entry_cidr_addresses_only_with_none_or_static() -> None:
    spec = {"hosts": ["db.example"], "addresses": ["10.0.0.0/16"], "resolution": "DNS", "ports": []}
    assert errors("ServiceEntry", spec) == [
        "spec.addresses[0]: CIDR addresses are allowed only for NONE/STATIC resolution types"
    ]
    spec["resolution"] = "STATIC"
    spec["endpoints"] = [{"address": "10.0.0.1"}]
    assert_valid("ServiceEntry", spec)


def test_workload_entry_uds_may_not_include_ports() -> None:
    assert errors("WorkloadEntry", {"address": "unix://@foo", "ports": {"http": 80}}) == [
        "spec.ports: UDS may not include ports"
    ]


def test_workload_entry_uds_must_be_absolute_or_abstract() -> None:
    assert errors("WorkloadEntry", {"address": "unix://relative"}) == [
        "spec.address: invalid address 'unix://relative': UDS must be an absolute path or abstract socket"
    ]
    assert_valid("WorkloadEntry", {"address": "unix:///var/run/app.sock"})
    assert_valid("WorkloadEntry", {"address": "unix://@abstract"})


def test_workload_entry_uds_may_not_be_a_dir() -> None:
    assert errors("WorkloadEntry", {"address": "unix:///dir/"}) == [
        "spec.address: invalid address 'unix:///dir/': UDS may not be a dir"
    ]


def test_workload_group_template_address_ignored_as_istio_does() -> None:
    result = assert_valid("WorkloadGroup", {"template": {"address": "10.0.0.1", "serviceAccount": "sa"}})
    assert [w.message for w in result.warnings] == [
        "field 'address' of WorkloadEntry is not supported by vmagent: ignored "
        "(as in Istio, each workload registers its own address)"
    ]


# -- DestinationRule ---------------------------------------------------------------------------------------


def _lb(lb: dict[str, Any]) -> dict[str, Any]:
    return {"host": "r", "trafficPolicy": {"loadBalancer": lb}}


def test_warmup_minimum_percent_and_aggression_are_doubles() -> None:
    warm = {"duration": "30s", "minimumPercent": 12.5, "aggression": 1.5}
    result = assert_valid("DestinationRule", _lb({"simple": "ROUND_ROBIN", "warmup": warm}))
    assert "not supported by vmagent: ignored" in result.warnings[0].message


def test_warmup_minimum_percent_at_most_100_and_aggression_at_least_1() -> None:
    warm = {"duration": "30s", "minimumPercent": 100.5, "aggression": 0.5}
    assert errors("DestinationRule", _lb({"warmup": warm})) == [
        "spec.trafficPolicy.loadBalancer.warmup.minimumPercent: 100.5 is out of range, expected a number "
        "between 0 and 100",
        "spec.trafficPolicy.loadBalancer.warmup.aggression: 0.5 is out of range, expected a number >= 1",
    ]


def test_http2_keep_alive_is_not_supported_ignored() -> None:
    spec = {"host": "r", "trafficPolicy": {"connectionPool": {"http": {"http2KeepAlive": {"time": "10s"}}}}}
    result = assert_valid("DestinationRule", spec)
    assert [w.path for w in result.warnings] == ["spec.trafficPolicy.connectionPool.http.http2KeepAlive"]
