"""Shared translation: proxies with the same translation key share one snapshot, built once per input set.

Each proxy still gets exactly what ``build_proxy_resources`` gives it on its own; these tests compare
the shared result with that reference, resource by resource.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.unit.test_translate_support import golden_cases, load_case
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane import snapshots
from vmagent.controlplane.config import ConfigSet
from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.snapshot import StaticSource
from vmagent.controlplane.mesh import MeshController
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.proxies import ConnectedProxy
from vmagent.controlplane.registry.services import ConfigRegistry
from vmagent.controlplane.snapshots import Translator
from vmagent.controlplane.translate import MeshOptions, Resources, all_messages, build_proxy_resources
from vmagent.controlplane.translate.build import (
    build_outbound_resources,
    label_keys_read,
    outbound_key,
    translation_key,
    with_labels_read,
)
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Packer, Snapshot

TRUST = "cluster.local"

MESH = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: web, namespace: demo}
spec:
  metadata:
    labels: {app: web}
  template:
    serviceAccount: web
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  workloadSelector:
    labels: {app: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-1, namespace: demo}
spec:
  address: 10.0.0.10
  serviceAccount: api
  labels: {app: api}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: demo}
spec:
  hosts: [web.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9000, name: http-web, protocol: HTTP}
  workloadSelector:
    labels: {app: web-served}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-served, namespace: demo}
spec:
  address: 10.0.1.99
  serviceAccount: web
  labels: {app: web-served}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  http:
  - name: from-canary
    match:
    - uri: {prefix: /canary}
      sourceLabels: {track: canary}
    fault:
      abort: {httpStatus: 503, percentage: {value: 100}}
    route:
    - destination: {host: api.demo.svc.cluster.local}
  - route:
    - destination: {host: api.demo.svc.cluster.local}
"""


def objects(text: str) -> list[ConfigObject]:
    result = load_text(text, "mesh.yaml")
    assert result.ok, [str(e) for e in result.errors]
    return result.objects


def entry(name: str, address: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata: {{name: {name}, namespace: demo}}\n"
        f"spec: {{address: {address}, serviceAccount: api, labels: {{app: api}}}}\n"
    )


class Mesh:
    """A ConfigSet over a static source, the registry over it, and the Translator."""

    def __init__(self, text: str = MESH) -> None:
        self.source = StaticSource(objects(text))
        self.configs = ConfigSet([self.source])
        self.registry = ConfigRegistry(self.configs, TRUST)
        self.translator = Translator(self.configs, MeshOptions(trust_domain=TRUST))

    def translate(self, proxy: ConnectedProxy) -> Snapshot:
        return self.translator(proxy, self.registry.services())

    def reference(self, proxy: ConnectedProxy) -> Snapshot:
        """What translating this proxy alone gives (no sharing)."""
        services = self.registry.services()
        info = self.translator.proxy_info(proxy, services)
        resources = build_proxy_resources(info, services, self.configs.snapshot(), self.translator.mesh)
        return Snapshot.from_messages(all_messages(resources))


def vm(
    ip: str, labels: dict[str, str] | None = None, name: str = "", gateway: bool = False
) -> ConnectedProxy:
    ident = SpiffeId(TRUST, "demo", "web")
    kind = "router" if gateway else "sidecar"
    return ConnectedProxy(
        key=f"{kind}~{ip}~{name or 'web-' + ip}.demo~demo.svc.cluster.local",
        identity=ident,
        namespace="demo",
        ip=ip,
        workload_name="web",
        labels=dict(labels if labels is not None else {"app": "web"}),
        gateway=gateway,
    )


def serialized(resources: Resources) -> dict[str, dict[str, bytes]]:
    return {
        t: {n: m.SerializeToString(deterministic=True) for n, m in r.items()} for t, r in resources.items()
    }


def assert_same_content(got: Snapshot, want: Snapshot) -> None:
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert dict(got.get(t).versions) == dict(want.get(t).versions), t
        assert got.version(t) == want.version(t)


