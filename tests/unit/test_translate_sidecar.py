"""Sidecar egress hosts shrink what a VM proxy sees: clusters counted before and after, as in Istio."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.model import ConfigObject, Port, Service
from vmagent.controlplane.translate import ConfigIndex, MeshOptions, ProxyInfo, build_proxy_resources
from vmagent.controlplane.xds.snapshot import CLUSTER

PROXY = ProxyInfo(namespace="demo", labels={"app": "web"}, ip_addresses=("10.0.0.2",))
NAMESPACES = ("demo", "istio-system", "team-a", "team-b", "team-c")


def services() -> list[Service]:
    out = []
    for ns in NAMESPACES:
        for i in range(4):
            out.append(Service(f"s{i}.{ns}.svc.cluster.local", ns, (Port(80, "HTTP", "http"),)))
    return out


def sidecar(name: str, ns: str, spec: dict[str, Any]) -> ConfigObject:
    return ConfigObject("Sidecar", "networking.istio.io/v1", ns, name, spec)


def service_clusters(configs: list[ConfigObject], proxy: ProxyInfo = PROXY) -> set[str]:
    res = build_proxy_resources(proxy, services(), ConfigIndex(configs), MeshOptions())
    return {n for n in res[CLUSTER] if n.startswith("outbound|")}


def namespaces_of(clusters: set[str]) -> set[str]:
    return {c.split("|")[3].split(".")[1] for c in clusters}


def test_sidecar_egress_own_and_istio_system_shrinks_cds() -> None:
    before = service_clusters([])
    egress = {"egress": [{"hosts": ["./*", "istio-system/*"]}]}
    after = service_clusters([sidecar("default", "demo", egress)])
    assert len(before) == 20 and namespaces_of(before) == set(NAMESPACES)
    assert len(after) == 8
    assert namespaces_of(after) == {"demo", "istio-system"}


def test_root_namespace_sidecar_is_the_mesh_default_and_namespace_one_wins() -> None:
    mesh_default = sidecar("default", "istio-system", {"egress": [{"hosts": ["./*"]}]})
    assert namespaces_of(service_clusters([mesh_default])) == {"demo"}
    own = sidecar("default", "demo", {"egress": [{"hosts": ["team-a/*"]}]})
    assert namespaces_of(service_clusters([mesh_default, own])) == {"team-a"}


def test_workload_selector_sidecar_beats_namespace_default() -> None:
    ns_default = sidecar("default", "demo", {"egress": [{"hosts": ["./*"]}]})
    web = sidecar(
        "web",
        "demo",
        {
            "workloadSelector": {"labels": {"app": "web"}},
            "egress": [{"hosts": ["*/s0.team-b.svc.cluster.local"]}],
        },
    )
    assert service_clusters([ns_default, web]) == {"outbound|80||s0.team-b.svc.cluster.local"}
    other = ProxyInfo(namespace="demo", labels={"app": "db"}, ip_addresses=("10.0.0.3",))
    assert namespaces_of(service_clusters([ns_default, web], other)) == {"demo"}


def test_wildcard_host_suffix_and_tilde_namespace() -> None:
    sc = sidecar("default", "demo", {"egress": [{"hosts": ["*/*.team-c.svc.cluster.local", "~/*"]}]})
    assert namespaces_of(service_clusters([sc])) == {"team-c"}


def test_sidecar_does_not_apply_to_gateways() -> None:
    gw = ProxyInfo(namespace="demo", labels={"istio": "ingressgateway"}, mode="gateway")
    sc = sidecar("default", "demo", {"egress": [{"hosts": ["./*"]}]})
    assert len(service_clusters([sc], gw)) == 20
