"""A VM that dies (agent and Envoy SIGKILLed, as a crash or power loss would) on real VMs in namespaces:
its endpoint leaves EDS on the clients within the heartbeat timeout, traffic goes to the survivor, and its
auto-registered entry is deleted after the grace period (both short here: 3 s and 8 s)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API_URL = "http://api.demo.svc.cluster.local:8080/lifecycle"
CLUSTER = "outbound|8080||api.demo.svc.cluster.local"
HEARTBEAT_TIMEOUT, GRACE_PERIOD = 3.0, 8.0
# The reaper runs every heartbeat_timeout / 4 s; polling the API costs a little more.
REAP_SLACK = HEARTBEAT_TIMEOUT / 4 + 0.75


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    lab = MeshLab(Path(tmp_path_factory.mktemp("lifecycle")), prefix="vmreg", subnet="10.230.32.0/24")
    try:
        lab.add_control_plane(
            DEMO_CONFIG,
            extra_args=[
                "--heartbeat-timeout",
                f"{HEARTBEAT_TIMEOUT:g}s",
                "--grace-period",
                f"{GRACE_PERIOD:g}s",
            ],
        )
        lab.add_vm("web", "demo/web")
        lab.add_vm("api-1", "demo/api")
        lab.add_vm("api-2", "demo/api")
        yield lab
    finally:
        lab.close()


def ask(vm: VmHost) -> tuple[int, str]:
    r = vm.curl(API_URL, timeout=5)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), str(json.loads(body).get("name", ""))
    except ValueError:
        return int(code or 0), ""


def entry(mesh: MeshLab, name: str) -> dict[str, Any] | None:
    """The workload ``name`` from the control plane's API (cheaper to poll than the CLI)."""
    assert mesh.cp is not None
    return next((w for w in mesh.cp.api("/api/v1/workloads") if w["name"] == name), None)


def eds_addresses(vm: VmHost) -> set[str]:
    """The api endpoints ``vm``'s Envoy has (its admin /clusters)."""
    out = vm.envoy_admin("/clusters", timeout=3)
    return {
        line.split("::")[1].rsplit(":", 1)[0]
        for line in out.splitlines()
        if line.startswith(CLUSTER + "::") and line.split("::")[2] == "cx_active"
    }


def test_killed_vm_leaves_eds_within_the_heartbeat_timeout_and_is_deleted_after_the_grace_period(
    mesh: MeshLab,
) -> None:
    assert mesh.cp is not None
    web, api1, api2 = mesh.vms["web"], mesh.vms["api-1"], mesh.vms["api-2"]
    name2 = f"api-{api2.address}"
    wait_for(
        lambda: eds_addresses(web) == {api1.address, api2.address}, timeout=20, what="both api VMs in EDS"
    )
    mesh.kill_agent(api2)
    killed = time.monotonic()

    gone = wait_for(
        lambda: (e := entry(mesh, name2)) is not None and not e["in_eds"] and e,
        timeout=HEARTBEAT_TIMEOUT + 10,
        what=f"{name2} to leave EDS",
    )
    out_of_eds = time.monotonic() - killed
    wait_for(lambda: eds_addresses(web) == {api1.address}, timeout=5, what="web's Envoy to drop api-2")
    out_of_clients = time.monotonic() - killed
    print(f"out of EDS {out_of_eds:.2f}s after the kill, out of web's Envoy after {out_of_clients:.2f}s")
    assert out_of_eds <= HEARTBEAT_TIMEOUT + REAP_SLACK
    assert gone["connected"] is False and gone["delete_at"] is not None
    answers = [ask(web) for _ in range(20)]
    assert answers == [(200, "api-1")] * 20

    wait_for(lambda: entry(mesh, name2) is None, timeout=GRACE_PERIOD + 10, what=f"{name2} to be deleted")
    deleted = time.monotonic() - killed
    print(f"deleted {deleted:.2f}s after the kill")
    # The disconnect is stored in whole seconds: allow one second early.
    assert GRACE_PERIOD - 1 <= deleted <= GRACE_PERIOD + REAP_SLACK + 2
    listed = json.loads(mesh.cp.cli("workloads", "-o", "json", "--server", mesh.cp.http).stdout)
    assert sorted(w["name"] for w in listed) == sorted([f"api-{api1.address}", f"web-{web.address}"])


def test_leave_without_a_control_plane_keeps_the_agent_running_unless_forced(mesh: MeshLab) -> None:
    assert mesh.cp is not None and mesh.cp.process is not None
    api1 = mesh.vms["api-1"]
    mesh.cp.process.terminate()
    mesh.cp.process.wait(timeout=20)
    refused = api1.leave("--timeout", "2s", check=False)
    assert refused.returncode == 1
    assert "the control plane did not confirm the leave within 2s" in refused.stderr
    assert "the agent keeps running" in refused.stderr and "\n" not in refused.stderr.strip()
    doc = api1.status()
    assert doc["running"] is True and doc["capture"]["applied"] is True and doc["leave"]["state"] == "failed"
    forced = api1.leave("--timeout", "1s", "--force")
    assert "NOT confirmed by the control plane" in forced.stdout and "the agent stopped" in forced.stdout
    assert api1.agent is not None and api1.agent.wait(timeout=10) == 0
    rules = api1.ns.run(["iptables-save", "-t", "nat"], check=False).stdout
    assert "VMAGENT" not in rules