def test_vms_of_one_group_share_one_snapshot_equal_to_their_own_translation() -> None:
    mesh = Mesh()
    a, b = vm("10.0.1.1"), vm("10.0.1.2")
    sa, sb = mesh.translate(a), mesh.translate(b)
    assert sa is sb
    assert_same_content(sa, mesh.reference(a))
    assert_same_content(sb, mesh.reference(b))
    assert "outbound|8080||api.demo.svc.cluster.local" in sa.get(ENDPOINT).resources


def test_other_labels_get_their_own_routes_and_still_share_endpoints() -> None:
    mesh = Mesh()
    plain, canary = vm("10.0.1.1"), vm("10.0.1.2", {"app": "web", "track": "canary"})
    sp, sc = mesh.translate(plain), mesh.translate(canary)
    assert sp is not sc
    assert_same_content(sp, mesh.reference(plain))
    assert_same_content(sc, mesh.reference(canary))
    # The sourceLabels match applies to the canary only: its route config differs ...
    assert sp.get(ROUTE).versions["8080"] != sc.get(ROUTE).versions["8080"]
    assert b"/canary" in sc.get(ROUTE).resources["8080"].value
    assert b"/canary" not in sp.get(ROUTE).resources["8080"].value
    # ... but the clusters and endpoints are the same packed messages, not copies.
    assert sp.get(ENDPOINT) is sc.get(ENDPOINT)
    name = "outbound|8080||api.demo.svc.cluster.local"
    assert sp.get(CLUSTER).resources[name] is sc.get(CLUSTER).resources[name]


def test_labels_no_config_selects_on_do_not_split_the_sharing() -> None:
    mesh = Mesh()
    a = vm("10.0.1.1", {"app": "web", "host": "vm-1"})
    b = vm("10.0.1.2", {"app": "web", "host": "vm-2"})
    sa, sb = mesh.translate(a), mesh.translate(b)
    assert sa is sb
    assert_same_content(sa, mesh.reference(a))
    # Once a VirtualService matches on that label, the two VMs get different routes.
    selective = MESH.replace("sourceLabels: {track: canary}", "sourceLabels: {host: vm-2}")
    mesh.source.set(objects(selective))
    sa, sb = mesh.translate(a), mesh.translate(b)
    assert sa is not sb
    assert b"/canary" in sb.get(ROUTE).resources["8080"].value
    assert b"/canary" not in sa.get(ROUTE).resources["8080"].value
    assert_same_content(sa, mesh.reference(a))
    assert_same_content(sb, mesh.reference(b))


def test_a_vm_serving_a_service_gets_its_inbound_side_and_shares_the_outbound_side() -> None:
    mesh = Mesh()
    client, server = vm("10.0.1.1"), vm("10.0.1.99")  # 10.0.1.99 is web.demo's endpoint: port 9000
    sc, ss = mesh.translate(client), mesh.translate(server)
    assert sc is not ss
    assert_same_content(sc, mesh.reference(client))
    assert_same_content(ss, mesh.reference(server))
    assert "inbound|9000||" in ss.get(CLUSTER).resources
    assert "inbound|9000||" not in sc.get(CLUSTER).resources
    assert sc.get(ROUTE) is ss.get(ROUTE) and sc.get(ENDPOINT) is ss.get(ENDPOINT)
    name = "outbound|8080||api.demo.svc.cluster.local"
    assert sc.get(CLUSTER).resources[name] is ss.get(CLUSTER).resources[name]


def test_an_ipv6_vm_gets_the_ipv6_passthrough_and_a_gateway_gets_no_sidecar_listeners() -> None:
    mesh = Mesh()
    v4, v6, gw = vm("10.0.1.1"), vm("fd00::1"), vm("10.0.1.3", gateway=True)
    s4, s6, sg = mesh.translate(v4), mesh.translate(v6), mesh.translate(gw)
    assert "InboundPassthroughClusterIpv6" in s6.get(CLUSTER).resources
    assert "InboundPassthroughClusterIpv6" not in s4.get(CLUSTER).resources
    assert "virtualInbound" not in sg.get(LISTENER).resources
    for proxy, got in ((v4, s4), (v6, s6), (gw, sg)):
        assert_same_content(got, mesh.reference(proxy))


