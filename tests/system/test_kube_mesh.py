"""One mesh for a "cluster" and VMs: the control plane watches the cluster (the test API server of
tests/kubeapi, standing in for kube-apiserver, which cannot be installed here; it listens in a lab
namespace and the control plane reaches it through a kubeconfig, as a real one), VMs call Kubernetes
Services by name through capture, traffic rules applied with ``kubectl`` change their traffic, and the
VMs appear in the cluster as WorkloadEntry objects.

Pods are plain HTTP servers in network namespaces of their own (no sidecar: reached in plain text).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import require_root, require_tool
from tests.kube_lab import endpoint_slice, pod, service, start_cluster, start_pod_app
from tests.kubeapi.server import KubeApiServer
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.netns import Netns
from vmagent.lab.wait import wait_for

NET = "networking.istio.io/v1"
SERVICE_CIDR = "10.96.0.0/16"
RATINGS_GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: default
spec:
  metadata:
    labels:
      app: ratings
  template:
    serviceAccount: ratings
    ports:
      http: 8080
  probe:
    periodSeconds: 1
    failureThreshold: 1
    httpGet:
      port: 8080
      path: /
"""


class Cluster:
    def __init__(self, lab: MeshLab, api: KubeApiServer, kube: Netns, kubeconfig: Path) -> None:
        self.lab, self.api, self.kube, self.kubeconfig = lab, api, kube, kubeconfig
        self.pods: dict[str, Netns] = {}

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        if stdin is not None:
            path = self.lab.workdir / f"kubectl-{time.monotonic_ns()}.yaml"
            path.write_text(stdin)
            cmd += ["-f", str(path)]
        return self.kube.run(cmd, check=check, timeout=60).stdout

    def add_pods(self, svc: str, cluster_ip: str, names: list[str], labels: dict[str, str]) -> None:
        ips = {}
        for name in names:
            ns = self.lab.add_host(name)
            start_pod_app(ns, name)
            self.pods[name] = ns
            ips[name] = ns.address
            self.api.create(pod(name, labels, ns.address))
        self.api.create(service(svc, cluster_ip, 9080, 8080, labels))
        self.api.create(endpoint_slice(svc, 8080, ips))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshLab, Cluster]]:
    require_root()
    require_tool("curl")
    require_tool("kubectl")
    workdir = Path(tmp_path_factory.mktemp("kubemesh"))
    lab = MeshLab(workdir, prefix="vmkube", subnet="10.230.9.0/24")
    api: KubeApiServer | None = None
    try:
        kube = lab.add_host("kube")
        api = start_cluster(kube, workdir / "kubeapi")
        kubeconfig = api.kubeconfig(workdir / "kubeconfig")
        cluster = Cluster(lab, api, kube, kubeconfig)
        cluster.add_pods("reviews", "10.96.0.10", ["reviews-1", "reviews-2"], {"app": "reviews"})
        cluster.add_pods("reviews-v1", "10.96.0.11", ["reviews-v1"], {"app": "reviews", "version": "v1"})
        cluster.add_pods("reviews-v2", "10.96.0.12", ["reviews-v2"], {"app": "reviews", "version": "v2"})
        cluster.add_pods("ratings", "10.96.0.13", ["ratings-pod"], {"app": "ratings"})
        # The ratings group is also an object in the cluster, so published entries get an owner.
        api.create(yaml.safe_load(RATINGS_GROUP))
        lab.add_control_plane(
            {**DEMO_CONFIG, "30-ratings.yaml": RATINGS_GROUP},
            extra_args=[
                "--kubeconfig",
                str(kubeconfig),
                "--lease-namespace",
                "default",
                "--grace-period",
                "3s",
                "--heartbeat-timeout",
                "3s",
            ],
        )
        for name, group in (("web", "demo/web"), ("ratings", "default/ratings")):
            vm = lab.add_vm(name, group)
            # A real VM has a default route; the lab's know only their LAN, so the Services' cluster IPs
            # (which capture sends to Envoy, never on the wire) need a route for the first lookup.
            vm.ns.add_route(SERVICE_CIDR, lab.lan_gateway())
        yield lab, cluster
    finally:
        lab.close()
        if api is not None:
            api.stop()


