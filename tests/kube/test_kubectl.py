"""The real kubectl against the test API server through a kubeconfig: apply, get (-o yaml, -w), delete, CRDs."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.kube.workloadentry_crd import WORKLOADENTRY_CRD
from tests.kubeapi import KubeApiServer

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed (scripts/system-deps.sh)"
)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    r = kubectl(kubeconfig, *args, stdin=stdin)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


@pytest.mark.parametrize("auth", ["cert", "token"])
def test_apply_get_delete_configmap(kube_api: KubeApiServer, tmp_path: Path, auth: str) -> None:
    kc = kube_api.kubeconfig(auth=auth)
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  labels: {app: a}\ndata:\n  a: '1'\n"
    )
    assert "configmap/cfg created" in ok(kc, "apply", "-f", str(manifest))
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  labels: {app: a}\ndata:\n  b: '2'\n"
    )
    assert "configmap/cfg configured" in ok(kc, "apply", "-f", str(manifest))
    live = yaml.safe_load(ok(kc, "get", "configmap", "cfg", "-o", "yaml"))
    assert live["data"] == {"b": "2"}  # the client-side apply patch removed "a", which the last apply had
    assert live["metadata"]["labels"] == {"app": "a"} and live["metadata"]["uid"]
    assert "cfg" in ok(kc, "get", "cm", "-l", "app=a")
    assert 'configmap "cfg" deleted' in ok(kc, "delete", "-f", str(manifest))
    r = kubectl(kc, "get", "configmap", "cfg")
    assert r.returncode != 0 and "NotFound" in r.stderr


def test_apply_service_uses_strategic_merge(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kc = kube_api.kubeconfig()
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
    }
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(svc))
    ok(kc, "apply", "-f", str(path))
    svc["spec"]["ports"].append({"name": "grpc", "port": 9090})
    path.write_text(yaml.safe_dump(svc))
    ok(kc, "apply", "-f", str(path))
    live = kube_api.get("v1", "Service", "reviews", "default")
    assert [p["port"] for p in live["spec"]["ports"]] == [9080, 9090]
    assert live["spec"]["clusterIP"]  # server-set fields survive the apply


def test_crd_objects_via_kubectl(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kc = kube_api.kubeconfig()
    r = kubectl(kc, "get", "workloadentries")
    assert r.returncode != 0  # not served before the CRD exists
    crd = tmp_path / "crd.yaml"
    crd.write_text(yaml.safe_dump(WORKLOADENTRY_CRD))
    ok(kc, "apply", "-f", str(crd))
    we = tmp_path / "we.yaml"
    we.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "vm-1", "labels": {"app": "ratings"}},
                "spec": {"address": "10.1.0.5", "labels": {"app": "ratings"}},
            }
        )
    )
    ok(kc, "apply", "-f", str(we))
    table = ok(kc, "get", "workloadentries")
    assert table.split("\n")[0].split() == ["NAME", "ADDRESS", "AGE"]
    assert table.split("\n")[1].split()[:2] == ["vm-1", "10.1.0.5"]
    assert "vm-1" in ok(kc, "get", "we", "-l", "app=ratings")
    doc = yaml.safe_load(ok(kc, "get", "workloadentries.v1beta1.networking.istio.io", "vm-1", "-o", "yaml"))
    assert doc["apiVersion"] == "networking.istio.io/v1beta1" and doc["spec"]["address"] == "10.1.0.5"
    we.write_text(we.read_text().replace("10.1.0.5", "10.1.0.6"))
    ok(kc, "apply", "-f", str(we))  # a merge patch: custom resources have no strategic merge
    assert (
        kube_api.get("networking.istio.io/v1", "WorkloadEntry", "vm-1", "default")["spec"]["address"]
        == "10.1.0.6"
    )
    ok(kc, "delete", "-f", str(crd))
    assert kubectl(kc, "get", "workloadentries").returncode != 0


def test_get_watch_prints_changes(kube_api: KubeApiServer) -> None:
    kc = kube_api.kubeconfig()
    kube_api.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "namespace": "default"}}
    )
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(kc), "get", "configmaps", "-w", "-o", "name"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line.strip()) for line in proc.stdout or []], daemon=True
    ).start()

    def next_line() -> str:
        return lines.get(timeout=60)

    try:
        assert next_line() == "configmap/first"
        kube_api.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "second", "namespace": "default"}}
        )
        assert next_line() == "configmap/second"
        kube_api.delete("v1", "ConfigMap", "first", "default")
        assert next_line() == "configmap/first"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_get_watch_table_output(kube_api: KubeApiServer) -> None:
    kc = kube_api.kubeconfig()
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(kc), "get", "namespaces", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        kube_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "watched"}})
        while not any(s.startswith("watched") for s in seen) and time.monotonic() < deadline:
            seen.append(lines.get(timeout=60))
        assert seen[0].split() == ["NAME", "STATUS", "AGE"] or seen[0].split()[0] == "NAME"
        assert any(s.split()[0] == "watched" for s in seen)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_create_token(kube_api: KubeApiServer) -> None:
    kc = kube_api.kubeconfig()
    ok(kc, "create", "serviceaccount", "web")
    token = ok(kc, "create", "token", "web", "--audience", "istio-ca").strip()
    review = kube_api.ops.token_review({"spec": {"token": token, "audiences": ["istio-ca"]}})
    assert (
        review["status"]["authenticated"]
        and review["status"]["user"]["username"] == "system:serviceaccount:default:web"
    )
    assert json.loads(ok(kc, "get", "sa", "web", "-o", "json"))["metadata"]["name"] == "web"


def test_unknown_fields_refused_with_strict_validation(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kc = kube_api.kubeconfig()
    kube_api.create(WORKLOADENTRY_CRD)
    we = tmp_path / "we.yaml"
    we.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "vm-2"},
                "spec": {"address": "10.1.0.7", "adress": "typo"},
            }
        )
    )
    r = kubectl(kc, "apply", "-f", str(we))  # kubectl's default --validate=strict: the server refuses
    assert r.returncode != 0 and 'unknown field "spec.adress"' in r.stderr
    ok(
        kc, "apply", "--validate=false", "-f", str(we)
    )  # without it the field is pruned, as a real server does
    assert kube_api.get("networking.istio.io/v1", "WorkloadEntry", "vm-2", "default")["spec"] == {
        "address": "10.1.0.7"
    }
