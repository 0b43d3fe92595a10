"""The whole product on real virtual machines: Debian 12 VMs under QEMU (KVM when the host has it, software
emulation otherwise) managed by Vagrant with the libvirt provider (docs/vagrant.md).

One control-plane VM and three workload VMs (vm1 and vm2 serve "web", vm3 is "api"), booted once for the module; the scenarios run in file order
on them, as an operator would, and a scenario whose predecessor failed is skipped rather than run on VMs
in an unknown state:

* join: the .deb packages of ``make packages`` installed and joined by the Ansible role (site.yml run
  from this machine over SSH); ``vmagent status`` ready on every VM, each in EDS; a plain ``curl`` as an
  unprivileged user on vm3 reaches the unchanged application on vm1 and vm2 by its mesh name, captured
  into Envoy and carried over mutual TLS.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ansible.fleet import PlaybookRun
from tests.package.conftest import Packages
from tests.vagrant.cluster import Cluster
from tests.vagrant.conftest import figure
from tests.vagrant.playbook import playbook, write_inventory
from vmagent.lab.wait import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(3600)]

GROUPS = {"vm1": "demo/web", "vm2": "demo/web", "vm3": "demo/api"}
WEB = "web.demo.svc.cluster.local"
# The application: unchanged and unaware of the mesh, a unit enabled at boot. After= orders it behind the
# agent (whose readiness includes capture), as docs/vagrant.md tells operators; ExecStartPre only records,
# for the reboot scenario, how many capture rules were in place when the application started.
APP_UNIT = """\
[Unit]
Description=the application (python3 http.server)
After=vmagent.service

[Service]
ExecStartPre=/bin/sh -c 'iptables-save -t nat | grep -c "^-A VMAGENT" > /run/app-capture-rules || true'
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 --directory /usr/share/doc
Restart=always

[Install]
WantedBy=multi-user.target
"""
APP = (
    f"printf '%s' {shlex.quote(APP_UNIT)} > /etc/systemd/system/app.service && "
    "systemctl daemon-reload && systemctl enable --now app.service"
)


@dataclass
class Mesh:
    vms: Cluster
    workdir: Path
    packages: Packages
    previous: Packages
    inventory: Path
    failed: list[str] = field(default_factory=list)
    spiffe: dict[str, str] = field(default_factory=dict)

    def run(self, name: str, *args: str) -> PlaybookRun:
        return playbook(self.workdir, self.inventory, name, *args)

    def status(self, name: str) -> dict[str, object]:
        return dict(json.loads(self.vms.ssh(name, "vmagent status -o json").stdout))

    def in_eds(self) -> set[str]:
        out = self.vms.ssh("cp", "vmagent-cp workloads -o json").stdout
        return {str(w["address"]) for w in json.loads(out) if w.get("in_eds")}

    def handshakes(self, name: str, host: str) -> int:
        stats = self.vms.ssh(name, "curl -sS http://127.0.0.1:15000/stats").stdout
        m = re.search(rf"cluster\.outbound\|8080\|\|{re.escape(host)}\.ssl\.handshake: (\d+)", stats)
        return int(m.group(1)) if m else 0

    def step(self, needs: str | None) -> None:
        if needs is not None and needs in self.failed:
            pytest.skip(f"needs the {needs} scenario, which failed")

    def fail(self, step: str, message: str) -> None:
        self.failed.append(step)
        pytest.fail(message)


@pytest.fixture(scope="module")
def mesh(
    cluster: Cluster, vagrant_packages: tuple[Packages, Packages], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    current, previous = vagrant_packages
    assert current.cp_deb is not None
    workdir = tmp_path_factory.mktemp("ansible")
    inventory = write_inventory(
        cluster,
        workdir / "inventory.yml",
        GROUPS,
        {"vmagent_package_source": str(current.deb), "vmagent_cp_package_source": str(current.cp_deb)},
    )
    yield Mesh(cluster, workdir, current, previous, inventory)


def curl_as_nobody(vms: Cluster, name: str, url: str) -> str:
    """``curl`` by user nobody on VM ``name``: the HTTP status, or the error."""
    r = vms.ssh(
        name,
        f"runuser -u nobody -- curl -sS -o /dev/null -w '%{{http_code}}' --max-time 30 {url}",
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else f"curl exit {r.returncode}: {r.stderr.strip()}"


def app_requests(vms: Cluster, name: str) -> int:
    """GET requests the application on ``name`` has logged (http.server logs each to stderr)."""
    out = vms.ssh(name, "journalctl -u app -o cat --no-pager", check=False).stdout
    return out.count('"GET /')


def test_join_every_vm_and_curl_by_name_over_mtls(mesh: Mesh) -> None:
    vms = mesh.vms
    for name, group in GROUPS.items():
        if group == "demo/web":
            vms.ssh(name, APP)
    start = time.monotonic()
    result = mesh.run("site")
    took = time.monotonic() - start
    if result.rc != 0:
        mesh.fail("join", f"site.yml failed:\n{result.output[-8000:]}")
    figure(f"join: site.yml (install cp + {len(GROUPS)} VMs, join, ready, in EDS): {took:.0f} s")
    figure(f"join: boot-to-ready (vagrant up + site.yml): {vms.up_seconds + took:.0f} s")
    for name, group in GROUPS.items():
        status = mesh.status(name)
        assert status["ready"] is True, status
        identity = status["identity"]
        assert isinstance(identity, dict)
        spiffe = str(identity["spiffe_id"])
        assert spiffe.endswith("/ns/demo/sa/" + group.split("/")[1]), spiffe
        mesh.spiffe[name] = spiffe
        active = vms.ssh(name, "systemctl is-active vmagent.service", check=False).stdout.strip()
        assert active == "active", f"{name}: vmagent.service is {active}"
    assert mesh.in_eds() == {vms.addresses[n] for n in GROUPS}
    # The application is unchanged and the client is a plain curl by an unprivileged user: only the
    # capture can have brought the request into vm3's Envoy, which opened mutual TLS to web's Envoys.
    # Requests go on until both web VMs have served one (the load balancer picks; no count is assumed).
    before = mesh.handshakes("vm3", WEB)
    codes: list[str] = []

    def both_served() -> bool:
        codes.append(curl_as_nobody(vms, "vm3", f"http://{WEB}:8080/"))
        return all(app_requests(vms, n) > 0 for n, g in GROUPS.items() if g == "demo/web")

    wait_for(both_served, timeout=300, interval=0.5, what="requests from vm3 served by vm1 and by vm2")
    if set(codes) != {"200"}:
        mesh.fail("join", f"vm3 -> {WEB}: {codes}")
    after = mesh.handshakes("vm3", WEB)
    assert after > before, f"no TLS handshake from vm3's Envoy to {WEB} ({before} -> {after})"
    figure(f"join: {len(codes)} curl vm3 -> {WEB} as nobody: all 200, TLS handshakes {before} -> {after}")


# The client's loop on vm3: a plain HTTP GET of web by name every 50 ms until /tmp/stop-loop appears. Each
# request is counted in the phase named by the newest marker the test left (/tmp/phase-*), so failures
# before vm1 left EDS (while the control plane learns it is going) are told apart from those after.
LOOP = """
import glob, json, os, time, urllib.request
counts = {}
errors = []
while not os.path.exists('/tmp/stop-loop'):
    marks = sorted(glob.glob('/tmp/phase-*'), key=os.path.getmtime)
    phase = marks[-1].split('phase-', 1)[1] if marks else 'start'
    c = counts.setdefault(phase, {'ok': 0, 'failed': 0})
    try:
        with urllib.request.urlopen('http://web.demo.svc.cluster.local:8080/', timeout=10) as r:
            r.read()
            c['ok' if r.status == 200 else 'failed'] += 1
    except Exception as exc:
        c['failed'] += 1
        errors.append(phase + ': ' + repr(exc)[:160])
    time.sleep(0.05)