def _names(vm: VmHost, url: str, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        r = vm.curl(url)
        body, _, code = r.stdout.rpartition("\n")
        if code == "200":
            seen[json.loads(body)["name"]] += 1
        else:
            seen[f"HTTP {code}"] += 1
    return seen


def test_vm_calls_a_kubernetes_service_by_name_and_reaches_both_pods(mesh: tuple[MeshLab, Cluster]) -> None:
    lab, _ = mesh
    web = lab.vms["web"]
    url = "http://reviews.default.svc.cluster.local:9080/"
    lab.wait_reachable(web, url, timeout=60)
    seen = wait_for(
        lambda: s if {"reviews-1", "reviews-2"} <= set(s := _names(web, url, 20)) else None,
        timeout=60,
        what="answers from both reviews pods",
    )
    assert set(seen) == {"reviews-1", "reviews-2"}, seen


def test_virtual_service_applied_with_kubectl_splits_traffic(mesh: tuple[MeshLab, Cluster]) -> None:
    lab, cluster = mesh
    web = lab.vms["web"]
    url = "http://reviews-v1.default.svc.cluster.local:9080/"
    lab.wait_reachable(web, url, timeout=60)
    assert set(_names(web, url, 5)) == {"reviews-v1"}
    split = f"""\
apiVersion: {NET}
kind: VirtualService
metadata:
  name: reviews-split
  namespace: default
spec:
  hosts: [reviews-v1.default.svc.cluster.local]
  http:
  - route:
    - destination: {{host: reviews-v1.default.svc.cluster.local}}
      weight: 90
    - destination: {{host: reviews-v2.default.svc.cluster.local}}
      weight: 10
"""
    applied = time.monotonic()
    cluster.kubectl("apply", stdin=split)
    wait_for(lambda: _names(web, url, 10).get("reviews-v2"), timeout=30, what="the first request to reach v2")
    took = time.monotonic() - applied
    seen = _names(web, url, 200)
    print(f"kubectl apply -> first v2 answer in {took:.2f} s; split over 200 requests: {dict(seen)}")
    assert set(seen) == {"reviews-v1", "reviews-v2"}, seen
    assert 5 <= seen["reviews-v2"] <= 40, f"about 10% should reach v2: {seen}"

    # The same route with an invalid timeout passes the CRD schema but not the control plane.
    bad = (
        split.replace("  http:\n  - route:", "  http:\n  - timeout: soon\n    route:")
        .replace("weight: 90", "weight: 50")
        .replace("weight: 10", "weight: 50")
    )
    cluster.kubectl("apply", stdin=bad)

    def refused() -> list[dict[str, Any]] | None:
        obj = cluster.api.get(NET, "VirtualService", "reviews-split", "default")
        return (obj.get("status") or {}).get("validationMessages") or None

    msgs = wait_for(refused, timeout=30, what="the invalid VirtualService to be refused in its status")
    assert "spec.http[0].timeout" in msgs[0]["description"]
    assert lab.cp is not None
    r = lab.cp.cli("config", "errors", "--server", lab.cp.http, check=False)
    assert r.returncode == 1
    assert "kubernetes: VirtualService default/reviews-split: spec.http[0].timeout" in r.stdout
    seen = _names(web, url, 100)
    assert seen["reviews-v2"] <= 25, f"the last valid split (90/10) stays in force, not 50/50: {seen}"
    cluster.kubectl("delete", "virtualservice", "reviews-split")
    wait_for(lambda: set(_names(web, url, 30)) == {"reviews-v1"}, timeout=30, what="the split to go")


def _entry(cluster: Cluster) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "workloadentries", "-n", "default", "-o", "yaml", check=False)
    items = (yaml.safe_load(out) or {}).get("items") or []
    found = [i for i in items if i["metadata"]["name"].startswith("ratings-")]
    return found[0] if found else None


