"""`vmagent leave` and `vmagent status` on real VMs (network namespaces, real capture, Envoy and mTLS):
a VM leaves during a request loop without one failed request, and status shows what the docs promise."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API_URL = "http://api.demo.svc.cluster.local:8080/leave"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    lab = MeshLab(Path(tmp_path_factory.mktemp("leave")), prefix="vmreg", subnet="10.230.31.0/24")
    try:
        lab.add_control_plane(DEMO_CONFIG)
        lab.add_vm("web", "demo/web")
        lab.add_vm("api-1", "demo/api")
        lab.add_vm("api-2", "demo/api")
        yield lab
    finally:
        lab.close()


def ask(vm: VmHost, url: str = API_URL) -> tuple[int, str]:
    """One request from ``vm`` as an ordinary user: (HTTP status, name of the VM that answered)."""
    r = vm.curl(url, timeout=5)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), str(json.loads(body).get("name", ""))
    except ValueError:
        return int(code or 0), ""


@dataclass
class RequestLoop:
    """Requests from ``vm`` one after another in a thread, until stopped or ``max_requests``/``max_seconds``."""

    vm: VmHost
    max_requests: int = 2000
    max_seconds: float = 90.0
    results: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic time, status, name)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.results) < self.max_requests:
            if time.monotonic() > deadline:
                return
            code, name = ask(self.vm)
            self.results.append((time.monotonic(), code, name))

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def count_after(self, t: float) -> int:
        return sum(1 for r in self.results if r[0] > t)


def workloads(mesh: MeshLab) -> list[dict[str, object]]:
    assert mesh.cp is not None
    r = mesh.cp.cli("workloads", "-o", "json", "--server", mesh.cp.http)
    doc: list[dict[str, object]] = json.loads(r.stdout)
    return doc


def test_status_json_has_every_documented_field(mesh: MeshLab) -> None:
    api = mesh.vms["api-1"]
    doc = wait_for(
        lambda: (d := api.status()).get("registration", {}).get("connected") and d,
        timeout=20,
        what="api-1 to show a registered link",
    )
    assert doc["running"] is True and doc["ready"] is True and doc["state"] == "ready"
    assert doc["identity"]["spiffe_id"] == "spiffe://cluster.local/ns/demo/sa/api"
    assert doc["identity"]["not_after"] > doc["identity"]["next_rotation"] > doc["identity"]["not_before"]
    assert doc["workload"] == {"namespace": "demo", "group": "api", "address": api.address}
    assert doc["control_plane"]["connected"] is True and doc["control_plane"]["registered"] is True
    reg = doc["registration"]
    assert (
        reg["entry_name"] == f"api-{api.address}" and reg["connected_at"] and reg["disconnected_at"] is None
    )
    assert reg["registrations"] >= 1 and reg["left"] is False
    assert doc["health"] == {
        "probe": False, "healthy": True, "message": "no probe in the WorkloadGroup", "acked": None,
    }  # fmt: skip
    assert doc["envoy"]["live"] is True and doc["envoy"]["pid"] > 0
    assert doc["capture"] == {"enabled": True, "applied": True, "error": None}
    assert {"Cluster", "ClusterLoadAssignment", "Listener"} <= set(doc["xds"]), doc["xds"]
    assert all(s["acks"] >= 1 and not s["nack"] for s in doc["xds"].values()), doc["xds"]
    assert doc["leave"] is None
    text = api.vmagent("status", *api.dirs()).stdout
    assert f"registration:   api-{api.address}, connected since" in text


def test_leave_during_a_request_loop_fails_no_request(mesh: MeshLab) -> None:
    web, api1, api2 = mesh.vms["web"], mesh.vms["api-1"], mesh.vms["api-2"]
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    for _ in range(300):  # both VMs serve before the leave (bounded in count and time)
        if time.monotonic() > deadline:
            break
        code, name = ask(web)
        if code == 200:
            seen.add(name)
        if seen == {"api-1", "api-2"}:
            break
    assert seen == {"api-1", "api-2"}
    agent = api2.agent
    assert agent is not None
    with RequestLoop(web) as loop:
        wait_for(lambda: len(loop.results) >= 10, timeout=20, what="the request loop to start")
        started = time.monotonic()
        out = api2.leave()
        left = time.monotonic()
        wait_for(lambda: loop.count_after(left) >= 20, timeout=30, what="20 requests after the leave")
    print(f"leave took {left - started:.2f}s; {len(loop.results)} requests, output:\n{out.stdout}")
    assert loop.failures() == [], f"failed requests during the leave: {loop.failures()[:5]}"
    assert "confirmed by every proxy" in out.stdout and "the agent stopped" in out.stdout
    assert agent.wait(timeout=10) == 0  # a clean exit: systemd's Restart=on-failure leaves it stopped
    after = [name for t, _code, name in loop.results if t > left]
    assert after and set(after) == {"api-1"}
    names = [str(w["name"]) for w in workloads(mesh)]
    assert f"api-{api2.address}" not in names and f"api-{api1.address}" in names
    rules = api2.ns.run(["iptables-save", "-t", "nat"], check=False).stdout
    assert "VMAGENT" not in rules, "capture must be removed after a leave"
    # The VM now talks to its app directly (no capture, no mesh): plain HTTP still answers on its address.
    doc = api2.status()
    assert doc["running"] is False and doc["state"] == "left" and doc["left"]["confirmed"] is True


def test_leave_again_says_so_and_exits_0(mesh: MeshLab) -> None:
    api2 = mesh.vms["api-2"]
    assert api2.agent is None or api2.agent.poll() is not None
    out = api2.leave()
    assert out.returncode == 0
    assert "the agent is not running: this VM left the mesh at" in out.stdout


def test_leave_refuses_a_caller_that_is_not_root(mesh: MeshLab) -> None:
    api1 = mesh.vms["api-1"]
    from vmagent.lab.mesh import exe

    cmd = [exe("vmagent"), "leave", *api1.dirs(), "--runtime-dir", str(api1.runtime_dir)]
    r = api1.ns.run(cmd, user="nobody", check=False, timeout=30)
    assert r.returncode == 1
    assert "run this as root" in r.stderr or "Permission denied" in r.stderr, r.stderr
    assert api1.status()["state"] == "ready"  # nothing happened


def test_registration_with_another_groups_service_account_is_refused(mesh: MeshLab) -> None:
    """A VM holding web's certificate but configured to register as api: refused, never an api endpoint."""
    web = mesh.vms["web"]
    rogue = mesh.add_vm("rogue", "demo/web", config={"workload": {"group": "api"}})
    doc = wait_for(
        lambda: "PERMISSION_DENIED" in str((d := rogue.status())["registration"].get("last_error")) and d,
        timeout=20,
        what="the refusal to show in vmagent status",
    )
    assert doc["registration"]["connected"] is False and doc["control_plane"]["registered"] is False
    assert (
        "certificate identity spiffe://cluster.local/ns/demo/sa/web may not register in WorkloadGroup "
        "demo/api, which requires spiffe://cluster.local/ns/demo/sa/api" in doc["registration"]["last_error"]
    )
    assert rogue.address not in {str(w["address"]) for w in workloads(mesh)}
    answers = {ask(web)[1] for _ in range(10)}
    assert "rogue" not in answers