print(json.dumps({'counts': counts, 'errors': errors[:10]}))
"""


def test_reboot_of_a_web_vm_keeps_identity_and_fails_over(mesh: Mesh) -> None:
    mesh.step(needs="join")
    vms = mesh.vms
    vm1 = vms.addresses["vm1"]
    tokens = len(json.loads(vms.ssh("cp", "vmagent-cp token list -o json").stdout))
    vms.ssh("vm3", f"rm -f /tmp/stop-loop /tmp/phase-*; printf '%s' {shlex.quote(LOOP)} > /tmp/loop.py")
    loop = subprocess.Popen(
        [*vms.ssh_args("vm3"), "sudo runuser -u nobody -- python3 /tmp/loop.py"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    reload = subprocess.Popen(
        ["vagrant", "reload", "vm1"], env=vms.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: vm1 not in mesh.in_eds(), timeout=600, interval=1.0, what="vm1 out of EDS")
        out_at = time.monotonic() - start
        vms.ssh("vm3", "touch /tmp/phase-out-of-eds")
        wait_for(lambda: vm1 in mesh.in_eds(), timeout=1200, interval=2.0, what="vm1 back in EDS")
        back_at = time.monotonic() - start
        vms.ssh("vm3", "touch /tmp/phase-back-in-eds")
        reload_out, _ = reload.communicate(timeout=1200)
        if reload.returncode != 0:
            mesh.fail("reboot", f"vagrant reload vm1 failed:\n{reload_out[-4000:]}")
        # a few more requests with vm1 back before the loop stops
        wait_for(lambda: app_requests(vms, "vm1") > 0, timeout=300, interval=1.0, what="vm1 serving again")
    finally:
        if reload.poll() is None:
            reload.kill()
        vms.ssh("vm3", "touch /tmp/stop-loop", check=False)
        out, err = loop.communicate(timeout=120)
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    counts = summary.get("counts", {})
    figure(
        f"reboot: vm1 out of EDS after {out_at:.0f} s, back in EDS (boot-to-ready) after {back_at:.0f} s; "
        f"vm3's requests per phase: {counts}"
    )
    for phase in ("out-of-eds", "back-in-eds"):
        got = counts.get(phase, {})
        assert got.get("failed") == 0 and got.get("ok", 0) > 0, (phase, summary)
    status = mesh.status("vm1")
    assert status["ready"] is True, status
    identity = status["identity"]
    assert isinstance(identity, dict) and identity["spiffe_id"] == mesh.spiffe["vm1"], identity
    assert len(json.loads(vms.ssh("cp", "vmagent-cp token list -o json").stdout)) == tokens, "a new token"
    enabled = vms.ssh("vm1", "systemctl is-enabled vmagent.service", check=False).stdout.strip()
    assert enabled == "enabled", enabled
    rules_at_start = int(vms.ssh("vm1", "cat /run/app-capture-rules").stdout.strip() or 0)
    assert rules_at_start > 0, "the application started before the capture rules were back"
