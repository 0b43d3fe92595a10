"""VirtualService translation: which VirtualService applies, matches in force, actions (Istio's semantics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from tests.unit.route_twins import one_per_match
from tests.unit.test_translate_support import load_case
from vmagent.controlplane.xds.snapshot import LISTENER, ROUTE

BASE = """\
kind: TranslateTest
proxy: {namespace: demo, workloadName: web-10.10.0.2, labels: {app: web}, ipAddresses: [10.10.0.2]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: demo}
spec:
  hosts: [db.demo.svc.cluster.local]
  addresses: [10.99.0.10]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-1, namespace: demo}
spec: {address: 10.10.0.3, labels: {app: api, version: v1}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-2, namespace: demo}
spec: {address: 10.10.0.4, labels: {app: api, version: v2}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: demo}
spec: {address: 10.10.0.5, labels: {app: db, version: v1}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: demo}
spec:
  host: api
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def build(tmp_path: Path, extra: str) -> dict[str, dict[str, Any]]:
    path = tmp_path / "case.yaml"
    path.write_text(BASE + "---\n" + extra)
    res = load_case(path).build()
    return {
        t: {n: MessageToDict(m, preserving_proto_field_name=True) for n, m in named.items()}
        for t, named in res.items()
    }


def api_routes(res: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The api virtual host's routes, one per match (the idempotent-method twins left out)."""
    hosts = res[ROUTE]["8080"]["virtual_hosts"]
    host = next(h for h in hosts if h["name"] == "api.demo.svc.cluster.local:8080")
    routes: list[dict[str, Any]] = host["routes"]
    return one_per_match(routes)


def vs(name: str, body: str, hosts: str = "[api]", namespace: str = "demo") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: {hosts}\n{body.rstrip()}\n"
    )


def test_without_virtual_service_the_default_route_stays(tmp_path: Path) -> None:
    routes = api_routes(build(tmp_path, vs("other", "  http: [{route: [{destination: {host: x}}]}]", "[x]")))
    assert [r["name"] for r in routes] == ["default"]
    assert routes[0]["route"]["cluster"] == "outbound|8080||api.demo.svc.cluster.local"


def test_header_match_and_fallback_route_to_subsets(tmp_path: Path) -> None:
    body = """\
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "yes"}}, uri: {prefix: /api}}]
    route: [{destination: {host: api, subset: v2}}]
  - route: [{destination: {host: api.demo.svc.cluster.local, subset: v1}}]
"""
    routes = api_routes(build(tmp_path, vs("api", body)))
    assert [r["name"] for r in routes] == ["canary", "demo/api.http[1]"]
    assert routes[0]["match"] == {
        "prefix": "/api",
        "headers": [{"name": "x-canary", "string_match": {"exact": "yes"}}],
    }
    assert routes[0]["route"]["cluster"] == "outbound|8080|v2|api.demo.svc.cluster.local"
    assert routes[1]["match"] == {"prefix": "/"}
    assert routes[1]["route"]["cluster"] == "outbound|8080|v1|api.demo.svc.cluster.local"


def test_weights_become_weighted_clusters_and_zero_weights_are_left_out(tmp_path: Path) -> None:
    body = """\
  http:
  - route:
    - {destination: {host: api, subset: v1}, weight: 90}
    - {destination: {host: api, subset: v2}, weight: 10}
    - {destination: {host: api}, weight: 0}
"""
    route = api_routes(build(tmp_path, vs("api", body)))[0]["route"]
    assert route["weighted_clusters"]["clusters"] == [
        {"name": "outbound|8080|v1|api.demo.svc.cluster.local", "weight": 90},
        {"name": "outbound|8080|v2|api.demo.svc.cluster.local", "weight": 10},
    ]


def test_gateway_only_virtual_service_does_not_route_sidecars(tmp_path: Path) -> None:
    body = "  gateways: [ingress]\n  http: [{route: [{destination: {host: api, subset: v2}}]}]\n"
    routes = api_routes(build(tmp_path, vs("api", body)))
    assert [r["name"] for r in routes] == ["default"]


