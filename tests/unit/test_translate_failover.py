"""vmagent's failover defaults beyond Istio's (translate/failover.py, docs/traffic.md "Failover"): upstream
TCP liveness and local-origin outlier detection on mesh-internal clusters, and the idempotent-method
route twin that also retries resets. tests/system/test_failover.py shows what they are for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.unit.route_twins import METHODS_REGEX, is_twin
from tests.unit.test_translate_vs import build, vs
from vmagent.controlplane.xds.snapshot import CLUSTER, ROUTE

API = "outbound|8080||api.demo.svc.cluster.local"
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
EXTERNAL = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: demo}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
"""


def rule(policy: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db-policy, namespace: demo}\n"
        f"spec:\n  host: db.demo.svc.cluster.local\n  trafficPolicy: {policy}\n"
    )


def api_host_routes(res: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    hosts = res[ROUTE]["8080"]["virtual_hosts"]
    routes: list[dict[str, Any]] = next(h for h in hosts if h["name"] == "api.demo.svc.cluster.local:8080")[
        "routes"
    ]
    return routes


def test_mesh_internal_clusters_get_tcp_liveness_and_local_origin_ejection(tmp_path: Path) -> None:
    res = build(tmp_path, "")
    for name in (
        API,
        "outbound|8080|v1|api.demo.svc.cluster.local",
        "outbound|5432||db.demo.svc.cluster.local",
    ):
        c = res[CLUSTER][name]
        assert c["upstream_connection_options"]["tcp_keepalive"] == {
            "keepalive_time": 10,
            "keepalive_interval": 1,
            "keepalive_probes": 3,
        }
        # TCP_USER_TIMEOUT (IPPROTO_TCP 6, option 18) in milliseconds, set before connect.
        (opt,) = c["upstream_bind_config"]["socket_options"]
        assert (opt["level"], opt["name"], opt["int_value"]) == ("6", "18", "2000")
        assert "source_address" not in c["upstream_bind_config"]
        # No default outlier detection: an ejected host that came back would stay out for the ejection
        # time, and a rolling restart of the other hosts then fails requests (docs/traffic.md, "Failover").
        assert "outlier_detection" not in c


def test_original_destination_clusters_keep_istios_defaults(tmp_path: Path) -> None:
    res = build(tmp_path, EXTERNAL)
    for name in ("PassthroughCluster", "InboundPassthroughClusterIpv4"):
        c = res[CLUSTER][name]
        assert "outlier_detection" not in c
        assert "upstream_connection_options" not in c
        assert "socket_options" not in c.get("upstream_bind_config", {})


def test_a_destination_rule_replaces_the_defaults_it_sets(tmp_path: Path) -> None:
    policy = (
        "{connectionPool: {tcp: {tcpKeepalive: {time: 60s, interval: 5s, probes: 2}}}, "
        "outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 10s}}"
    )
    c = build(tmp_path, rule(policy))[CLUSTER]["outbound|5432||db.demo.svc.cluster.local"]
    assert c["upstream_connection_options"]["tcp_keepalive"] == {
        "keepalive_time": 60,
        "keepalive_interval": 5,
        "keepalive_probes": 2,
    }
    assert c["upstream_bind_config"]["socket_options"][0]["int_value"] == "2000"  # no Istio field for it
    od = c["outlier_detection"]
    assert od["consecutive_5xx"] == 3 and od["enforcing_consecutive_5xx"] == 100
    assert "split_external_local_origin_errors" not in od  # the rule's detector, as Istio maps it


def test_default_routes_get_an_idempotent_twin_that_also_retries_resets(tmp_path: Path) -> None:
    twin, default = api_host_routes(build(tmp_path, ""))
    assert is_twin(twin) and not is_twin(default)
    assert twin["name"] == default["name"] == "default"
    assert twin["match"]["headers"] == [
        {"name": ":method", "string_match": {"safe_regex": {"regex": METHODS_REGEX}}}
    ]
    assert twin["route"]["retry_policy"]["retry_on"] == DEFAULT_RETRY_ON + ",reset"
    assert default["route"]["retry_policy"]["retry_on"] == DEFAULT_RETRY_ON
    # Apart from the method match and the extra condition, the twin is the route.
    twin["match"].pop("headers")
    twin["route"]["retry_policy"]["retry_on"] = DEFAULT_RETRY_ON
    assert twin == default


def test_the_twin_matches_exactly_the_idempotent_methods() -> None:
    idempotent = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
    for method in [*idempotent, "POST", "PATCH", "CONNECT", "GETX", "get"]:
        assert bool(re.fullmatch(METHODS_REGEX, method)) == (method in idempotent), method


def test_virtual_service_routes_get_twins_only_with_the_default_retry_conditions(tmp_path: Path) -> None:
    body = """\
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: api}}]
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: api}}]
    retries: {attempts: 4}
  - match: [{uri: {prefix: /c}}]
    route: [{destination: {host: api}}]
    retries: {attempts: 2, retryOn: 5xx}
  - match: [{uri: {prefix: /d}}]
    route: [{destination: {host: api}}]
    retries: {attempts: 0}
  - match: [{uri: {prefix: /e}}]
    directResponse: {status: 204}
"""
    routes = api_host_routes(build(tmp_path, vs("api", body)))
    shape = [(r["match"]["prefix"], is_twin(r)) for r in routes]
    assert shape == [
        ("/a", True),
        ("/a", False),
        ("/b", True),
        ("/b", False),
        ("/c", False),  # the operator's retryOn is kept as written
        ("/d", False),  # retries off
        ("/e", False),  # nothing forwarded
    ]
    assert routes[2]["route"]["retry_policy"]["num_retries"] == 4
    assert routes[2]["route"]["retry_policy"]["retry_on"].endswith(",reset")