def test_a_change_is_seen_by_the_next_translation_and_unchanged_inputs_reuse_the_snapshot() -> None:
    mesh = Mesh()
    proxy = vm("10.0.1.1")
    before = mesh.translate(proxy)
    assert mesh.translate(proxy) is before  # a fresh services list with the same Service objects
    mesh.source.set(objects(MESH + "---\n" + entry("api-2", "10.0.0.11")))
    after = mesh.translate(proxy)
    assert b"10.0.0.11" in after.get(ENDPOINT).resources["outbound|8080||api.demo.svc.cluster.local"].value
    assert after.changed_types(before) == {ENDPOINT}
    assert_same_content(after, mesh.reference(proxy))


def test_an_unchanged_shared_snapshot_notifies_nobody() -> None:
    mesh = Mesh()
    cache = SnapshotCache()
    calls: list[frozenset[str]] = []
    cache.watch("p", calls.append)
    proxy = vm("10.0.1.1")
    assert cache.set("p", mesh.translate(proxy))
    assert cache.set("p", mesh.translate(proxy)) == frozenset()
    assert len(calls) == 1


def test_packer_packs_each_message_once_and_shares_equal_types() -> None:
    packer = Packer()
    c = cluster_pb2.Cluster(name="x")
    one, v1 = packer.pack(c)
    two, v2 = packer.pack(c)
    assert one is two and v1 == v2
    other, v3 = packer.pack(cluster_pb2.Cluster(name="x"))  # equal content, another object
    assert other is not one and v3 == v1
    a = Snapshot.from_messages([c], packer)
    b = Snapshot.from_messages([cluster_pb2.Cluster(name="x")], packer)
    assert a.get(CLUSTER) is b.get(CLUSTER)
    assert Snapshot.from_messages([c]).version(CLUSTER) == a.version(CLUSTER)


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_translation_reads_only_what_its_key_names(path: Path) -> None:
    """Another address of the same family and another name give the same resources (the key omits
    them), and the outbound half depends on the outbound key only."""
    case = load_case(path)
    base = case.build()
    ips = tuple("fd00::7" if ":" in ip else "10.99.0.7" for ip in case.proxy.ip_addresses)
    moved = dataclasses.replace(case.proxy, ip_addresses=ips, name="elsewhere")
    assert translation_key(moved) == translation_key(case.proxy)
    other = build_proxy_resources(moved, case.services, case.configs, case.mesh)
    assert serialized(base) == serialized(other)
    assert outbound_key(moved) == outbound_key(case.proxy)


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_labels_outside_the_selected_keys_change_nothing(path: Path) -> None:
    """Every label key translation reads is among ``label_keys_read``: dropping the others (and adding
    one nobody selects on) gives the same resources."""
    case = load_case(path)
    keys = label_keys_read(case.configs)
    extra = dataclasses.replace(case.proxy, labels={**case.proxy.labels, "unselected.example/vm": "vm-7"})
    reduced = with_labels_read(extra, keys)
    assert "unselected.example/vm" not in reduced.labels
    assert serialized(build_proxy_resources(reduced, case.services, case.configs, case.mesh)) == serialized(
        case.build()
    )


def test_a_push_round_builds_once_per_key_and_every_proxy_gets_its_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mesh = Mesh()
    builds: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Resources:
        builds.append("outbound")
        return build_outbound_resources(*args, **kwargs)

    monkeypatch.setattr(snapshots, "build_outbound_resources", counting)
    cache = SnapshotCache()
    controller = MeshController(cache, mesh.registry.services, mesh.translator)
    try:
        group = [vm(f"10.0.2.{i}") for i in range(1, 51)]
        canary = vm("10.0.3.1", {"app": "web", "track": "canary"})
        for p in [*group, canary]:
            controller.proxies.add(p)
        controller.recompute(None)
        assert len(builds) == 2  # the group's outbound key and the canary's
        assert len({id(cache.get(p.key)) for p in group}) == 1
        mesh.source.set(objects(MESH + "---\n" + entry("api-2", "10.0.0.11")))
        controller.recompute(None)
        assert len(builds) == 4
        for p in (group[0], group[-1], canary):
            got = cache.get(p.key)
            assert got is not None
            assert_same_content(got, mesh.reference(p))
    finally:
        controller.close()
