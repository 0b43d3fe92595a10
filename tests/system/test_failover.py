"""Failover without errors: two VMs behind one service (no VirtualService, no DestinationRule), a client VM
sending a paced request loop (>= 200 req/s) through capture; one api VM's application is SIGKILLed while
the loop runs. Istio's default route retry policy (503 retried on another host) must hide it: zero failed
requests. The same with the whole network of one api VM cut (vmagent's failover defaults beyond Istio's,
docs/traffic.md, "Failover"). The figures are printed (``pytest -s``) and asserted. Also: DNS capture on by
default after a plain join (and the ``--no-dns-capture`` opt-out)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import GROUPS, SERVICES
from vmagent.lab.mesh import MeshLab
from vmagent.lab.wait import wait_for

URL = "http://api.demo.svc.cluster.local:8080/hello"
RATE, REQUESTS, DURATION = 250, 3000, 12.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    lab = MeshLab(Path(tmp_path_factory.mktemp("failover")), prefix="vmfo", subnet="10.230.41.0/24")
    try:
        lab.add_control_plane({"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES})
        lab.add_vm("web", "demo/web", app_port=None)
        lab.add_vm("api-1", "demo/api")
        lab.add_vm("api-2", "demo/api")
        web = lab.vms["web"]
        # Both endpoints in the client's EDS before the loop starts.
        names: set[str] = set()

        def both_answered() -> bool:
            names.add(lab.wait_reachable(web, URL, timeout=30)["name"])
            return names == {"api-1", "api-2"}

        wait_for(both_answered, timeout=90, what="both api VMs to answer")
        yield lab
    finally:
        lab.close()


def run_loop_and(lab: MeshLab, action: Any) -> dict[str, Any]:
    """The paced loop from web (VmHost.run_loop): ``action()`` after 500 answered requests."""
    return lab.vms["web"].run_loop(
        URL, action, rate=RATE, requests=REQUESTS, duration=DURATION, label="failover loop"
    )


def test_application_killed_on_one_vm_fails_no_request(mesh: MeshLab) -> None:
    victim = mesh.vms["api-1"]
    app = victim.apps[0]

    def kill() -> None:
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=10)

    report = run_loop_and(mesh, kill)
    assert report["sent"] >= 2000, report  # the loop really ran at >= 200 req/s for ~10 s
    assert report["rate_per_s"] >= 200, report
    assert report["failed"] == 0, report
    assert report["ok"] == report["sent"]
    # Both VMs answered before the kill, only api-2 after it: the retries moved to the live one.
    assert report["answered_by"].get("api-1", 0) > 0 and report["answered_by"]["api-2"] > report["ok"] / 2


def test_a_default_join_resolves_mesh_names(mesh: MeshLab) -> None:
    """Issue 10 item 3: `vmagent join` with no DNS option turns DNS capture on and says so; an ordinary
    user's curl by the service's Kubernetes name gets an answer through capture and the DNS proxy."""
    web = mesh.vms["web"]
    assert "DNS capture: on" in web.join_output
    cfg = yaml.safe_load((web.config_dir / "config.yaml").read_text())
    assert (cfg.get("capture") or {}).get("dns", True) is True  # nothing set by hand
    r = web.curl(URL)
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200", r
    assert json.loads(body)["name"] in ("api-1", "api-2")


def test_join_with_no_dns_capture_opts_out(mesh: MeshLab) -> None:
    vm = mesh.add_vm("nodns", "demo/web", app_port=None, join_args=("--no-dns-capture",))
    assert "DNS capture: off" in vm.join_output
    cfg = yaml.safe_load((vm.config_dir / "config.yaml").read_text())
    assert cfg["capture"]["dns"] is False
    assert vm.status()["dns"]["enabled"] is True  # the proxy runs; only the capture of port 53 is off
    r = vm.curl(URL, timeout=5)
    # The name does not resolve: the VM's own resolver (the lab's, where nothing answers) does not know
    # it, so curl fails to resolve (6) or times out waiting for the resolver (28); no answer comes back.
    assert r.returncode in (6, 28) and r.stdout.endswith("000"), r


def cut_network(ns_run: Any, ifnames: list[str], state: str = "down") -> None:
    for name in ifnames:
        ns_run(["ip", "link", "set", name, state])


@pytest.mark.xfail(
    strict=True,
    reason="known gap (docs/traffic.md, 'Failover'): without default outlier detection new requests keep "
    "choosing the cut VM until it leaves EDS (heartbeat timeout) and the loop falls far below its rate",
)
def test_network_of_one_vm_cut_fails_no_request(mesh: MeshLab) -> None:
    """The whole network of api-2 (agent, Envoy and app) disappears: link down in its namespace. vmagent's
    failover defaults (docs/traffic.md, "Failover") must hide it: TCP_USER_TIMEOUT closes the connections
    to api-2 in about 2 s, their GETs are retried on api-1 (``reset``, idempotent methods only), and
    outlier detection ejects api-2 so that no new request waits on it."""
    victim = mesh.vms["api-2"]
    out = victim.ns.run(["ip", "-o", "link", "show"]).stdout
    ifnames = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    ifnames = [n for n in ifnames if n != "lo"]
    assert ifnames
    # api-1's application was killed by the test above: start it again and wait until it answers.
    api1 = mesh.vms["api-1"]
    if not any(a.poll() is None for a in api1.apps):
        api1.apps.clear()
        api1.start_app(8080)
    web = mesh.vms["web"]
    seen: set[str] = set()
    wait_for(
        lambda: seen.add(mesh.wait_reachable(web, URL)["name"]) or seen == {"api-1", "api-2"}, timeout=60
    )
    try:
        report = run_loop_and(mesh, lambda: cut_network(victim.ns.run, ifnames))
    finally:
        cut_network(victim.ns.run, ifnames, "up")
    assert report["rate_per_s"] >= 200, report
    assert report["failed"] == 0, report
    assert report["ok"] == report["sent"]
    # Both VMs answered before the cut, only api-1 after it.
    assert report["answered_by"].get("api-2", 0) > 0 and report["answered_by"]["api-1"] > report["ok"] / 2
