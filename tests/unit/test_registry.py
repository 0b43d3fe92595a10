"""The ServiceEntry/WorkloadEntry registry: selection by labels, port mapping, identities, health."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.snapshot import ConfigSet, StaticSource
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.registry.services import ConfigRegistry, find_workload_group

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  addresses: [240.240.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: http}
  - {number: 9000, name: grpc, protocol: GRPC, targetPort: 9001}
  workloadSelector:
    labels: {app: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-1, namespace: demo}
spec:
  address: 10.0.0.1
  labels: {app: api, version: v1}
  ports: {http: 18080}
  serviceAccount: api-sa
  locality: us-east1/b
  weight: 3
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-2, namespace: demo, labels: {version: v2}}
spec:
  address: 10.0.0.2
  labels: {app: api, version: v1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-1, namespace: demo}
spec:
  address: 10.0.0.3
  labels: {app: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-other-ns, namespace: other}
spec:
  address: 10.0.0.4
  labels: {app: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api, namespace: demo}
spec:
  template: {serviceAccount: api-sa}
"""


def objects(text: str) -> list[ConfigObject]:
    result = load_text(textwrap.dedent(text), "mesh.yaml")
    assert [str(e) for e in result.errors] == []
    return result.objects


def registry(text: str, **kw: Any) -> tuple[ConfigRegistry, StaticSource, ConfigSet]:
    src = StaticSource(objects(text))
    configs = ConfigSet([src])
    return ConfigRegistry(configs, "mesh.example", **kw), src, configs


def test_workload_selector_picks_entries_of_same_namespace_by_labels_and_maps_ports() -> None:
    reg, _, _ = registry(MESH)
    (svc,) = reg.services()
    assert svc == Service(
        hostname="api.demo.svc.cluster.local",
        namespace="demo",
        ports=(Port(8080, "HTTP", "http"), Port(9000, "GRPC", "grpc", target_port=9001)),
        addresses=("240.240.0.10",),
        resolution="STATIC",
        location="MESH_INTERNAL",
        endpoints=(
            Endpoint(
                address="10.0.0.1",
                labels={"app": "api", "version": "v1"},
                ports={"http": 18080, "grpc": 9001},
                weight=3,
                locality="us-east1/b",
                service_account="spiffe://mesh.example/ns/demo/sa/api-sa",
                workload_name="api-1",
                namespace="demo",
            ),
            Endpoint(
                address="10.0.0.2",
                labels={"app": "api", "version": "v2"},  # metadata labels override spec labels, as in Istio
                ports={"http": 8080, "grpc": 9001},
                workload_name="api-2",
                namespace="demo",
            ),
        ),
        source="ServiceEntry demo/api",
    )


def test_inline_endpoints_dns_hosts_and_istio_defaults() -> None:
    reg, _, _ = registry(
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: db}
        spec:
          hosts: [db.internal, db2.internal]
          ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
          resolution: STATIC
          endpoints:
          - {address: 192.168.0.5, ports: {tcp-pg: 15432}, labels: {role: primary}, serviceAccount: pg}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext}
        spec:
          hosts: [www.example.com]
          ports: [{number: 443, name: tls, protocol: TLS}]
          resolution: DNS
        """
    )
    db, db2, ext = reg.services()
    assert (db.hostname, db2.hostname, ext.hostname) == ("db.internal", "db2.internal", "www.example.com")
    assert (
        db.endpoints
        == db2.endpoints
        == (
            Endpoint(
                address="192.168.0.5",
                labels={"role": "primary"},
                ports={"tcp-pg": 15432},
                service_account="spiffe://mesh.example/ns/default/sa/pg",
                namespace="default",
            ),
        )
    )
    assert (ext.location, ext.resolution) == ("MESH_EXTERNAL", "DNS")
    assert ext.endpoints == (Endpoint(address="www.example.com", ports={"tls": 443}),)


def test_registry_follows_config_changes_and_extra_entries() -> None:
    extra: list[ConfigObject] = []
    reg, src, _ = registry(MESH, extra_workload_entries=lambda: list(extra))
    events: list[int] = []
    reg.subscribe(lambda: events.append(1))
    assert [e.address for e in reg.services()[0].endpoints] == ["10.0.0.1", "10.0.0.2"]

    auto = objects(
        """
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: api-10.0.0.9, namespace: demo}
        spec: {address: 10.0.0.9, labels: {app: api}}
        """
    )
    extra.extend(auto)
    reg.notify_changed()
    assert events == [1]
    assert sorted(e.address for e in reg.services()[0].endpoints) == ["10.0.0.1", "10.0.0.2", "10.0.0.9"]

    src.set([o for o in objects(MESH) if o.name != "api-1"])
    assert events == [1, 1]
    assert sorted(e.address for e in reg.services()[0].endpoints) == ["10.0.0.2", "10.0.0.9"]


def test_unhealthy_status_condition_marks_endpoint_unhealthy() -> None:
    we = next(o for o in objects(MESH) if o.name == "api-2")
    status = {"conditions": [{"type": "Healthy", "status": "False"}]}
    unhealthy = _with_status(we, status)
    se = objects(MESH)[0]
    reg = ConfigRegistry(ConfigSet([StaticSource([se, unhealthy])]), "mesh.example")
    assert [(e.address, e.healthy) for e in reg.services()[0].endpoints] == [("10.0.0.2", False)]
    healthy = _with_status(we, {"conditions": [{"type": "Healthy", "status": "True"}]})
    reg = ConfigRegistry(ConfigSet([StaticSource([se, healthy])]), "mesh.example")
    assert [(e.address, e.healthy) for e in reg.services()[0].endpoints] == [("10.0.0.2", True)]


def _with_status(obj: ConfigObject, status: dict[str, Any]) -> ConfigObject:
    clone = dataclasses.replace(obj)
    object.__setattr__(clone, "status", status)  # works whether or not the model declares ``status`` yet
    return clone


def test_find_workload_group() -> None:
    _, _, configs = registry(MESH)
    group = find_workload_group(configs, "demo", "api")
    assert group is not None and group.spec == {"template": {"serviceAccount": "api-sa"}}
    assert find_workload_group(configs, "other", "api") is None
