"""A real Envoy against the ADS server over mutual TLS: sync, scoped EDS push, NACK with Envoy's text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port, wait_for
from tests.integration.test_ads_support import (
    AdsHarness,
    Backend,
    Envoy,
    TestCa,
    demo_resources,
    envoy_bootstrap,
    get_via,
    start_ads,
    state_of,
    types_state,
)
from vmagent.controlplane.xds.snapshot import Snapshot

NODE = "web-1.demo"
ALL_SYNCED = {"CDS": "synced", "EDS": "synced", "LDS": "synced", "RDS": "synced"}


class Mesh:
    def __init__(self, tmp: Path, api_type: str) -> None:
        self.ca = TestCa()
        self.ads: AdsHarness = start_ads(self.ca)
        self.backends = [Backend("backend-one"), Backend("backend-two")]
        cert, key = self.ca.workload("demo", "web").write(tmp, "web")
        root = tmp / "root.pem"
        root.write_bytes(self.ca.root_pem)
        self.listen_port = free_port()
        admin = free_port()
        self.envoy = Envoy(tmp, envoy_bootstrap(NODE, self.ads.port, cert, key, root, admin, api_type), admin)

    def publish(self, backend: int = 0, **kw: object) -> frozenset[str]:
        res = demo_resources(self.listen_port, self.backends[backend].port, **kw)  # type: ignore[arg-type]
        return self.ads.cache.set(NODE, Snapshot.from_messages(res))

    def sent_nonces(self) -> dict[str, str]:
        entry = state_of(self.ads.ads, NODE)
        assert entry is not None
        return {k: v["sent_nonce"] for k, v in entry["types"].items()}

    def close(self) -> None:
        self.envoy.close()
        for b in self.backends:
            b.close()
        self.ads.runner.stop()


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path, request.param)
    try:
        yield m
    finally:
        m.close()


def answer(port: int) -> str | None:
    try:
        status, body = get_via(port)
    except OSError:
        return None
    return body if status == 200 else None


def test_envoy_syncs_routes_traffic_and_follows_endpoint_change(mesh: Mesh) -> None:
    mesh.publish(backend=0)
    mesh.envoy.wait_ready()
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 15, what="all four types ACKed")
    entry = state_of(mesh.ads.ads, NODE)
    assert entry is not None
    assert entry["identity"] == "spiffe://cluster.local/ns/demo/sa/web"
    assert mesh.ads.connected == [("spiffe://cluster.local/ns/demo/sa/web", NODE)]
    wait_for(
        lambda: answer(mesh.listen_port) == "backend-one", 10, what="traffic through Envoy to backend one"
    )

    before = mesh.sent_nonces()
    changed = mesh.publish(backend=1)
    assert changed == {"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}
    wait_for(lambda: answer(mesh.listen_port) == "backend-two", 10, what="traffic moving to backend two")
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 10, what="EDS change ACKed")
    after = mesh.sent_nonces()
    assert after["EDS"] != before["EDS"]
    assert {k: after[k] for k in ("CDS", "LDS", "RDS")} == {k: before[k] for k in ("CDS", "LDS", "RDS")}


def test_changed_cluster_keeps_its_endpoints(mesh: Mesh) -> None:
    """A CDS-only change re-warms the cluster; it must come back with its endpoints (not stuck warming)."""
    mesh.publish(backend=0)
    mesh.envoy.wait_ready()
    wait_for(lambda: answer(mesh.listen_port) == "backend-one", 15, what="traffic to backend one")
    changed = mesh.publish(backend=0, connect_timeout_s=3)
    assert changed == {"type.googleapis.com/envoy.config.cluster.v3.Cluster"}
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 10, what="CDS change ACKed")
    active = "/config_dump?resource=dynamic_active_clusters"
    wait_for(
        lambda: '"connect_timeout": "3s"' in mesh.envoy.admin(active).text, 10, what="changed cluster active"
    )
    assert mesh.envoy.admin("/config_dump?resource=dynamic_warming_clusters").json().get("configs", []) == []
    assert answer(mesh.listen_port) == "backend-one"


def test_rejected_route_is_nacked_with_envoys_message_and_traffic_continues(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    mesh.publish(backend=0)
    mesh.envoy.wait_ready()
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 15, what="initial config ACKed")
    wait_for(lambda: answer(mesh.listen_port) == "backend-one", 10, what="traffic to backend one")

    changed = mesh.publish(backend=0, bad_regex=True)
    assert changed == {"type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}
    wait_for(lambda: types_state(mesh.ads.ads, NODE).get("RDS") == "nacked", 10, what="RDS NACK")
    entry = state_of(mesh.ads.ads, NODE)
    assert entry is not None
    rds = entry["types"]["RDS"]
    assert "missing ): /(unclosed" in rds["error"]  # RE2's complaint, passed on by Envoy
    assert rds["acked_version"] != rds["sent_version"]
    assert entry["state"] == "nacked"
    assert any(
        r.levelname == "WARNING"
        and "rejected RDS" in r.getMessage()
        and "missing ): /(unclosed" in r.getMessage()
        for r in caplog.records
    )
    responses = rds["responses"]
    # Envoy keeps serving the last good routes.
    for _ in range(5):
        assert answer(mesh.listen_port) == "backend-one"
    # The rejected version is not pushed again on its own.
    assert state_of(mesh.ads.ads, NODE)["types"]["RDS"]["responses"] == responses  # type: ignore[index]

    mesh.publish(backend=1)  # a good config again: routes fixed and endpoint moved
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 10, what="good config ACKed after NACK")
    wait_for(lambda: answer(mesh.listen_port) == "backend-two", 10, what="traffic on the new config")


def _with_cluster(resources: list[Any], name: str, port: int) -> list[Any]:
    """``resources`` plus an EDS cluster ``name`` whose one endpoint is 127.0.0.1:``port``."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    backend = next(r for r in resources if isinstance(r, cluster_pb2.Cluster))
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(backend)
    cluster.name = name
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = cla.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "127.0.0.1"
    ep.address.socket_address.port_value = port
    return [*resources, cluster, cla]


def test_an_endpoint_push_of_one_cluster_leaves_the_others_endpoints(mesh: Mesh) -> None:
    """SotW EDS pushes carry only the changed assignments (EDS is not state of the world): the real Envoy
    keeps the endpoints of the clusters the push left out."""
    other = mesh.backends[1].port

    def publish(backend: int) -> frozenset[str]:
        res = demo_resources(mesh.listen_port, mesh.backends[backend].port)
        return mesh.ads.cache.set(NODE, Snapshot.from_messages(_with_cluster(res, "other", other)))

    def endpoints() -> str:
        return str(mesh.envoy.admin("/clusters").text)

    publish(0)
    mesh.envoy.wait_ready()
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 15, what="all four types ACKed")
    wait_for(lambda: f"other::127.0.0.1:{other}::" in endpoints(), 10, what="other's endpoint in Envoy")
    assert publish(1) == {"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}
    wait_for(lambda: answer(mesh.listen_port) == "backend-two", 10, what="traffic moving to backend two")
    wait_for(lambda: types_state(mesh.ads.ads, NODE) == ALL_SYNCED, 10, what="the EDS push ACKed")
    text = endpoints()
    assert f"other::127.0.0.1:{other}::" in text, "the cluster left out of the push lost its endpoints"
    assert f"backend::127.0.0.1:{other}::" in text
