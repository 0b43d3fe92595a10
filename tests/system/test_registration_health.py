"""Health relay on real VMs: the WorkloadGroup's httpGet probe runs on each api VM, the control plane takes
an unhealthy VM out of EDS and the client's Envoy stops sending it requests; a recovered VM gets traffic
again. Also: after a control-plane restart every agent re-registers by itself, nothing lost or duplicated."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import SERVICES
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API_URL = "http://api.demo.svc.cluster.local:8080/health"
PERIOD, FAILURE_THRESHOLD = 1, 2

GROUPS = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: web
  namespace: demo
spec:
  metadata:
    labels:
      app: web
  template:
    serviceAccount: web
    ports:
      http: 8080
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: api
  namespace: demo
spec:
  metadata:
    labels:
      app: api
  template:
    serviceAccount: api
    ports:
      http: 8080
  probe:
    periodSeconds: {PERIOD}
    failureThreshold: {FAILURE_THRESHOLD}
    timeoutSeconds: 1
    httpGet:
      path: /healthz
      port: 8080
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    lab = MeshLab(Path(tmp_path_factory.mktemp("health")), prefix="vmreg", subnet="10.230.30.0/24")
    try:
        lab.add_control_plane({"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES})
        lab.add_vm("web", "demo/web")
        lab.add_vm("api-1", "demo/api")
        lab.add_vm("api-2", "demo/api")
        yield lab
    finally:
        lab.close()


def ask(vm: VmHost) -> tuple[int, str]:
    """One request from ``vm`` as an ordinary user: (HTTP status, name of the VM that answered)."""
    r = vm.curl(API_URL, timeout=5)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), str(json.loads(body).get("name", ""))
    except ValueError:
        return int(code or 0), ""


def spread(web: VmHost, want: set[str], max_requests: int = 200, timeout: float = 30) -> list[str]:
    """Requests until every VM in ``want`` answered (bounded); returns the answering names."""
    names: list[str] = []
    deadline = time.monotonic() + timeout
    for _ in range(max_requests):
        code, name = ask(web)
        if code == 200:
            names.append(name)
        if want <= set(names) or time.monotonic() > deadline:
            break
    return names


def healthy_endpoints(vm: VmHost) -> set[str]:
    """Addresses of the api endpoints ``vm``'s Envoy holds as healthy (admin /clusters)."""
    out = vm.envoy_admin("/clusters", timeout=3)
    prefix = "outbound|8080||api.demo.svc.cluster.local::"
    return {
        line.split("::")[1].rsplit(":", 1)[0]
        for line in out.splitlines()
        if line.startswith(prefix) and line.split("::")[2:] == ["health_flags", "healthy"]
    }


def workloads(mesh: MeshLab) -> list[dict[str, Any]]:
    assert mesh.cp is not None
    r = mesh.cp.cli("workloads", "-o", "json", "--server", mesh.cp.http)
    doc: list[dict[str, Any]] = json.loads(r.stdout)
    return doc


def test_unhealthy_vm_leaves_traffic_within_the_probe_window_and_returns(mesh: MeshLab) -> None:
    web, api1, api2 = mesh.vms["web"], mesh.vms["api-1"], mesh.vms["api-2"]
    wait_for(
        lambda: healthy_endpoints(web) == {api1.address, api2.address},
        timeout=30,
        what="both api VMs healthy in web's Envoy",
    )
    assert set(spread(web, {"api-1", "api-2"})) == {"api-1", "api-2"}

    stopped = time.monotonic()
    api1.stop_apps()
    window = PERIOD * FAILURE_THRESHOLD + 1
    during: list[tuple[float, int, str]] = []
    while time.monotonic() - stopped < window:  # bounded by the window; failures here are allowed
        code, name = ask(web)
        during.append((time.monotonic() - stopped, code, name))
    after = []
    for _ in range(30):
        code, name = ask(web)
        after.append((round(time.monotonic() - stopped, 2), code, name))
    last_failure = max((t for t, code, _ in during if code != 200), default=None)
    print(f"{len(during)} requests in the {window}s window, last failure at {last_failure}s")
    assert [r for r in after if r[1:] != (200, "api-2")] == [], after
    w1 = next(w for w in workloads(mesh) if w["name"] == f"api-{api1.address}")
    assert w1["health"] == "unhealthy" and w1["connected"] is True and "8080" in w1["health_message"]
    status = api1.status()
    assert status["health"]["healthy"] is False and status["health"]["acked"] is True

    assert healthy_endpoints(web) == {api2.address}
    api1.start_app(8080)
    wait_for(
        lambda: healthy_endpoints(web) == {api1.address, api2.address},
        timeout=PERIOD * 3 + 10,
        what="api-1 healthy again in web's Envoy",
    )
    sample = [ask(web) for _ in range(20)]
    assert all(code == 200 for code, _ in sample), sample
    assert {name for _, name in sample} == {"api-1", "api-2"}, sample


def test_control_plane_restart_agents_reregister_nothing_lost_or_duplicated(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    stable = (
        "namespace",
        "group",
        "name",
        "address",
        "labels",
        "ports",
        "registered_at",
        "spiffe_id",
        "health",
    )

    def snapshot() -> list[tuple[Any, ...]]:
        return [tuple(json.dumps(w[k], sort_keys=True) for k in stable) for w in workloads(mesh)]

    wait_for(
        lambda: len(ws := workloads(mesh)) == 3 and all(w["health"] == "healthy" for w in ws),
        timeout=20,
        what="three healthy workloads",
    )
    before = snapshot()
    registrations = {n: vm.status()["registration"]["registrations"] for n, vm in mesh.vms.items()}
    mesh.restart_control_plane()
    restarted = time.monotonic()

    def all_back() -> bool:
        ws = workloads(mesh)
        return len(ws) == 3 and all(w["connected"] for w in ws)

    wait_for(all_back, timeout=30, what="every agent to re-register")
    print(f"all agents back {time.monotonic() - restarted:.2f}s after the restart")
    assert snapshot() == before
    for name, vm in mesh.vms.items():
        reg = vm.status()["registration"]
        assert reg["connected"] is True and reg["registrations"] > registrations[name], (name, reg)
    assert set(spread(web, {"api-1", "api-2"})) == {"api-1", "api-2"}