def test_matches_for_other_sources_ports_or_gateways_drop_out(tmp_path: Path) -> None:
    body = """\
  http:
  - name: other-source
    match: [{sourceLabels: {app: billing}}]
    route: [{destination: {host: api, subset: v2}}]
  - name: other-port
    match: [{port: 9999}]
    route: [{destination: {host: api, subset: v2}}]
  - name: gateway-only
    match: [{gateways: [ingress]}]
    route: [{destination: {host: api, subset: v2}}]
  - name: for-web
    match: [{sourceLabels: {app: web}, uri: {exact: /web}}, {sourceNamespace: other, uri: {exact: /x}}]
    route: [{destination: {host: api, subset: v1}}]
"""
    routes = api_routes(build(tmp_path, vs("api", body)))
    assert [(r["name"], r["match"]) for r in routes] == [("for-web", {"path": "/web"})]


def test_all_routes_out_of_force_means_404_not_the_default(tmp_path: Path) -> None:
    body = "  http: [{match: [{sourceLabels: {app: billing}}], route: [{destination: {host: api}}]}]\n"
    routes = api_routes(build(tmp_path, vs("api", body)))
    assert routes == [{"name": "no_route", "match": {"prefix": "/"}, "direct_response": {"status": 404}}]


def test_exact_host_wins_over_wildcard_and_export_to_hides(tmp_path: Path) -> None:
    wildcard = vs(
        "wild", "  http: [{route: [{destination: {host: api, subset: v2}}]}]", '["*.svc.cluster.local"]'
    )
    exact = vs("exact", "  http: [{route: [{destination: {host: api, subset: v1}}]}]")
    hidden = vs(
        "hidden",
        "  exportTo: [.]\n  http: [{route: [{destination: {host: api.demo.svc.cluster.local}}]}]",
        "[api.demo.svc.cluster.local]",
        namespace="other",
    )
    routes = api_routes(build(tmp_path, "---\n".join([wildcard, exact, hidden])))
    assert routes[0]["route"]["cluster"] == "outbound|8080|v1|api.demo.svc.cluster.local"
    only_wild = api_routes(build(tmp_path, wildcard))
    assert only_wild[0]["route"]["cluster"] == "outbound|8080|v2|api.demo.svc.cluster.local"


