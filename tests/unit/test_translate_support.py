"""Helpers for the translation tests: golden cases (Istio YAML in, Envoy JSON out) and small builders.

A golden case is ``tests/testdata/golden/NAME.yaml``: Istio objects as users write them (validated by the
real loader, turned into services by the real registry) plus one test-only document ``kind:
TranslateTest`` describing the proxy (``proxy``: namespace, labels, ipAddresses, identity, workloadName
or ports, inboundAddress, mode), the mesh options (``mesh``) and WorkloadEntries to mark unhealthy
(``unhealthy``). Its expected output is ``NAME.json``: every resource through ``MessageToDict``, by xDS
type and name, plus the DNS name table. ``UPDATE_GOLDEN=1 pytest tests/unit/test_translate_golden.py``
rewrites the JSON files; review the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict

from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.snapshot import ConfigSnapshot
from vmagent.controlplane.model import ConfigObject, Port, Service
from vmagent.controlplane.registry.services import ConfigRegistry
from vmagent.controlplane.translate import (
    ConfigIndex,
    MeshOptions,
    ProxyInfo,
    Resources,
    build_name_table,
    build_proxy_resources,
    workload_ports,
)
from vmagent.controlplane.xds.snapshot import short_name

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "testdata" / "golden"
TRUST_DOMAIN = "cluster.local"


class _View:
    """The config view the registry reads, over fixed objects (no changes, so subscribe is a no-op)."""

    def __init__(self, objects: list[ConfigObject]) -> None:
        self._snap = ConfigSnapshot({o.key: o for o in objects})

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None:
        return self._snap.get(kind, namespace, name)

    def list(self, kind: str, namespace: str | None = None) -> list[ConfigObject]:
        return self._snap.list(kind, namespace)

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        del callback


@dataclass
class GoldenCase:
    name: str
    proxy: ProxyInfo
    mesh: MeshOptions
    services: list[Service]
    configs: ConfigIndex

    def build(self) -> Resources:
        return build_proxy_resources(self.proxy, self.services, self.configs, self.mesh)


def _mark_unhealthy(obj: ConfigObject) -> ConfigObject:
    status = {"conditions": [{"type": "Healthy", "status": "False"}]}
    return dataclasses.replace(obj, status=status)


def load_case(path: Path) -> GoldenCase:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    test = next(d for d in docs if d.get("kind") == "TranslateTest")
    istio = [d for d in docs if d.get("kind") != "TranslateTest"]
    result = load_text(yaml.safe_dump_all(istio), str(path))
    assert result.ok, [str(e) for e in result.errors]
    unhealthy = set(test.get("unhealthy", []))
    objects = [
        _mark_unhealthy(o) if o.kind == "WorkloadEntry" and o.name in unhealthy else o for o in result.objects
    ]
    services = ConfigRegistry(_View(objects), TRUST_DOMAIN).services()

    m = test.get("mesh", {})
    mesh = MeshOptions(outbound_traffic_policy=m.get("outboundTrafficPolicy", "ALLOW_ANY"))
    p = test["proxy"]
    ips = tuple(p.get("ipAddresses", ()))
    if "ports" in p:
        ports = tuple(Port(number=q["number"], protocol=q["protocol"], name=q["name"]) for q in p["ports"])
    else:
        ports = workload_ports(services, p["namespace"], p.get("workloadName", ""), ips)
    proxy = ProxyInfo(
        namespace=p["namespace"],
        labels=dict(p.get("labels", {})),
        ip_addresses=ips,
        identity=p.get("identity", ""),
        ports=ports,
        mode=p.get("mode", "sidecar"),
        inbound_address=p.get("inboundAddress", "127.0.0.1"),
    )
    return GoldenCase(path.stem, proxy, mesh, services, ConfigIndex(objects))


def golden_cases() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*.yaml"))


def render(case: GoldenCase) -> dict[str, Any]:
    """The JSON document compared with the golden file."""
    resources = case.build()
    out: dict[str, Any] = {
        short_name(t): {n: MessageToDict(m, preserving_proto_field_name=True) for n, m in named.items()}
        for t, named in resources.items()
    }
    out["nameTable"] = build_name_table(case.services, case.proxy.namespace)
    return out


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
