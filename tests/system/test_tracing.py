"""Tracing end to end: MeshConfig providers and Telemetry sampling give real traces from two VMs' Envoys.

One lab for the module (prefix ``vmtrace``): a control plane started with ``--mesh-config`` naming two
providers, the ``web`` (client, no app) and ``api`` (echo app) VMs with real agents and Envoys, and a host
``collector`` outside the mesh running ``vmagent/lab/tracecollector.py``, a minimal Zipkin v2 JSON and OTLP/HTTP
receiver (its docstring says why it is not a packaged collector):

* ``zipkin`` (the default provider): ``zipkin.istio-system.svc.cluster.local:9411``, a ServiceEntry
  (MESH_EXTERNAL) whose endpoint is the collector, so Envoy reports through that service's outbound
  cluster; ``traceContextOption: USE_B3_WITH_W3C_PROPAGATION`` (B3 and W3C headers read and written).
* ``otel``: OpenTelemetry over HTTP to the collector's IP on 4318 (a cluster the control plane makes).

Each test writes the mesh-wide Telemetry it needs (sampling, provider) and waits until both Envoys run
it (their config dump), so the tests do not depend on each other. A request from web's app to
``api.demo.svc.cluster.local`` crosses two proxies: web's outbound listener reports a CLIENT span, api's
inbound listener a SERVER span whose parent is the client span (Istio's layout: one span per proxy and
direction, no shared span context).
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.netns import LineLog
from vmagent.lab.tracecollector import read_spans
from vmagent.lab.wait import wait_for

API = "http://api.demo.svc.cluster.local:8080"
ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
OTEL_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"

COLLECTOR_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9411, name: http-zipkin, protocol: HTTP}}]
  endpoints: [{{address: {address}}}]
"""

MESH_CONFIG = """\
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
    traceContextOption: USE_B3_WITH_W3C_PROPAGATION
- name: otel
  opentelemetry:
    service: {address}
    port: 4318
    http: {{path: /v1/traces, timeout: 5s}}
defaultProviders:
  tracing: [zipkin]
"""


def telemetry_yaml(sampling: float, provider: str = "zipkin") -> str:
    return f"""\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {sampling}
    customTags:
      lab: {{literal: {{value: vmtrace}}}}
      user: {{header: {{name: x-user, defaultValue: none}}}}
"""


class Lab:
    def __init__(self, mesh: MeshLab, spans_file: Path) -> None:
        self.mesh = mesh
        self.spans_file = spans_file

    @property
    def web(self) -> VmHost:
        return self.mesh.vms["web"]

    @property
    def api(self) -> VmHost:
        return self.mesh.vms["api"]

    def spans(self) -> list[dict[str, Any]]:
        found = read_spans(self.spans_file)
        errors = [s for s in found if "error" in s]
        assert not errors, errors
        return found

    def use(self, sampling: float, provider: str = "zipkin") -> None:
        """Apply the mesh-wide Telemetry and wait until both Envoys' HTTP connection managers run it."""
        assert self.mesh.cp is not None
        self.mesh.cp.write_config("40-telemetry.yaml", telemetry_yaml(sampling, provider))
        want = {(ZIPKIN_TYPE if provider == "zipkin" else OTEL_TYPE, float(sampling))}
        for vm in (self.web, self.api):
            wait_for(
                lambda vm=vm: tracers(vm) == want, timeout=60, interval=0.5, what=f"{vm.name} tracing {want}"
            )
        # Envoy applies a new listener to new connections: the keep-alive connections web's Envoy holds to
        # api's keep the old tracer until they close. Probe with sampled requests until a whole trace
        # comes from the new provider.
        fmt = "zipkin" if provider == "zipkin" else "otlp"

        def settled() -> bool:
            trace_id = secrets.token_hex(16)
            self.get(f"traceparent: 00-{trace_id}-{secrets.token_hex(8)}-01")  # both providers read W3C
            return {s["format"] for s in self.trace(trace_id)} == {fmt}

        wait_for(settled, timeout=120, interval=0.5, what=f"a whole trace through {provider}")

    def get(self, *headers: str) -> dict[str, Any]:
        """GET /hello on api from web's app (an ordinary user); the echo app's JSON."""
        args: list[str] = []
        for h in headers:
            args += ["-H", h]
        r = self.web.curl(API + "/hello", *args)
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200", r.stdout + r.stderr
        doc: dict[str, Any] = json.loads(body)
        return doc

    def trace(self, trace_id: str, count: int = 2) -> list[dict[str, Any]]:
        """The spans of ``trace_id`` once ``count`` have arrived (Envoy flushes every few seconds)."""
        return wait_for(
            lambda: (
                found
                if len(found := [s for s in self.spans() if s["trace_id"] == trace_id]) >= count
                else None
            ),
            timeout=60,
            interval=0.5,
            what=f"{count} spans of trace {trace_id}",
        )


