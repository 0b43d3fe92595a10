"""Snapshot versions and the cache's scoped notifications."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, Snapshot


def cla(name: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    m = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    sa = m.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "10.0.0.1", port
    return m


def snap(port: int = 80, timeout: int = 1, listeners: int = 1) -> Snapshot:
    c = cluster_pb2.Cluster(name="web", type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = timeout
    ls = [listener_pb2.Listener(name=f"l{i}") for i in range(listeners)]
    return Snapshot.from_messages([c, cla("web", port), *ls])


def test_versions_follow_content_not_object_identity() -> None:
    a, b = snap(), snap()
    assert a.version(CLUSTER) == b.version(CLUSTER)
    assert a.get(ENDPOINT).versions == b.get(ENDPOINT).versions
    c = snap(port=81)
    assert c.version(CLUSTER) == a.version(CLUSTER)
    assert c.version(ENDPOINT) != a.version(ENDPOINT)
    assert c.changed_types(a) == {ENDPOINT}
    assert a.changed_types(None) == {CLUSTER, ENDPOINT, LISTENER}


def test_removed_type_counts_as_changed_and_empty_types_have_a_stable_version() -> None:
    a, b = snap(listeners=1), snap(listeners=0)
    assert b.changed_types(a) == {LISTENER}
    assert b.version(LISTENER) == Snapshot().version(LISTENER)


def test_subset_version_depends_only_on_the_named_resources() -> None:
    one = Snapshot.from_messages([cla("a", 1), cla("b", 2)]).get(ENDPOINT)
    two = Snapshot.from_messages([cla("a", 1), cla("b", 3)]).get(ENDPOINT)
    assert one.subset_version(["a"]) == two.subset_version(["a"])
    assert one.subset_version(["b"]) != two.subset_version(["b"])
    assert one.subset_version(["a", "missing"]) == one.subset_version(["a"])


def test_duplicate_and_nameless_resources_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate CDS resource 'x'"):
        Snapshot.from_messages([cluster_pb2.Cluster(name="x"), cluster_pb2.Cluster(name="x")])
    with pytest.raises(ValueError, match="has no name"):
        Snapshot.from_messages([cluster_pb2.Cluster()])


def test_set_notifies_only_that_proxys_watchers_with_the_changed_types() -> None:
    cache = SnapshotCache()
    seen: dict[str, list[frozenset[str]]] = {"p1": [], "p2": []}
    cache.watch("p1", seen["p1"].append)
    unwatch2 = cache.watch("p2", seen["p2"].append)
    assert cache.set("p1", snap()) == {CLUSTER, ENDPOINT, LISTENER}
    assert cache.set("p1", snap()) == frozenset()  # same content: nobody is told
    assert cache.set("p1", snap(port=81)) == {ENDPOINT}
    assert seen == {"p1": [{CLUSTER, ENDPOINT, LISTENER}, {ENDPOINT}], "p2": []}
    cache.set("p2", snap())
    unwatch2()
    cache.set("p2", snap(timeout=5))
    assert seen["p2"] == [{CLUSTER, ENDPOINT, LISTENER}]
    assert cache.get("p2") is not None and cache.get("p2").version(CLUSTER) == snap(timeout=5).version(
        CLUSTER
    )  # type: ignore[union-attr]


def test_a_failing_watcher_does_not_stop_the_others() -> None:
    cache = SnapshotCache()
    got: list[frozenset[str]] = []

    def bad(_: frozenset[str]) -> None:
        raise RuntimeError("boom")

    cache.watch("p", bad)
    cache.watch("p", got.append)
    cache.set("p", snap())
    assert got == [{CLUSTER, ENDPOINT, LISTENER}]