def test_retries_timeouts_and_istio_retry_defaults(tmp_path: Path) -> None:
    body = """\
  http:
  - name: explicit
    match: [{uri: {prefix: /a}}]
    route: [{destination: {host: api}}]
    timeout: 2.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "gateway-error,503,429"}
  - name: istio-default
    match: [{uri: {prefix: /b}}]
    route: [{destination: {host: api}}]
    retries: {attempts: 4}
  - name: "off"
    route: [{destination: {host: api}}]
    retries: {attempts: 0}
"""
    a, b, off = api_routes(build(tmp_path, vs("api", body)))
    assert a["route"]["timeout"] == "2.500s"
    rp = a["route"]["retry_policy"]
    assert rp["retry_on"] == "gateway-error,retriable-status-codes"
    assert rp["retriable_status_codes"] == [503, 429]
    assert rp["num_retries"] == 3 and rp["per_try_timeout"] == "0.100s"
    assert rp["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert b["route"]["retry_policy"]["retry_on"].endswith("retriable-status-codes")
    assert b["route"]["retry_policy"]["retriable_status_codes"] == [503]
    assert b["route"]["timeout"] == "0s"
    assert "retry_policy" not in off["route"]


def test_fault_mirror_cors_headers_and_rewrite(tmp_path: Path) -> None:
    body = """\
  http:
  - route: [{destination: {host: api, subset: v1}, headers: {request: {set: {x-dest: v1}}}}]
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 12.5}}
      abort: {httpStatus: 418}
    mirror: {host: api, subset: v2}
    mirrorPercentage: {value: 30}
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET, PUT], maxAge: 1m}
    rewrite: {uri: /v2/, authority: internal}
    headers:
      request: {add: {x-a: "1"}, remove: [x-b]}
      response: {set: {x-c: "2"}}
"""
    r = api_routes(build(tmp_path, vs("api", body)))[0]
    fault = r["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fault["delay"] == {
        "fixed_delay": "1s",
        "percentage": {"numerator": 125000, "denominator": "MILLION"},
    }
    assert fault["abort"] == {
        "http_status": 418,
        "percentage": {"numerator": 1000000, "denominator": "MILLION"},
    }
    assert r["route"]["request_mirror_policies"] == [
        {
            "cluster": "outbound|8080|v2|api.demo.svc.cluster.local",
            "runtime_fraction": {"default_value": {"numerator": 300000, "denominator": "MILLION"}},
        }
    ]
    cors = r["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [{"exact": "https://a.example"}]
    assert cors["allow_methods"] == "GET,PUT" and cors["max_age"] == "60"
    assert r["route"]["prefix_rewrite"] == "/v2/" and r["route"]["host_rewrite_literal"] == "internal"
    added = {
        h["header"]["key"]: h.get("append_action", "APPEND_IF_EXISTS_OR_ADD")
        for h in r["request_headers_to_add"]
    }
    assert added == {"x-dest": "OVERWRITE_IF_EXISTS_OR_ADD", "x-a": "APPEND_IF_EXISTS_OR_ADD"}
    assert r["request_headers_to_remove"] == ["x-b"]
    assert r["response_headers_to_add"][0]["header"] == {"key": "x-c", "value": "2"}


def test_outbound_http_chain_has_cors_and_fault_before_the_router(tmp_path: Path) -> None:
    res = build(tmp_path, "")
    chain = next(
        c for c in res[LISTENER]["0.0.0.0_8080"]["filter_chains"] if c["name"] == "0.0.0.0_8080_http"
    )
    hcm = chain["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]


def test_redirect_and_direct_response(tmp_path: Path) -> None:
    body = """\
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: b.example, scheme: https, redirectCode: 302}
  - directResponse: {status: 503, body: {string: down}}
"""
    redirect, direct = api_routes(build(tmp_path, vs("api", body)))
    assert redirect["redirect"] == {
        "host_redirect": "b.example",
        "path_redirect": "/new",
        "scheme_redirect": "https",
        "response_code": "FOUND",
    }
    assert direct["direct_response"] == {"status": 503, "body": {"inline_string": "down"}}


def test_tcp_route_splits_by_weight(tmp_path: Path) -> None:
    body = """\
  tcp:
  - route:
    - {destination: {host: db.demo.svc.cluster.local}, weight: 70}
    - {destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}, weight: 30}
"""
    res = build(tmp_path, vs("db", body, "[db.demo.svc.cluster.local]"))
    chain = next(
        c
        for c in res[LISTENER]["0.0.0.0_5432"]["filter_chains"]
        if "prefix_ranges" in c["filter_chain_match"]
    )
    proxy = chain["filters"][0]["typed_config"]
    assert proxy["weighted_clusters"]["clusters"] == [
        {"name": "outbound|5432||db.demo.svc.cluster.local", "weight": 70},
        {"name": "outbound|8080||api.demo.svc.cluster.local", "weight": 30},
    ]
    assert proxy["stat_prefix"] == "outbound|5432||db.demo.svc.cluster.local"


ISTIO_DEFAULT_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": "5",
}


def test_routes_without_retries_get_istios_default_retry_policy(tmp_path: Path) -> None:
    """A 503 from one endpoint (its application died) is retried on another endpoint, as in Istio."""
    (default,) = api_routes(build(tmp_path, ""))
    assert default["route"]["retry_policy"] == ISTIO_DEFAULT_RETRY
    (routed,) = api_routes(build(tmp_path, vs("api", "  http: [{route: [{destination: {host: api}}]}]")))
    assert routed["route"]["retry_policy"] == ISTIO_DEFAULT_RETRY


def test_consistent_hash_and_ignore_previous_hosts_keep_retries_on_the_host_choice(tmp_path: Path) -> None:
    hashed_rule = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api-hash, namespace: demo}\n"
        "spec:\n  host: api\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"
    )
    path = tmp_path / "case.yaml"
    path.write_text(BASE.split("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule")[0])
    path.write_text(path.read_text() + "---\n" + hashed_rule)
    res = load_case(path).build()
    route = MessageToDict(res[ROUTE]["8080"], preserving_proto_field_name=True)
    host = next(h for h in route["virtual_hosts"] if h["name"] == "api.demo.svc.cluster.local:8080")
    rp = host["routes"][0]["route"]["retry_policy"]
    assert "retry_host_predicate" not in rp
    assert rp["retriable_status_codes"] == [503] and rp["num_retries"] == 2
    body = "  http: [{route: [{destination: {host: api}}], retries: {attempts: 3, retryIgnorePreviousHosts: false}}]"
    (r,) = api_routes(build(tmp_path, vs("api", body)))
    assert "retry_host_predicate" not in r["route"]["retry_policy"]
    assert r["route"]["retry_policy"]["num_retries"] == 3
