"""The Telemetry kind's accessLogging switches a workload's access log on or off (most specific wins).

Telemetry objects are built directly as ConfigObjects here: the kind's schema is validated by the config
layer; translation reads only plain spec fields (selector.matchLabels, accessLogging[].disabled/match).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from tests.unit.test_translate_support import GoldenCase, golden_cases, load_case
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate.accesslog import AccessLogSettings
from vmagent.controlplane.translate.build import label_keys_read
from vmagent.controlplane.translate.configindex import ConfigIndex
from vmagent.controlplane.xds.snapshot import LISTENER


def telemetry(ns: str, name: str, disabled: bool, labels: dict[str, str] | None = None) -> ConfigObject:
    spec: dict[str, Any] = {"accessLogging": [{"providers": [{"name": "envoy"}], "disabled": disabled}]}
    if labels:
        spec["selector"] = {"matchLabels": labels}
    return ConfigObject("Telemetry", "telemetry.istio.io/v1", ns, name, spec)


def log_paths(case: GoldenCase) -> set[str]:
    """The file paths of the access logs on the proxy's HTTP connection managers (empty: no log)."""
    paths = set()
    for listener in case.build()[LISTENER].values():
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for f in chain.filters:
                if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                    inner = hcm.HttpConnectionManager()
                    f.typed_config.Unpack(inner)
                    for log in inner.access_log:
                        if log.name != "envoy.access_loggers.file":
                            continue  # the request-metrics logger to the agent
                        cfg = file_pb2.FileAccessLog()
                        log.typed_config.Unpack(cfg)
                        paths.add(cfg.path)
    return paths


def _case(*extra: ConfigObject, mesh_log: str | None = None) -> GoldenCase:
    case = load_case(golden_cases()[0])
    everything = [*_all(case.configs), *extra]
    mesh = case.mesh
    if mesh_log is not None:
        mesh = dataclasses.replace(mesh, access_log=AccessLogSettings(mesh_log))
    return dataclasses.replace(case, configs=ConfigIndex(everything), mesh=mesh)


def _all(configs: ConfigIndex) -> list[ConfigObject]:
    kinds = {"ServiceEntry", "VirtualService", "DestinationRule", "Gateway", "WorkloadEntry", "WorkloadGroup",
             "PeerAuthentication", "RequestAuthentication", "AuthorizationPolicy", "Telemetry"}  # fmt: skip
    return [o for k in sorted(kinds) for o in configs.list(k)]


def test_without_telemetry_mesh_config_decides() -> None:
    assert log_paths(_case()) == set()
    assert log_paths(_case(mesh_log="/var/log/mesh.log")) == {"/var/log/mesh.log"}


def test_namespace_telemetry_turns_logging_on_to_stdout_and_a_workload_one_turns_it_off() -> None:
    case = _case()
    ns, labels = case.proxy.namespace, dict(case.proxy.labels)
    assert labels, "the golden case's proxy has labels to select on"
    assert log_paths(_case(telemetry(ns, "all", disabled=False))) == {"/dev/stdout"}
    off = telemetry(ns, "this-one", disabled=True, labels=labels)
    assert log_paths(_case(telemetry(ns, "all", disabled=False), off)) == set()
    # a selector for other labels does not apply
    other = telemetry(ns, "other", disabled=True, labels={"app": "not-this-workload"})
    assert log_paths(_case(telemetry(ns, "all", disabled=False), other)) == {"/dev/stdout"}


def test_namespace_telemetry_overrides_the_root_namespace_and_mesh_config() -> None:
    case = _case()
    root = telemetry(case.mesh.root_namespace, "mesh-default", disabled=False)
    off = telemetry(case.proxy.namespace, "quiet", disabled=True)
    assert log_paths(_case(root, mesh_log="/var/log/mesh.log")) == {"/var/log/mesh.log"}
    assert log_paths(_case(root, off, mesh_log="/var/log/mesh.log")) == set()


def test_telemetry_selector_labels_are_read_for_snapshot_sharing() -> None:
    index = ConfigIndex([telemetry("demo", "t", disabled=True, labels={"tier": "backend"})])
    assert "tier" in label_keys_read(index)