def tracers(vm: VmHost) -> set[tuple[str, float]]:
    """(tracer config type, random sampling %) of every HTTP connection manager in ``vm``'s dynamic listeners."""
    dump = vm.envoy_admin("/config_dump?resource=dynamic_listeners", timeout=10)
    found: set[tuple[str, float]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            t = node.get("tracing")
            if isinstance(t, dict) and "provider" in t:
                found.add(
                    (
                        t["provider"]["typed_config"]["@type"],
                        float(t.get("random_sampling", {}).get("value", 0)),
                    )
                )
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(dump))
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_root()
    require_tool("curl")
    workdir = Path(tmp_path_factory.mktemp("vmtrace"))
    mesh = MeshLab(workdir, prefix="vmtrace", subnet="10.230.71.0/24")
    try:
        collector = mesh.add_host("collector")
        spans_file = workdir / "spans.jsonl"
        proc = collector.popen(
            [
                sys.executable,
                "-m",
                "vmagent.lab.tracecollector",
                "--port",
                "9411",
                "--port",
                "4318",
                "--out",
                str(spans_file),
            ]
        )
        LineLog(proc).wait_line("listening", timeout=20)
        mesh_config = workdir / "mesh.yaml"
        mesh_config.write_text(MESH_CONFIG.format(address=collector.address))
        configs = {
            **DEMO_CONFIG,
            "30-collector.yaml": COLLECTOR_SERVICE.format(address=collector.address),
            "40-telemetry.yaml": telemetry_yaml(100),
        }
        mesh.add_control_plane(configs, ["--mesh-config", str(mesh_config)])
        mesh.add_vm("web", "demo/web", app_port=None)
        mesh.add_vm("api", "demo/api")
        mesh.wait_reachable(mesh.vms["web"], API + "/ready", timeout=90)
        yield Lab(mesh, spans_file)
    finally:
        mesh.close()


def test_a_request_from_web_to_api_is_one_trace_with_a_client_and_a_server_span(lab: Lab) -> None:
    lab.use(100)
    echo = lab.get("x-user: alice")
    # api's app got the B3 context web's Envoy started (and W3C, with USE_B3_WITH_W3C_PROPAGATION)
    trace_id = echo["headers"]["x-b3-traceid"]
    assert len(trace_id) == 32, echo["headers"]
    assert echo["headers"]["traceparent"].split("-")[1] == trace_id
    spans = lab.trace(trace_id)
    assert len(spans) == 2, spans
    by_kind = {s["kind"]: s for s in spans}
    client, server = by_kind["CLIENT"], by_kind["SERVER"]
    assert client["service"] == "web.demo" and server["service"] == "api.demo"
    assert client["parent_id"] == ""  # the trace starts at web's Envoy
    assert server["parent_id"] == client["id"] and server["id"] != client["id"]
    # what api's app received as its parent span is api's server span
    assert echo["headers"]["x-b3-spanid"] == server["id"]
    for s in spans:
        assert s["tags"]["lab"] == "vmtrace" and s["tags"]["user"] == "alice"
        assert s["tags"]["http.status_code"] == "200"
    assert client["tags"]["upstream_cluster"].startswith("outbound|8080||api.demo.svc.cluster.local")


