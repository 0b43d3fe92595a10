"""Tracing: MeshConfig (extensionProviders, defaultProviders.tracing, defaultConfig.tracing) and the
Telemetry kind's ``tracing`` section put Envoy's Zipkin / OpenTelemetry tracer on the HTTP connection
managers, as Istio does (translate/tracing.py); bad values are refused naming file and field.

The proxy is the ``demo`` golden case's ``web`` (inbound port 8000, outbound to api on 8080).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from tests.unit.test_translate_support import GoldenCase, golden_cases, load_case
from vmagent.common.errors import ConfigError
from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.snapshots import mesh_options
from vmagent.controlplane.translate.configindex import ConfigIndex
from vmagent.controlplane.translate.tracing import provider_ref_issues
from vmagent.controlplane.xds.snapshot import CLUSTER, LISTENER

ZIPKIN = {"name": "zipkin", "zipkin": {"service": "10.9.9.9", "port": 9411}}
API_ZIPKIN = {"name": "api-zipkin", "zipkin": {"service": "api.demo.svc.cluster.local", "port": 8080}}
OTEL_HTTP = {
    "name": "otel",
    "opentelemetry": {
        "service": "otel.example.com",
        "port": 4318,
        "http": {"path": "/v1/traces", "timeout": "2s"},
    },
}
OTEL_GRPC = {"name": "otel-grpc", "opentelemetry": {"service": "otel.example.com", "port": 4317}}


def _case(mesh_config: dict[str, Any] | None = None, *extra: ConfigObject) -> GoldenCase:
    case = load_case(next(p for p in golden_cases() if p.stem == "demo"))
    kinds = ("ServiceEntry", "WorkloadEntry", "WorkloadGroup", "Telemetry")
    objects = [o for k in kinds for o in case.configs.list(k)]
    mesh = case.mesh
    if mesh_config is not None:
        parsed = mesh_options(mesh.trust_domain, mesh_config)
        mesh = dataclasses.replace(mesh, tracing=parsed.tracing)
    return dataclasses.replace(case, configs=ConfigIndex([*objects, *extra]), mesh=mesh)


def telemetry(
    ns: str, name: str, tracing: list[dict[str, Any]], labels: dict[str, str] | None = None
) -> ConfigObject:
    spec: dict[str, Any] = {"tracing": tracing}
    if labels:
        spec["selector"] = {"matchLabels": labels}
    return ConfigObject("Telemetry", "telemetry.istio.io/v1", ns, name, spec, source=f"{name}.yaml")


def tracing_by_direction(case: GoldenCase) -> dict[str, list[hcm.HttpConnectionManager.Tracing | None]]:
    """``inbound`` / ``outbound`` -> the tracing block of every HTTP connection manager (None: none)."""
    out: dict[str, list[hcm.HttpConnectionManager.Tracing | None]] = {"inbound": [], "outbound": []}
    for listener in case.build()[LISTENER].values():
        side = "inbound" if listener.traffic_direction == base_pb2.INBOUND else "outbound"
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for f in chain.filters:
                if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                    inner = hcm.HttpConnectionManager()
                    f.typed_config.Unpack(inner)
                    out[side].append(inner.tracing if inner.HasField("tracing") else None)
    assert out["inbound"] and out["outbound"], "the case has HTTP on both sides"
    return out


def zipkin_of(t: hcm.HttpConnectionManager.Tracing) -> zipkin_pb2.ZipkinConfig:
    assert t.provider.name == "envoy.tracers.zipkin"
    zc = zipkin_pb2.ZipkinConfig()
    t.provider.typed_config.Unpack(zc)
    return zc


def only(blocks: list[hcm.HttpConnectionManager.Tracing | None]) -> hcm.HttpConnectionManager.Tracing:
    assert all(b is not None for b in blocks), blocks
    first = blocks[0]
    assert first is not None and all(b == first for b in blocks)
    return first


def test_without_tracing_config_the_output_is_unchanged() -> None:
    base = _case().build()
    assert _case({}).build() == base
    # providers defined but not chosen by anyone: still no tracer
    assert _case({"extensionProviders": [ZIPKIN]}).build() == base
    sides = tracing_by_direction(_case({"extensionProviders": [ZIPKIN]}))
    assert sides["inbound"] == [None] * len(sides["inbound"])


def test_default_provider_zipkin_on_both_sides_with_istio_defaults() -> None:
    case = _case({"extensionProviders": [ZIPKIN], "defaultProviders": {"tracing": ["zipkin"]}})
    sides = tracing_by_direction(case)
    for side in ("inbound", "outbound"):
        t = only(sides[side])
        assert t.random_sampling.value == 1.0  # Istio's default
        assert t.client_sampling.value == 100.0 and t.overall_sampling.value == 100.0
        zc = zipkin_of(t)
        assert zc.collector_cluster == "tracing|9411||10.9.9.9"
        assert zc.collector_endpoint == "/api/v2/spans"
        assert zc.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_JSON
        assert zc.trace_id_128bit and zc.shared_span_context.value is False
        assert zc.trace_context_option == zipkin_pb2.ZipkinConfig.USE_B3
    cluster = case.build()[CLUSTER]["tracing|9411||10.9.9.9"]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    ep = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (ep.address, ep.port_value) == ("10.9.9.9", 9411)


def test_a_mesh_service_as_collector_uses_its_outbound_cluster() -> None:
    case = _case({"extensionProviders": [API_ZIPKIN], "defaultProviders": {"tracing": ["api-zipkin"]}})
    built = case.build()
    t = only(tracing_by_direction(case)["outbound"])
    assert zipkin_of(t).collector_cluster == "outbound|8080||api.demo.svc.cluster.local"
    assert zipkin_of(t).collector_hostname == "api.demo.svc.cluster.local"
    assert not [n for n in built[CLUSTER] if n.startswith("tracing|")]


def test_legacy_zipkin_address_and_sampling_and_custom_tags() -> None:
    mesh = {
        "defaultConfig": {
            "tracing": {
                "zipkin": {"address": "zipkin.example.com:9411"},
                "sampling": 25.5,
                "maxPathTagLength": 99,
                "customTags": {"team": {"literal": {"value": "blue"}}},
            }
        }
    }
    case = _case(mesh)
    t = only(tracing_by_direction(case)["inbound"])
    assert t.random_sampling.value == 25.5
    assert t.max_path_tag_length.value == 99
    assert [(c.tag, c.literal.value) for c in t.custom_tags] == [("team", "blue")]
    assert case.build()[CLUSTER]["tracing|9411||zipkin.example.com"].type == cluster_pb2.Cluster.STRICT_DNS
    # enableTracing: false turns the legacy provider off
    off = _case({**mesh, "enableTracing": False})
    assert set(map(type, tracing_by_direction(off)["inbound"])) == {type(None)}


def test_telemetry_levels_merge_and_the_most_specific_wins() -> None:
    mesh = {"extensionProviders": [ZIPKIN, OTEL_HTTP]}
    root = telemetry(
        "istio-system", "mesh", [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10}]
    )
    ns = telemetry(
        "demo",
        "ns",
        [
            {
                "randomSamplingPercentage": 50,
                "customTags": {
                    "env": {"environment": {"name": "POD_ENV", "defaultValue": "prod"}},
                    "user": {"header": {"name": "x-user", "defaultValue": "anon"}},
                    "zone": {"literal": {"value": "eu"}},
                },
            }
        ],
    )
    t = only(tracing_by_direction(_case(mesh, root, ns))["outbound"])
    assert zipkin_of(t).collector_cluster == "tracing|9411||10.9.9.9"  # provider from the root namespace
    assert t.random_sampling.value == 50  # sampling from the namespace
    tags = {c.tag: c for c in t.custom_tags}
    assert tags["env"].environment.name == "POD_ENV" and tags["env"].environment.default_value == "prod"
    assert (
        tags["user"].request_header.name == "x-user" and tags["user"].request_header.default_value == "anon"
    )
    assert tags["zone"].literal.value == "eu"
    wl = telemetry(
        "demo", "web", [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 0}], {"app": "web"}
    )
    t = only(tracing_by_direction(_case(mesh, root, ns, wl))["inbound"])
    assert t.provider.name == "envoy.tracers.opentelemetry" and t.random_sampling.value == 0
    oc = opentelemetry_pb2.OpenTelemetryConfig()
    t.provider.typed_config.Unpack(oc)
    assert oc.http_service.http_uri.uri == "http://otel.example.com:4318/v1/traces"
    assert oc.http_service.http_uri.cluster == "tracing|4318||otel.example.com"
    assert oc.http_service.http_uri.timeout.seconds == 2
    assert oc.service_name == "web.demo"
    # a selector for another workload does not apply
    other = telemetry("demo", "api", [{"randomSamplingPercentage": 0}], {"app": "api"})
    assert only(tracing_by_direction(_case(mesh, root, ns, other))["inbound"]).random_sampling.value == 50


def test_match_mode_and_disable_span_reporting() -> None:
    mesh = {"extensionProviders": [ZIPKIN], "defaultProviders": {"tracing": ["zipkin"]}}
    client_off = telemetry("demo", "t", [{"match": {"mode": "CLIENT"}, "disableSpanReporting": True}])
    sides = tracing_by_direction(_case(mesh, client_off))
    assert sides["outbound"] == [None] * len(sides["outbound"])
    assert only(sides["inbound"]).random_sampling.value == 1.0
    all_off = telemetry("demo", "t", [{"disableSpanReporting": True}])
    sides = tracing_by_direction(_case(mesh, all_off))
    assert {type(b) for b in sides["inbound"] + sides["outbound"]} == {type(None)}


def test_otel_grpc_gets_an_http2_cluster() -> None:
    case = _case({"extensionProviders": [OTEL_GRPC], "defaultProviders": {"tracing": ["otel-grpc"]}})
    t = only(tracing_by_direction(case)["outbound"])
    oc = opentelemetry_pb2.OpenTelemetryConfig()
    t.provider.typed_config.Unpack(oc)
    assert oc.grpc_service.envoy_grpc.cluster_name == "tracing|4317||otel.example.com"
    assert oc.grpc_service.envoy_grpc.authority == "otel.example.com"
    cluster = case.build()[CLUSTER]["tracing|4317||otel.example.com"]
    assert (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in cluster.typed_extension_protocol_options
    )


def test_unknown_provider_in_a_telemetry_gives_no_tracer_and_an_issue() -> None:
    mesh = {"extensionProviders": [ZIPKIN]}
    bad = telemetry("demo", "t", [{"providers": [{"name": "jaeger"}]}])
    sides = tracing_by_direction(_case(mesh, bad))
    assert {type(b) for b in sides["inbound"] + sides["outbound"]} == {type(None)}
    issues = provider_ref_issues([bad], mesh_options("cluster.local", mesh).tracing)
    assert [str(i) for i in issues] == [
        "t.yaml: Telemetry demo/t: spec.tracing[0].providers[0].name: tracing provider 'jaeger' is not "
        "defined in MeshConfig extensionProviders (known: zipkin)"
    ]


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        (
            {"defaultConfig": {"tracing": {"sampling": 101}}},
            "m.yaml: defaultConfig.tracing.sampling: 101 is not a percentage between 0 and 100",
        ),
        (
            {"defaultConfig": {"tracing": {"sampling": -1}}},
            "defaultConfig.tracing.sampling: -1 is not a percentage",
        ),
        (
            {"defaultProviders": {"tracing": ["nope"]}},
            "m.yaml: defaultProviders.tracing: 'nope' is not a tracing provider of extensionProviders (known: none)",
        ),
        (
            {"extensionProviders": [{"name": "z", "zipkin": {"service": "a.b", "port": 0}}]},
            "m.yaml: extensionProviders[0].zipkin.port: required, a port number",
        ),
        (
            {"extensionProviders": [{"name": "z", "zipkin": {"port": 9411}}]},
            "extensionProviders[0].zipkin.service: required",
        ),
        (
            {"extensionProviders": [{"name": "z", "datadog": {"service": "a", "port": 1}}]},
            "extensionProviders[0].datadog: not supported by vmagent",
        ),
        ({"extensionProviders": [ZIPKIN, ZIPKIN]}, "extensionProviders[1].name: 'zipkin' is defined twice"),
        (
            {
                "extensionProviders": [
                    {"name": "z", "zipkin": {"service": "a", "port": 1, "traceContextOption": "W3C"}}
                ]
            },
            "traceContextOption: 'W3C' is not USE_B3 or USE_B3_WITH_W3C_PROPAGATION",
        ),
        (
            {"defaultConfig": {"tracing": {"zipkin": {"address": "nohost"}}}},
            "defaultConfig.tracing.zipkin.address: required, HOST:PORT",
        ),
        (
            {"defaultConfig": {"tracing": {"datadog": {}}}},
            "defaultConfig.tracing.datadog: not supported by vmagent",
        ),
    ],
)
def test_bad_mesh_config_is_refused_naming_the_field(mesh: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        mesh_options("cluster.local", mesh, source="m.yaml")
    assert message in str(err.value)


def test_telemetry_sampling_out_of_range_is_an_error_naming_the_field() -> None:
    text = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: demo}
spec:
  tracing:
  - randomSamplingPercentage: 150
"""
    result = load_text(text, "t.yaml")
    assert [str(e) for e in result.errors] and "spec.tracing[0].randomSamplingPercentage" in str(
        result.errors[0]
    )
    assert str(result.errors[0]).startswith("t.yaml: Telemetry demo/t: ")
    ok = load_text(text.replace("150", "0"), "t.yaml")
    assert ok.ok and not [w for w in ok.warnings if "tracing" in w.path and "not supported" in w.message]


def test_validate_cli_checks_provider_names_against_the_mesh_config(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: demo}\n"
        "spec:\n  tracing:\n  - providers: [{name: jaeger}]\n"
    )
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "extensionProviders:\n- {name: zipkin, zipkin: {service: zipkin.example.com, port: 9411}}\n"
    )
    cmd = [sys.executable, "-m", "vmagent.cli.controlplane", "validate", "-f", str(tmp_path / "t.yaml")]
    r = subprocess.run([*cmd, "--mesh-config", str(mesh)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert (
        f"{tmp_path / 't.yaml'}: Telemetry demo/t: spec.tracing[0].providers[0].name: tracing provider "
        "'jaeger' is not defined in MeshConfig extensionProviders (known: zipkin)"
    ) in r.stderr
    mesh.write_text(
        "extensionProviders:\n- {name: jaeger, zipkin: {service: zipkin.example.com, port: 9411}}\n"
    )
    r = subprocess.run([*cmd, "--mesh-config", str(mesh)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
