"""The informer against the test API server (tests/kubeapi, a stand-in for kube-apiserver: none can be
installed here): list, watch with resume after a dropped stream, re-list after 410 emitting only the
differences, and a CRD that appears after the informer started."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubeapi.server import KubeApiServer
from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.kube.client import KubeClient, Resource
from vmagent.controlplane.kube.crds import crd
from vmagent.controlplane.kube.informer import ADDED, DELETED, MODIFIED, Change, Informer
from vmagent.lab.wait import wait_for

SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(tmp_path / "kubeapi", bookmark_interval=0.5) as server:
        yield server


@pytest.fixture
def client(api: KubeApiServer) -> Iterator[KubeClient]:
    c = KubeClient.from_config(api.kubeconfig(), in_cluster=False)
    yield c
    c.close()


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[Change]] = []

    def __call__(self, changes: list[Change]) -> None:
        with self.lock:
            self.batches.append(list(changes))

    def flat(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(c.type, c.key[1]) for b in self.batches for c in b]

    def clear(self) -> None:
        with self.lock:
            self.batches.clear()


def _svc(name: str, port: int = 80) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": port}], "selector": {"app": name}},
    }


def test_list_then_watch_sees_every_change(api: KubeApiServer, client: KubeClient) -> None:
    api.create(_svc("a"))
    rec = Recorder()
    inf = Informer(client, SERVICES, rec)
    inf.start()
    try:
        assert inf.wait_synced(10)
        assert rec.flat() == [(ADDED, "a")]
        api.create(_svc("b"))
        obj = api.get("v1", "Service", "a", "default")
        obj["spec"]["ports"][0]["port"] = 8080
        api.update(obj)
        api.delete("v1", "Service", "b", "default")
        wait_for(lambda: len(rec.flat()) >= 4, timeout=10, what="three watch events")
        assert rec.flat() == [(ADDED, "a"), (ADDED, "b"), (MODIFIED, "a"), (DELETED, "b")]
        assert set(inf.objects()) == {("default", "a")}
        assert inf.get("default", "a")["spec"]["ports"][0]["port"] == 8080  # type: ignore[index]
        assert inf.lists == 1
    finally:
        inf.stop()


def test_dropped_watch_resumes_without_listing_again(api: KubeApiServer, client: KubeClient) -> None:
    rec = Recorder()
    inf = Informer(client, SERVICES, rec)
    inf.start()
    try:
        assert inf.wait_synced(10)
        for i in range(3):
            api.drop_watches()
            api.create(_svc(f"s{i}"))
            wait_for(
                lambda i=i: (ADDED, f"s{i}") in rec.flat(), timeout=15, what=f"s{i} after a dropped watch"
            )
        assert inf.lists == 1, "a dropped stream is resumed from its resourceVersion, not re-listed"
        assert [t for t, _ in rec.flat()] == [ADDED] * 3
    finally:
        inf.stop()


def test_410_relists_and_emits_only_the_differences(api: KubeApiServer, client: KubeClient) -> None:
    for name in ("keep", "change", "gone"):
        api.create(_svc(name))
    rec = Recorder()
    inf = Informer(client, SERVICES, rec)
    inf.start()
    assert inf.wait_synced(10)
    inf.stop()  # the informer is away (as across a long disconnection) ...
    rec.clear()
    obj = api.get("v1", "Service", "change", "default")
    obj["metadata"]["labels"] = {"v": "2"}
    api.update(obj)
    api.delete("v1", "Service", "gone", "default")
    api.create(_svc("new"))
    api.compact()  # ... and its resourceVersion is compacted away: the resume gets 410
    inf.start()
    try:
        wait_for(lambda: inf.lists == 2 and inf.state == "watching", timeout=15, what="a re-list after 410")
        assert sorted(rec.flat()) == [(ADDED, "new"), (DELETED, "gone"), (MODIFIED, "change")]
        assert len(rec.batches) == 1, "a re-list's differences arrive as one batch"
    finally:
        inf.stop()


def test_410_with_nothing_changed_emits_nothing(api: KubeApiServer, client: KubeClient) -> None:
    api.create(_svc("a"))
    rec = Recorder()
    inf = Informer(client, SERVICES, rec)
    inf.start()
    assert inf.wait_synced(10)
    inf.stop()
    rec.clear()
    # Another kind moves the revision on; compacting makes the services' resume point too old.
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}})
    api.compact()
    inf.start()
    try:
        wait_for(lambda: inf.lists == 2 and inf.state == "watching", timeout=15, what="a re-list after 410")
        assert rec.flat() == []
    finally:
        inf.stop()


def test_a_crd_installed_later_is_waited_for(api: KubeApiServer, client: KubeClient) -> None:
    info = KINDS["VirtualService"]
    rec = Recorder()
    inf = Informer(client, Resource(info.group, "v1", "virtualservices", "VirtualService"), rec)
    inf.start()
    try:
        wait_for(lambda: inf.state == "waiting", timeout=10, what="the informer to wait for the CRD")
        assert not inf.synced.is_set()
        api.create(crd(info))
        api.create(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "r", "namespace": "default"},
                "spec": {"hosts": ["reviews"]},
            }
        )
        wait_for(
            lambda: (ADDED, "r") in rec.flat(), timeout=40, what="the VirtualService once its CRD exists"
        )
    finally:
        inf.stop()
