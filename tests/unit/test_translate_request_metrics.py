"""Translation for Istio's request metrics: gRPC access loggers to the agent, with the reporter and the
peer table in their ``log_name``, and MeshConfig ``defaultProviders.metrics`` turning them off."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.unit.test_translate_support import golden_cases, load_case
from vmagent.common import constants
from vmagent.common.errors import ConfigError
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.snapshots import mesh_options
from vmagent.controlplane.translate.build import translation_key
from vmagent.controlplane.translate.configindex import ConfigIndex
from vmagent.controlplane.translate.requestmetrics import peer_table
from vmagent.controlplane.xds.snapshot import LISTENER


def group(ns: str, name: str, sa: str | None, labels: dict[str, str] | None = None) -> ConfigObject:
    spec: dict[str, Any] = {"template": {"serviceAccount": sa} if sa else {}}
    if labels:
        spec["metadata"] = {"labels": labels}
    return ConfigObject("WorkloadGroup", "networking.istio.io/v1", ns, name, spec)


def test_peer_table_from_workload_groups() -> None:
    configs = ConfigIndex(
        [
            group("demo", "web", "web", {"app": "web", "version": "v2"}),
            group("demo", "api", None),
            group("shop", "a", "shared"),
            group("shop", "b", "shared"),
        ]
    )
    assert peer_table(configs, "example.org") == {
        "spiffe://example.org/ns/demo/sa/default": ["api", "", ""],
        "spiffe://example.org/ns/demo/sa/web": ["web", "web", "v2"],
    }, "a principal two groups share names no workload"


def _loggers(listeners: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """listener name -> [(logger name, log_name), ...] over its HCMs and tcp_proxies."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, lst in listeners.items():
        found = out.setdefault(name, [])
        for chain in [*lst.filter_chains, lst.default_filter_chain]:
            for f in chain.filters:
                for cls in (hcm.HttpConnectionManager, tcp_proxy_pb2.TcpProxy):
                    if f.typed_config.Is(cls.DESCRIPTOR):
                        inner = cls()
                        f.typed_config.Unpack(inner)
                        for log in inner.access_log:
                            cfg: Any = (
                                als_pb2.HttpGrpcAccessLogConfig()
                                if log.name.endswith("http_grpc")
                                else als_pb2.TcpGrpcAccessLogConfig()
                            )
                            log.typed_config.Unpack(cfg)
                            assert (
                                cfg.common_config.grpc_service.envoy_grpc.cluster_name
                                == constants.ALS_CLUSTER
                            )
                            found.append((log.name, cfg.common_config.log_name))
    return out


def test_every_listener_logs_to_the_agent_with_its_reporter() -> None:
    case = load_case(golden_cases()[0])
    loggers = _loggers(case.build()[LISTENER])
    assert loggers["virtualInbound"] and loggers["virtualOutbound"]
    for name, found in loggers.items():
        assert found, f"{name} has no request-metrics logger"
        for logger, lname in found:
            assert logger in ("envoy.access_loggers.http_grpc", "envoy.access_loggers.tcp_grpc")
            doc = json.loads(lname)
            if name == "virtualInbound":
                assert doc["reporter"] == "destination" and isinstance(doc["peers"], dict)
            else:
                assert doc == {"reporter": "source"}


def test_default_providers_without_prometheus_turn_metrics_off() -> None:
    case = load_case(golden_cases()[0])
    off = dataclasses.replace(
        case, mesh=mesh_options(case.mesh.trust_domain, {"defaultProviders": {"metrics": []}})
    )
    assert not any(_loggers(off.build()[LISTENER]).values())
    assert mesh_options("cluster.local", {}).request_metrics
    assert mesh_options("cluster.local", {"defaultProviders": {"metrics": ["prometheus"]}}).request_metrics


def test_only_proxies_with_the_agents_access_log_cluster_get_the_loggers() -> None:
    """An Envoy without ``vmagent-als`` in its bootstrap (an older agent, another client) would reject
    listeners naming it; the agent's bootstrap says it has it in the node metadata ``VMAGENT_ALS``."""
    case = load_case(golden_cases()[0])
    without = dataclasses.replace(case, proxy=dataclasses.replace(case.proxy, access_log_service=False))
    assert not any(_loggers(without.build()[LISTENER]).values())
    assert translation_key(without.proxy) != translation_key(case.proxy)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"defaultProviders": []}, "defaultProviders"),
        ({"defaultProviders": {"metrics": "prometheus"}}, "defaultProviders.metrics"),
        ({"defaultProviders": {"metrics": ["stackdriver"]}}, "defaultProviders.metrics"),
        ({"defaultProviders": {"metric": []}}, "defaultProviders.metric"),
    ],
)
def test_bad_default_providers_name_the_field(cfg: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        mesh_options("cluster.local", cfg, source="mesh.yaml")
    assert f"mesh.yaml: {field}:" in str(err.value)