def _healthy(entry: dict[str, Any] | None) -> str | None:
    for c in ((entry or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Healthy":
            return str(c.get("status"))
    return None


def test_vm_is_published_as_a_workload_entry_that_follows_its_health(mesh: tuple[MeshLab, Cluster]) -> None:
    lab, cluster = mesh
    vm = lab.vms["ratings"]
    entry = wait_for(lambda: e if _healthy(e := _entry(cluster)) == "True" else None, timeout=60,
                     what="the VM's WorkloadEntry with Healthy=True")  # fmt: skip
    meta = entry["metadata"]
    assert meta["name"] == f"ratings-{vm.address}"
    assert meta["labels"]["app"] == "ratings"
    assert meta["annotations"]["istio.io/autoRegistrationGroup"] == "ratings"
    assert "istio.io/connectedAt" in meta["annotations"]
    assert (
        meta["ownerReferences"][0]["kind"] == "WorkloadGroup"
        and meta["ownerReferences"][0]["name"] == "ratings"
    )
    vm.stop_apps()
    wait_for(
        lambda: _healthy(_entry(cluster)) == "False", timeout=30, what="Healthy=False after the probe fails"
    )
    vm.start_app(8080)
    wait_for(lambda: _healthy(_entry(cluster)) == "True", timeout=30, what="Healthy=True again")


def test_one_service_backed_by_a_pod_and_a_vm(mesh: tuple[MeshLab, Cluster]) -> None:
    lab, _ = mesh
    web = lab.vms["web"]
    url = "http://ratings.default.svc.cluster.local:9080/"
    lab.wait_reachable(web, url, timeout=60)
    seen = wait_for(
        lambda: s if {"ratings-pod", "ratings"} <= set(s := _names(web, url, 20)) else None,
        timeout=60,
        what="answers from the ratings pod and the ratings VM",
    )
    assert set(seen) == {"ratings-pod", "ratings"}, seen


def test_watch_faults_lose_nothing_and_push_nothing_when_nothing_changed(
    mesh: tuple[MeshLab, Cluster],
) -> None:
    lab, cluster = mesh
    assert lab.cp is not None
    cp = lab.cp

    def status() -> dict[str, Any]:
        doc: dict[str, Any] = cp.api("/api/v1/kubernetes")
        return doc

    def lists() -> int:
        return sum(r["lists"] for r in status()["resources"])

    wait_for(lambda: all(r["state"] in ("watching", "waiting") for r in status()["resources"]), timeout=30,
             what="every informer watching")  # fmt: skip
    before_lists, before_pushes = lists(), status()["pushes"]
    # Nothing the control plane watches changes: drop every stream, compact past their resume points.
    cluster.api.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tick", "namespace": "default"}}
    )
    cluster.api.compact()
    cluster.api.drop_watches()
    wait_for(lambda: lists() > before_lists and all(r["state"] in ("watching", "waiting") for r in status()["resources"]),
             timeout=60, what="the informers to re-list after 410")  # fmt: skip
    assert status()["pushes"] == before_pushes, "a re-list with nothing changed pushes nothing"
    # A change made while the streams are down arrives.
    cluster.api.drop_watches()
    cluster.add_pods("late", "10.96.0.14", ["late-pod"], {"app": "late"})
    cluster.api.drop_watches()
    web = lab.vms["web"]
    doc = lab.wait_reachable(web, "http://late.default.svc.cluster.local:9080/", timeout=60)
    assert doc["name"] == "late-pod"


def test_stopped_vm_entry_is_deleted_after_the_grace_period(mesh: tuple[MeshLab, Cluster]) -> None:
    lab, cluster = mesh
    vm = lab.vms["ratings"]
    assert _entry(cluster) is not None
    lab.stop_agent(vm)
    wait_for(
        lambda: _entry(cluster) is None, timeout=60, what="the entry to be deleted after the grace period"
    )
