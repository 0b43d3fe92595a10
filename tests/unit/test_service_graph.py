"""The dashboard's service graph and views: parsing an agent's exposition, rates, error rates and p99 over
the window, scrape errors, the bounds, and the static files the page is made of (they ship in the package).

The agents are real HTTP servers on loopback serving recorded ``istio_*`` expositions (no Envoy: the
system test tests/system/test_dashboard_browser.py has the real data plane).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vmagent.controlplane.dashboard import UI_FILES, Dashboard, ui_file
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.service_graph import ServiceGraph, parse_exposition, quantile

LABELS = (
    'reporter="{r}",source_workload="web",source_workload_namespace="demo",'
    'destination_workload="api",destination_workload_namespace="demo",response_code="{code}"'
)


def exposition(ok: int, failed: int, fast: int) -> str:
    """``ok`` 200s and ``failed`` 503s reported by the destination, ``fast`` of all under 5 ms."""
    d = LABELS.format(r="destination", code="200")
    e = LABELS.format(r="destination", code="503")
    s = LABELS.format(r="source", code="200")
    total = ok + failed
    return "\n".join([
        "# TYPE istio_requests_total counter",
        f"istio_requests_total{{{d}}} {ok}",
        f"istio_requests_total{{{e}}} {failed}",
        f"istio_requests_total{{{s}}} 999",
        "# TYPE istio_request_duration_milliseconds histogram",
        f'istio_request_duration_milliseconds_bucket{{{d},le="5.0"}} {fast}',
        f'istio_request_duration_milliseconds_bucket{{{d},le="10.0"}} {total}',
        f'istio_request_duration_milliseconds_bucket{{{d},le="+Inf"}} {total}',
        "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"x\"} 5",
        "",
    ])  # fmt: skip


def test_parse_keeps_destination_reports_only() -> None:
    s = parse_exposition(exposition(10, 2, 12), at=1.0)
    key = ("demo", "web", "demo", "api")
    assert s.requests == {key: 12.0} and s.errors == {key: 2.0}
    assert s.buckets[key] == {5.0: 12.0, 10.0: 12.0, float("inf"): 12.0}


def test_quantile_interpolates_like_histogram_quantile() -> None:
    assert quantile(0.5, {5.0: 50.0, 10.0: 100.0, float("inf"): 100.0}) == 5.0
    assert quantile(0.99, {5.0: 50.0, 10.0: 100.0, float("inf"): 100.0}) == pytest.approx(9.9)
    assert quantile(0.99, {}) is None


class Agent:
    """A loopback HTTP server standing in for an agent's :15020 (its body is set by the test)."""

    def __init__(self) -> None:
        self.body = ""
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = agent.body.encode()
                self.send_response(200 if self.path == "/stats/prometheus?source=agent" else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    yield a
    a.server.shutdown()
    a.server.server_close()


def test_rates_error_rate_and_p99_over_the_window(agent: Agent) -> None:
    targets = [("demo/api-1", "127.0.0.1"), ("demo/gone", "127.0.0.2")]
    now = [100.0]
    graph = ServiceGraph(lambda: targets, timeout=2, port=agent.port, clock=lambda: now[0])
    with ThreadPoolExecutor(2) as pool:
        agent.body = exposition(10, 0, 10)
        graph.scrape_round(pool)
        now[0] = 110.0
        agent.body = exposition(100, 10, 50)  # +90 ok, +10 failed, 40 of them under 5 ms, in 10 s
        graph.scrape_round(pool)
    g = graph.graph_json()
    assert g["nodes"] == ["demo/api", "demo/web"]
    [edge] = g["edges"]
    assert edge["source"] == "demo/web" and edge["destination"] == "demo/api"
    assert edge["rps"] == pytest.approx(10.0) and edge["error_rate"] == pytest.approx(0.1)
    assert edge["p99_ms"] == pytest.approx(5 + 5 * (99 - 40) / 60, abs=0.01)
    failed = [s for s in g["scrapes"] if s["error"]]
    assert [s["workload"] for s in failed] == ["demo/gone"]


def test_targets_beyond_the_cap_are_skipped_and_oversized_bodies_refused(agent: Agent) -> None:
    agent.body = "x" * 2000
    graph = ServiceGraph(
        lambda: [("demo/a", "127.0.0.1"), ("demo/b", "127.0.0.1")],
        port=agent.port,
        max_targets=1,
        max_bytes=1000,
    )
    with ThreadPoolExecutor(1) as pool:
        graph.scrape_round(pool)
    g = graph.graph_json()
    assert g["targets_skipped"] == 1
    assert [s["workload"] for s in g["scrapes"]] == ["demo/a"]
    assert "larger than 1000 bytes" in g["scrapes"][0]["error"]


def test_workload_view_joins_records_streams_and_versions() -> None:
    from vmagent.common.x509util import SpiffeId
    from vmagent.controlplane.proxies import ConnectedProxy

    record = {"namespace": "demo", "name": "api-1", "group": "api", "address": "10.0.0.2", "health": "unhealthy",
              "health_message": "GET :8080/healthz: connection refused", "connected": True}  # fmt: skip
    stream = {
        "proxy": "sidecar~10.0.0.2~api-1.demo~demo.svc.cluster.local",
        "node_id": "sidecar~10.0.0.2~api-1.demo~demo.svc.cluster.local",
        "state": "nacked",
        "types": {"LDS": {"state": "nacked", "error": "bad listener"}},
    }
    proxy = ConnectedProxy(
        key=stream["proxy"], identity=SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/api"), namespace="demo",
        ip="10.0.0.2", workload_name="api", metadata={"VMAGENT_VERSION": "9.9.9"},
    )  # fmt: skip
    obj = ConfigObject("WorkloadGroup", "networking.istio.io/v1", "demo", "api", {}, source="10-groups.yaml")
    d = Dashboard(
        lambda: [record], lambda: [stream], lambda: [proxy], lambda: [obj],
        lambda: ["10-groups.yaml: WorkloadGroup demo/api: spec.probe: bad"], list, dict,
    )  # fmt: skip
    [w] = d.workloads_json()
    assert w["agent_version"] == "9.9.9" and w["xds_state"] == "nacked"
    assert w["last_error"] == "health: GET :8080/healthz: connection refused"
    [o] = d.config_json()["objects"]
    assert o["issues"] == ["10-groups.yaml: WorkloadGroup demo/api: spec.probe: bad"]


def test_the_page_ships_in_the_package_and_loads_nothing_from_elsewhere() -> None:
    for name in UI_FILES:
        text = ui_file(name)
        assert text.strip()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, (
            name
        )
    index = ui_file("index.html")
    assert '<link rel="icon" href="data:,">' in index  # no /favicon.ico request (a 404 in the console)