def test_incoming_b3_and_traceparent_context_from_the_app_is_continued(lab: Lab) -> None:
    lab.use(100)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    echo = lab.get(f"x-b3-traceid: {trace_id}", f"x-b3-spanid: {parent}", "x-b3-sampled: 1")
    assert echo["headers"]["x-b3-traceid"] == trace_id
    spans = {s["kind"]: s for s in lab.trace(trace_id)}
    assert spans["CLIENT"]["parent_id"] == parent
    assert spans["SERVER"]["parent_id"] == spans["CLIENT"]["id"]

    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    echo = lab.get(f"traceparent: 00-{trace_id}-{parent}-01")
    assert echo["headers"]["x-b3-traceid"] == trace_id
    assert echo["headers"]["traceparent"].split("-")[1] == trace_id
    spans = {s["kind"]: s for s in lab.trace(trace_id)}
    assert spans["CLIENT"]["parent_id"] == parent
    assert spans["SERVER"]["parent_id"] == spans["CLIENT"]["id"]


def test_zero_percent_sampling_reports_no_spans(lab: Lab) -> None:
    lab.use(0)
    before = len(lab.spans())
    unsampled = [lab.get()["headers"].get("x-b3-traceid", "") for _ in range(20)]
    assert all(unsampled), "the context is still propagated"
    # a request the app marks as sampled is still traced (the decision travels with it); once its spans
    # are in, everything the Envoys buffered before it has been flushed too
    marker = secrets.token_hex(16)
    lab.get(f"x-b3-traceid: {marker}", f"x-b3-spanid: {secrets.token_hex(8)}", "x-b3-sampled: 1")
    lab.trace(marker)
    new = lab.spans()[before:]
    assert {s["trace_id"] for s in new} == {marker}, [s for s in new if s["trace_id"] != marker]
    assert not set(unsampled) & {s["trace_id"] for s in lab.spans()}


def test_opentelemetry_provider_exports_otlp_and_propagates_traceparent(lab: Lab) -> None:
    lab.use(100, provider="otel")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    echo = lab.get(f"traceparent: 00-{trace_id}-{parent}-01")
    assert echo["headers"]["traceparent"].split("-")[1] == trace_id
    spans = lab.trace(trace_id)
    assert {s["format"] for s in spans} == {"otlp"}
    by_kind = {s["kind"]: s for s in spans}
    client, server = by_kind["CLIENT"], by_kind["SERVER"]
    assert client["service"] == "web.demo" and server["service"] == "api.demo"
    assert client["parent_id"] == parent and server["parent_id"] == client["id"]
    # a new trace started by web's Envoy when the app sends no context
    fresh = lab.get()["headers"]["traceparent"].split("-")[1]
    spans = {s["kind"]: s for s in lab.trace(fresh)}
    assert spans["CLIENT"]["parent_id"] == "" and spans["SERVER"]["parent_id"] == spans["CLIENT"]["id"]


def test_a_telemetry_naming_an_undefined_provider_is_a_config_error(lab: Lab) -> None:
    """The control plane lists it with file, object and field (``/api/v1/config/errors``, the same list
    ``vmagent-cp config errors`` and the config-error metric read)."""
    cp = lab.mesh.cp
    assert cp is not None
    bad = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: typo, namespace: elsewhere}
spec:
  tracing:
  - providers: [{name: jaegr}]
"""
    path = cp.write_config("50-typo.yaml", bad)
    try:
        want = (
            "Telemetry elsewhere/typo: spec.tracing[0].providers[0].name: tracing provider 'jaegr' is not "
            "defined in MeshConfig extensionProviders (known: otel, zipkin)"
        )
        errors = wait_for(
            lambda: [e for e in cp.api("/api/v1/config/errors") if want in e],
            timeout=30,
            interval=0.5,
            what="the provider error",
        )
        assert errors[0].startswith(str(path)) or "50-typo.yaml" in errors[0], errors
    finally:
        path.unlink()
    wait_for(lambda: not any("jaegr" in e for e in cp.api("/api/v1/config/errors")), timeout=30, interval=0.5)
