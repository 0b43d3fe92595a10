"""The control plane's Kubernetes parts against the test API server (tests/kubeapi stands in for
kube-apiserver, which cannot be installed here): Istio objects through the validator with status
written back, Services + EndpointSlices + Pods (+ VMs) as services, WorkloadEntries published for
auto-registered VMs, and the Lease that picks one writer among replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubeapi.server import KubeApiServer
from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.kube.client import KubeClient
from vmagent.controlplane.kube.crds import all_crds
from vmagent.controlplane.kube.istio_source import IstioKubeSource
from vmagent.controlplane.kube.lease import LeaseElector
from vmagent.controlplane.kube.publisher import (
    CONTROLLER,
    DISCONNECTED_AT,
    WorkloadEntryPublisher,
    published_by,
)
from vmagent.controlplane.kube.services import KubeServiceRegistry
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.registry.workload_entry import AUTO_REGISTRATION_ANNOTATION, Registration
from vmagent.controlplane.registry.workload_store import LifecycleSettings, WorkloadStore
from vmagent.lab.wait import wait_for

NET = "networking.istio.io/v1"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(tmp_path / "kubeapi", bookmark_interval=0.5) as server:
        for c in all_crds():
            server.create(c)
        yield server


@pytest.fixture
def client(api: KubeApiServer) -> Iterator[KubeClient]:
    c = KubeClient.from_config(api.kubeconfig(), in_cluster=False)
    yield c
    c.close()


def _vs(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": NET,
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


GOOD_SPEC = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
# Passes the CRD schema (a string), fails the validator: what only the control plane can refuse.
BAD_SPEC = {
    "hosts": ["reviews"],
    "http": [{"timeout": "soon", "route": [{"destination": {"host": "reviews"}}]}],
}


def test_istio_objects_are_validated_and_invalid_ones_reported_in_status(
    api: KubeApiServer, client: KubeClient
) -> None:
    src = IstioKubeSource(client, kinds=["VirtualService", "WorkloadGroup"])
    changes: list[int] = []
    src.subscribe(lambda: changes.append(1))
    api.create(_vs("good", GOOD_SPEC))
    src.start()
    try:
        assert src.wait_synced(10)
        wait_for(lambda: ("VirtualService", "default", "good") in src.objects(), timeout=10, what="good VS")
        api.create(_vs("bad", BAD_SPEC))

        def bad_status() -> list[dict[str, Any]]:
            obj = api.get(NET, "VirtualService", "bad", "default")
            return list((obj.get("status") or {}).get("validationMessages") or [])

        msgs = wait_for(bad_status, timeout=10, what="validationMessages on the invalid VirtualService")
        assert msgs[0]["level"] == "ERROR" and "spec.http[0].timeout" in msgs[0]["description"]
        assert ("VirtualService", "default", "bad") not in src.objects()
        errors = src.errors()
        assert len(errors) == 1 and errors[0].startswith(
            "kubernetes: VirtualService default/bad: spec.http[0]"
        )
        # Fixed: applied, the error and the status message are gone.
        obj = api.get(NET, "VirtualService", "bad", "default")
        obj["spec"] = GOOD_SPEC
        api.update(obj)
        wait_for(lambda: ("VirtualService", "default", "bad") in src.objects(), timeout=10, what="fixed VS")
        wait_for(lambda: not bad_status(), timeout=10, what="the status message to be cleared")
        assert src.errors() == []
        # An invalid edit keeps the last valid version in force.
        obj = api.get(NET, "VirtualService", "good", "default")
        obj["spec"] = BAD_SPEC
        api.update(obj)
        wait_for(lambda: len(src.errors()) == 1, timeout=10, what="the invalid edit to be reported")
        assert src.objects()[("VirtualService", "default", "good")].spec == GOOD_SPEC
    finally:
        src.stop()


def _service_objects(api: KubeApiServer) -> None:
    api.create(
        {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ratings", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "ratings"},
                     "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]},
        }
    )  # fmt: skip
    for pod, sidecar in (("ratings-1", True), ("ratings-2", False)):
        labels = {"app": "ratings", **({"security.istio.io/tlsMode": "istio"} if sidecar else {})}
        api.create(
            {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "default", "labels": labels},
                "spec": {"serviceAccountName": "ratings", "containers": [{"name": "app", "image": "x"}]},
            }
        )  # fmt: skip
    api.create(
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ratings-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "ratings"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": True},
                 "targetRef": {"kind": "Pod", "name": "ratings-1", "namespace": "default"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": False},
                 "targetRef": {"kind": "Pod", "name": "ratings-2", "namespace": "default"}},
            ],
        }
    )  # fmt: skip


def _vm_entry(labels: dict[str, str]) -> ConfigObject:
    return ConfigObject(
        kind="WorkloadEntry", api_version=NET, namespace="default", name="ratings-vm-10.2.0.1",
        spec={"address": "10.2.0.1", "labels": labels, "serviceAccount": "ratings-vm", "ports": {"http": 9000}},
    )  # fmt: skip


def test_services_from_the_cluster_with_pods_and_vms(api: KubeApiServer, client: KubeClient) -> None:
    other = ConfigObject(
        kind="WorkloadEntry", api_version=NET, namespace="default", name="other",
        spec={"address": "10.2.0.9", "labels": {"app": "other"}},
    )  # fmt: skip
    entries = [_vm_entry({"app": "ratings"}), other]
    reg = KubeServiceRegistry(client, "cluster.local", lambda: entries)
    notified: list[int] = []
    reg.subscribe(lambda: notified.append(1))
    _service_objects(api)
    reg.start()
    try:
        assert reg.wait_synced(10)

        def ratings() -> Any:
            found = [s for s in reg.services() if s.hostname == "ratings.default.svc.cluster.local"]
            return found[0] if found and len(found[0].endpoints) == 3 else None

        svc = wait_for(ratings, timeout=10, what="ratings with two pods and one VM")
        assert svc.addresses == ("10.96.0.20",) and svc.resolution == "STATIC"
        assert [(p.number, p.protocol, p.name, p.target_port) for p in svc.ports] == [
            (9080, "HTTP", "http", 8080)
        ]
        eps = {e.address: e for e in svc.endpoints}
        assert eps["10.1.0.1"].healthy and eps["10.1.0.1"].ports == {"http": 8080}
        assert eps["10.1.0.1"].service_account == "spiffe://cluster.local/ns/default/sa/ratings"
        assert eps["10.1.0.2"].service_account == "", "a pod without a sidecar is reached in plain text"
        assert not eps["10.1.0.2"].healthy, "a not-ready address leaves EDS"
        assert (
            eps["10.2.0.1"].ports == {"http": 9000} and eps["10.2.0.1"].workload_name == "ratings-vm-10.2.0.1"
        )
        assert "10.2.0.9" not in eps, "the selector picks only matching VMs"
        # A status-only change of a pod does not recompute services.
        before = len(notified)
        pod = api.get("v1", "Pod", "ratings-1", "default")
        pod["status"] = {"phase": "Running", "podIP": "10.1.0.1"}
        api.update(pod, "status")
        api.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sync", "namespace": "default"}}
        )
        api.delete("v1", "Service", "ratings", "default")
        wait_for(lambda: ratings() is None and not reg.services(), timeout=10, what="the Service to go")
        assert len(notified) == before + 1, "only the Service deletion recomputed the registry"
    finally:
        reg.stop()


def test_only_the_services_a_change_touches_are_built_again(api: KubeApiServer, client: KubeClient) -> None:
    """A slice, pod or Service change rebuilds the Services it feeds, not the cluster's; a VM change
    rebuilds all (any selector may pick it); the result always equals a build from scratch."""
    entries = [_vm_entry({"app": "ratings"})]
    _service_objects(api)
    api.create(
        {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "details", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.21", "ports": [{"name": "http", "port": 9080}]},
        }
    )  # fmt: skip
    reg = KubeServiceRegistry(client, "cluster.local", lambda: entries)
    fresh = KubeServiceRegistry(client, "cluster.local", lambda: entries)  # built from scratch each time
    reg.start()
    fresh.start()
    try:
        assert reg.wait_synced(10) and fresh.wait_synced(10)

        def hosts() -> dict[str, Any]:
            return {s.hostname: s for s in reg.services()}

        wait_for(lambda: len(hosts()) == 2, timeout=10, what="both Services")

        def settled(what: str, cond: Any) -> dict[str, Any]:
            def ready() -> dict[str, Any] | None:
                h = hosts()
                return h if cond(h) else None

            got: dict[str, Any] = wait_for(ready, timeout=10, what=what)

            def full_build() -> dict[str, Any]:
                fresh.notify_changed()  # the next build is a full one
                return {s.hostname: s for s in fresh.build()}

            wait_for(
                lambda: full_build() == got,
                timeout=10,
                what=f"a full build equal to the incremental ({what})",
            )
            return got

        ratings = "ratings.default.svc.cluster.local"
        # An endpoint added to ratings' slice: only ratings is built again.
        builds = reg.builds
        sl = api.get("discovery.k8s.io/v1", "EndpointSlice", "ratings-abc", "default")
        sl["endpoints"].append({"addresses": ["10.1.0.3"], "conditions": {"ready": True}})
        api.update(sl)
        settled("the new endpoint", lambda h: len(h[ratings].endpoints) == 4)
        assert reg.builds - builds == 1
        # A pod's labels: the Service its endpoint feeds.
        builds = reg.builds
        pod = api.get("v1", "Pod", "ratings-1", "default")
        pod["metadata"]["labels"]["version"] = "v2"
        api.update(pod)
        got = settled(
            "the pod's new label",
            lambda h: any(e.labels.get("version") == "v2" for e in h[ratings].endpoints),
        )
        assert reg.builds - builds == 1 and got[ratings].endpoints
        # The VMs changed: every Service.
        builds = reg.builds
        entries.clear()
        reg.notify_changed()
        settled("the VM to leave", lambda h: len(h[ratings].endpoints) == 3)
        assert reg.builds - builds == 2
        # A Service deleted goes; the other stays as built.
        api.delete("v1", "Service", "details", "default")
        settled("details to go", lambda h: set(h) == {ratings})
    finally:
        reg.stop()
        fresh.stop()


def _register(store: WorkloadStore, address: str) -> None:
    group = {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"template": {"serviceAccount": "web", "labels": {"app": "web"}},
                      "probe": {"httpGet": {"port": 8080}}}}  # fmt: skip
    store.register(
        group,
        Registration("default", "web", address, spiffe_id="spiffe://cluster.local/ns/default/sa/web"),
        "s1",
    )


def test_auto_registered_vms_are_published_as_workload_entries(
    api: KubeApiServer, client: KubeClient, tmp_path: Path
) -> None:
    db = StateDb.open(tmp_path / "state")
    store = WorkloadStore(db, LifecycleSettings(grace_period=0.0))
    src = IstioKubeSource(
        client, kinds=["WorkloadEntry", "WorkloadGroup"], skip=lambda o: published_by(o, "cp-a")
    )
    group = api.create({"apiVersion": NET, "kind": "WorkloadGroup", "metadata": {"name": "web", "namespace": "default"},
                        "spec": {"template": {"serviceAccount": "web"}}})  # fmt: skip
    api.create({"apiVersion": NET, "kind": "WorkloadEntry", "metadata": {"name": "operator-vm", "namespace": "default"},
                "spec": {"address": "10.3.0.1"}})  # fmt: skip
    src.start()
    pub = WorkloadEntryPublisher(
        client, store, "cp-a",
        current=lambda: src.cached("WorkloadEntry"),
        group=lambda ns, name: src.cached("WorkloadGroup").get((ns, name)),
        resync=1.0,
    )  # fmt: skip
    pub.start()
    try:
        assert src.wait_synced(10)
        _register(store, "10.0.0.7")

        def entry() -> dict[str, Any] | None:
            try:
                return api.get(NET, "WorkloadEntry", "web-10.0.0.7", "default")
            except Exception:
                return None

        obj = wait_for(entry, timeout=10, what="the published WorkloadEntry")
        ann = obj["metadata"]["annotations"]
        assert ann[AUTO_REGISTRATION_ANNOTATION] == "web" and ann[CONTROLLER] == "cp-a"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == group["metadata"]["uid"]
        assert obj["spec"]["address"] == "10.0.0.7" and obj["metadata"]["labels"] == {"app": "web"}
        cond = wait_for(
            lambda: ((entry() or {}).get("status") or {}).get("conditions"), timeout=10, what="status"
        )
        assert (cond[0]["type"], cond[0]["status"]) == ("Healthy", "False")  # waiting for the first probe
        store.report_health("default", "web-10.0.0.7", "s1", True, "")
        wait_for(lambda: ((entry() or {}).get("status") or {}).get("conditions", [{}])[0].get("status") == "True",
                 timeout=10, what="Healthy=True")  # fmt: skip
        assert ("WorkloadEntry", "default", "web-10.0.0.7") not in src.objects(), (
            "our own entries are not config"
        )
        store.disconnected("default", "web-10.0.0.7", "s1")
        wait_for(lambda: DISCONNECTED_AT in ((entry() or {}).get("metadata") or {}).get("annotations", {}),
                 timeout=10, what="disconnectedAt")  # fmt: skip
        store.reap()  # grace period 0: deleted from the store, then from the cluster
        wait_for(lambda: entry() is None, timeout=10, what="the entry to be deleted")
        assert api.get(NET, "WorkloadEntry", "operator-vm", "default"), "operator-written entries stay"
    finally:
        pub.stop()
        src.stop()
        db.close()


def test_one_lease_holder_and_takeover_when_it_dies(api: KubeApiServer, client: KubeClient) -> None:
    a = LeaseElector(
        client, "default", "vmagent-cp", "cp-a", lease_duration=3, renew_deadline=2, retry_period=0.3
    )
    b = LeaseElector(
        client, "default", "vmagent-cp", "cp-b", lease_duration=3, renew_deadline=2, retry_period=0.3
    )
    a.start()
    try:
        wait_for(a.is_leader, timeout=10, what="cp-a to take the lease")
        b.start()
        wait_for(lambda: b.holder == "cp-a", timeout=10, what="cp-b to see cp-a holding it")
        assert not b.is_leader()
        a.stop(release=False)  # cp-a dies without releasing
        wait_for(b.is_leader, timeout=10, what="cp-b to take over after the lease duration")
        assert (
            api.get("coordination.k8s.io/v1", "Lease", "vmagent-cp", "default")["spec"]["holderIdentity"]
            == "cp-b"
        )
        b.stop()  # a clean stop releases the lease
        assert not api.get("coordination.k8s.io/v1", "Lease", "vmagent-cp", "default")["spec"].get(
            "holderIdentity"
        )
    finally:
        a.stop(release=False)
        b.stop()


def test_every_kind_has_a_crd() -> None:
    names = {c["spec"]["names"]["kind"] for c in all_crds()}
    assert names == set(KINDS)
