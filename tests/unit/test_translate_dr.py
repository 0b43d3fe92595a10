"""DestinationRule translation: subsets and their EDS, load balancer, connection pool, outlier detection,
with subset-level and port-level overrides (Istio's precedence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.route_twins import one_per_match
from tests.unit.test_translate_vs import build, vs
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, ROUTE

API = "api.demo.svc.cluster.local"
_MAX = 4294967295


def dr(spec: str) -> str:
    """A rule for api named to sort before the base case's (of two rules for one host the first wins)."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: a-policy, namespace: demo}}\nspec:\n  host: {API}\n{spec.rstrip()}\n"
    )


def cluster(res: dict[str, dict[str, Any]], subset: str = "", port: int = 8080) -> dict[str, Any]:
    out: dict[str, Any] = res[CLUSTER][f"outbound|{port}|{subset}|{API}"]
    return out


def test_subset_clusters_get_only_their_labelled_endpoints(tmp_path: Path) -> None:
    res = build(tmp_path, "")  # BASE has the api rule with subsets v1 and v2
    for subset, address in (("v1", "10.10.0.3"), ("v2", "10.10.0.4")):
        name = f"outbound|8080|{subset}|{API}"
        assert cluster(res, subset)["eds_cluster_config"]["service_name"] == name
        eps = [
            e["endpoint"]["address"]["socket_address"]["address"]
            for loc in res[ENDPOINT][name]["endpoints"]
            for e in loc["lb_endpoints"]
        ]
        assert eps == [address]


def test_load_balancer_simple_and_subset_override(tmp_path: Path) -> None:
    res = build(
        tmp_path,
        dr("""\
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}
"""),
    )
    assert cluster(res)["lb_policy"] == "RANDOM"
    assert cluster(res, "v1")["lb_policy"] == "LEAST_REQUEST"
    v2 = cluster(res, "v2")
    assert v2["type"] == "ORIGINAL_DST" and v2["lb_policy"] == "CLUSTER_PROVIDED"
    assert "eds_cluster_config" not in v2


def test_connection_pool_sets_limits_and_leaves_the_rest_lifted(tmp_path: Path) -> None:
    res = build(
        tmp_path,
        dr("""\
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 10, idleTimeout: 5s}
"""),
    )
    c = cluster(res)
    assert c["circuit_breakers"]["thresholds"][0] == {
        "max_connections": 1,
        "max_pending_requests": 1,
        "max_requests": _MAX,
        "max_retries": _MAX,
        "track_remaining": True,
    }
    assert c["connect_timeout"] == "0.250s"
    opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert opts["common_http_protocol_options"] == {"idle_timeout": "5s", "max_requests_per_connection": 10}
    assert "http_protocol_options" in opts["explicit_http_config"]


def test_outlier_detection_fields_and_deprecated_consecutive_errors(tmp_path: Path) -> None:
    res = build(
        tmp_path,
        dr("""\
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
    portLevelSettings:
    - port: {number: 8080}
      outlierDetection: {consecutiveErrors: 7, minHealthPercent: 30}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {outlierDetection: {consecutiveGatewayErrors: 3}}}
"""),
    )
    # The port-level setting replaces the rule-level outlier detection for port 8080.
    assert cluster(res)["outlier_detection"] == {
        "consecutive_gateway_failure": 7,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_consecutive_5xx": 0,
        "enforcing_success_rate": 0,
    }
    assert cluster(res)["common_lb_config"]["healthy_panic_threshold"] == {"value": 30.0}
    assert cluster(res, "v1")["outlier_detection"] == {
        "consecutive_gateway_failure": 3,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_success_rate": 0,
    }
    # As in Istio: without minHealthPercent the panic threshold is 0 (ejected hosts stay out).
    assert cluster(res, "v1")["common_lb_config"]["healthy_panic_threshold"] == {}


def test_outlier_detection_5xx(tmp_path: Path) -> None:
    res = build(
        tmp_path,
        dr("""\
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
"""),
    )
    assert cluster(res)["outlier_detection"] == {
        "consecutive_5xx": 2,
        "enforcing_consecutive_5xx": 100,
        "interval": "1s",
        "base_ejection_time": "60s",
        "max_ejection_percent": 100,
        "enforcing_success_rate": 0,
    }


def test_outlier_detection_local_origin_and_long_ejection_as_istio(tmp_path: Path) -> None:
    res = build(
        tmp_path,
        dr("""  trafficPolicy:
    outlierDetection:
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      baseEjectionTime: 10m
      maxEjectionPercent: 0
"""),
    )
    assert cluster(res)["outlier_detection"] == {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_local_origin_success_rate": 0,
        "enforcing_success_rate": 0,
        "base_ejection_time": "600s",
        "max_ejection_time": "600s",
    }
    # Without the split, local-origin failures count as 5xx and the field has no effect (as in Istio).
    res = build(tmp_path, dr("  trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 2}}\n"))
    assert cluster(res)["outlier_detection"] == {"enforcing_success_rate": 0}


def test_consistent_hash_sets_ring_hash_and_the_route_hash_policy(tmp_path: Path) -> None:
    rule = dr("""\
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: sid, ttl: 10s}}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: u, maglev: {tableSize: 131}}}}}
""")
    http = """\
  http:
  - {match: [{uri: {prefix: /a}}], route: [{destination: {host: api, subset: v1}}]}
  - {match: [{uri: {prefix: /b}}], route: [{destination: {host: api, subset: v2}}]}
  - route: [{destination: {host: api}}]
"""
    res = build(tmp_path, rule + "---\n" + vs("api", http))
    assert cluster(res)["lb_policy"] == "RING_HASH"
    assert cluster(res, "v2")["lb_policy"] == "MAGLEV"
    assert cluster(res, "v2")["maglev_lb_config"] == {"table_size": "131"}
    hosts = res[ROUTE]["8080"]["virtual_hosts"]
    routes = one_per_match(next(h for h in hosts if h["name"] == f"{API}:8080")["routes"])
    assert [r["route"]["hash_policy"] for r in routes] == [
        [{"connection_properties": {"source_ip": True}}],
        [{"query_parameter": {"name": "u"}}],
        [{"cookie": {"name": "sid", "ttl": "10s"}}],
    ]


def test_rule_tls_still_decides_and_policy_does_not_touch_passthrough(tmp_path: Path) -> None:
    res = build(
        tmp_path, dr("  trafficPolicy:\n    tls: {mode: DISABLE}\n    loadBalancer: {simple: ROUND_ROBIN}\n")
    )
    c = cluster(res)
    assert "transport_socket" not in c and "transport_socket_matches" not in c
    assert c.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
    assert res[CLUSTER]["PassthroughCluster"]["lb_policy"] == "CLUSTER_PROVIDED"
