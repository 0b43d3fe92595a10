"""The collection against real machines over SSH: one control plane and three VMs (Debian 12 under
systemd-nspawn, each in its own network namespace on one LAN), driven by ansible-playbook.

The scenarios share the booted machines and run in file order, as an operator would: a wrong variable
and ``--check`` first (on fresh machines: nothing may change), then ``site.yml`` at ``-vvv`` (the join
tokens appear neither in its output nor in any machine's journal), the same again (``changed=0``, no
token minted), an ``upgrade.yml`` whose first host fails (the later batches are not touched), a rolling
``upgrade.yml`` under traffic, a VM whose certificate expired while it was stopped (rejoined), and
``remove.yml``. A step whose predecessor failed is skipped rather than run on a machine in an unknown
state.

Package sources: ``site.yml`` installs from a file on the controller, the rolling upgrade from a URL
(with its SHA-256) and the failing-host upgrade from an apt repository, all served by an HTTP server in
the controller's namespace (``Fleet.serve``).

To see the tokens the role mints, the control-plane machine gets a ``/usr/local/bin/vmagent-cp`` that
runs ``/usr/bin/vmagent-cp`` and appends the token of every ``token create`` to a file only this test
reads (``MINTED``); every other command is executed unchanged.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ansible.fleet import Fleet, Node, PlaybookRun, apt_repository, fleet_rootfs, sha256
from tests.harness import require_root, require_tool, wait_for
from tests.package.conftest import CACHE, Packages
from vmagent.lab.demo_config import GROUPS, SERVICES

# The first test also pays for the shared fixture: package builds (when not cached) and four boots.
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1500)]

VMS = {"vm1": "demo/web", "vm2": "demo/web", "vm3": "demo/api"}
APP = (
    "systemd-run --unit=app --property=Restart=always "
    "/usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 --directory /usr/share/doc"
)


MINTED = "/root/minted-tokens"
RECORDING_SHIM = f"""#!/usr/bin/python3
# Test-only wrapper (tests/ansible/test_fleet.py): records the tokens `token create` prints.
import json, os, subprocess, sys
if sys.argv[1:3] != ["token", "create"]:
    os.execv("/usr/bin/vmagent-cp", ["vmagent-cp", *sys.argv[1:]])
r = subprocess.run(["/usr/bin/vmagent-cp", *sys.argv[1:]], capture_output=True, text=True)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
if r.returncode == 0 and "-o" in sys.argv:
    with open("{MINTED}", "a") as f:
        f.write(json.loads(r.stdout)["token"] + "\\n")
sys.exit(r.returncode)
"""


class Lab:
    def __init__(self, fleet: Fleet, workdir: Path, packages: Packages, previous: Packages) -> None:
        self.fleet = fleet
        self.cp = fleet.nodes["cp"]
        self.vms = {name: fleet.nodes[name] for name in VMS}
        self.packages = packages
        self.previous = previous
        self.failed: list[str] = []
        self.iptables_before: list[str] = []
        self.site_output = ""
        assert packages.cp_deb is not None
        self.host_vars = {
            name: {"vmagent_group": group, "vmagent_address": fleet.nodes[name].address}
            for name, group in VMS.items()
        }
        self.common = {
            "vmagent_cp_host": "cp",
            "vmagent_package_source": str(previous.deb),
            "vmagent_cp_package_source": str(packages.cp_deb),
            "vmagent_cp_config_files": {"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES},
        }
        groups = {"vmagent_cp": ["cp"], "vmagent": list(VMS)}
        self.inventory = fleet.write_inventory(workdir / "inventory.yml", groups, self.host_vars, self.common)
        no_cp = {k: v for k, v in self.common.items() if k != "vmagent_cp_host"}
        self.inventory_no_cp_host = fleet.write_inventory(
            workdir / "inventory-no-cp.yml", groups, self.host_vars, no_cp
        )
        # The current agent package at a URL and in an apt repository, both served from the controller.
        www = workdir / "www"
        www.mkdir()
        (www / packages.deb.name).write_bytes(packages.deb.read_bytes())
        apt_repository(www / "repo", [packages.deb])
        self.base_url = fleet.serve(www)
        self.deb_url = f"{self.base_url}/{packages.deb.name}"
        self.deb_sha256 = sha256(packages.deb)

    def inventory_with(
        self, name: str, order: list[str], host_vars: dict[str, dict[str, Any]], common: dict[str, Any]
    ) -> Path:
        """Another inventory: the VMs in ``order``, extra per-host and common variables."""
        merged = {vm: {**self.host_vars[vm], **host_vars.get(vm, {})} for vm in order}
        groups = {"vmagent_cp": ["cp"], "vmagent": order}
        return self.fleet.write_inventory(
            self.fleet.workdir / name, groups, merged, {**self.common, **common}
        )

    def status(self, node: Node) -> dict[str, Any]:
        r = node.sh("vmagent status -o json", check=False)
        return dict(json.loads(r.stdout)) if r.stdout.strip().startswith("{") else {}

    def invocation(self, node: Node) -> str:
        """The agent's current service invocation (a new one on every start)."""
        return node.sh("systemctl show -p InvocationID --value vmagent.service").stdout.strip()

    def run(self, playbook: str, *args: str, inventory: Path | None = None) -> PlaybookRun:
        result = self.fleet.playbook(inventory or self.inventory, playbook, *args)
        (self.fleet.workdir / f"{playbook}-{len(self.failed)}-{os.getpid()}.log").write_text(result.output)
        return result

    def token_count(self) -> int:
        out = self.cp.sh("vmagent-cp token list -o json").stdout
        return len(json.loads(out))

    def workloads(self) -> list[dict[str, object]]:
        return list(json.loads(self.cp.sh("vmagent-cp workloads -o json").stdout))

    def step(self, needs: str | None = None) -> None:
        if needs is not None and needs in self.failed:
            pytest.skip(f"needs the {needs} step, which failed")


@pytest.fixture(scope="module")
def lab(
    packages: Packages, previous_packages: Packages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    require_root()
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "ip", "ssh", "ssh-keygen"):
        require_tool(tool)
    rootfs = fleet_rootfs(CACHE)
    workdir = tmp_path_factory.mktemp("fleet")
    with Fleet(rootfs, workdir, "vmans", "10.236.0.0/24") as fleet:
        fleet.boot(["cp", *VMS])
        yield Lab(fleet, workdir, packages, previous_packages)


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"}


def rules(node: Node) -> list[str]:
    """The VM's IPv4 and IPv6 rules and chains: every rule, every chain of its own, every built-in
    chain whose policy is not ACCEPT. (An empty table with ACCEPT policies filters nothing: the nft
    backend creates one when asked to list it, so it is not a difference an operator could notice.)"""
    out = node.sh("iptables-save; ip6tables-save").stdout
    kept = []
    for line in out.splitlines():
        if line.startswith("-A"):
            kept.append(line)
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if chain not in BUILTIN_CHAINS or policy != "ACCEPT":
                kept.append(line.split(" [")[0])
    return kept


def _fail(lab: Lab, step: str, message: str) -> None:
    lab.failed.append(step)
    pytest.fail(message)


def _nothing_installed(lab: Lab) -> list[str]:
    found = [f"{n.name}: vmagent" for n in lab.vms.values() if n.package_version("vmagent")]
    if lab.cp.package_version("vmagent-cp"):
        found.append("cp: vmagent-cp")
    return found


def test_wrong_variable_fails_before_any_change(lab: Lab) -> None:
    bad = lab.run("site", "-e", '{"vmagent_group": 42}')
    if bad.rc == 0 or "vmagent_group" not in bad.output:
        _fail(lab, "wrong-variable", f"vmagent_group: 42 was not refused by name:\n{bad.output[-4000:]}")
    missing = lab.run("site", inventory=lab.inventory_no_cp_host)
    if missing.rc == 0 or "vmagent_cp_host" not in missing.output:
        _fail(
            lab,
            "wrong-variable",
            f"a missing vmagent_cp_host was not refused by name:\n{missing.output[-4000:]}",
        )
    for result in (bad, missing):
        assert all(r["changed"] == 0 for r in result.recap.values()), result.output[-4000:]
    assert _nothing_installed(lab) == []


def test_check_mode_on_fresh_machines_changes_nothing(lab: Lab) -> None:
    before = {n.name: n.sh("iptables-save | grep -v '^#'; ls /etc").stdout for n in lab.vms.values()}
    result = lab.run("site", "--check", "--diff")
    if result.rc != 0:
        _fail(lab, "check", f"site.yml --check failed:\n{result.output[-6000:]}")
    for name in ("cp", *VMS):
        assert result.changed(name) > 0, (
            f"--check reported no change for fresh {name}:\n{result.output[-4000:]}"
        )
    assert "would mint a one-use token" in result.output
    assert _nothing_installed(lab) == []
    after = {n.name: n.sh("iptables-save | grep -v '^#'; ls /etc").stdout for n in lab.vms.values()}
    assert after == before
    for node in lab.vms.values():
        assert not (node.machine.root / "var/lib/vmagent/cert-chain.pem").exists()


def test_site_joins_every_vm_and_they_call_each_other_over_mtls(lab: Lab) -> None:
    lab.iptables_before = rules(lab.vms["vm3"])
    for node in lab.vms.values():
        node.sh(APP)
    shim = lab.cp.machine.root / "usr/local/bin/vmagent-cp"
    shim.write_text(RECORDING_SHIM)
    shim.chmod(0o755)
    result = lab.run("site", "--diff", "-vvv")
    lab.site_output = result.output
    if result.rc != 0:
        _fail(lab, "site", f"site.yml failed:\n{result.output[-8000:]}")
    assert lab.token_count() == len(VMS), "one token per VM"
    for node in lab.vms.values():
        status = json.loads(node.sh("vmagent status -o json").stdout)
        assert status["ready"] is True, status
        assert status["identity"]["spiffe_id"].endswith("/ns/demo/sa/" + VMS[node.name].split("/")[1])
        assert node.package_version("vmagent") == f"{lab.previous.version}-1"
    in_eds = {str(w["address"]) for w in lab.workloads() if w.get("in_eds")}
    assert in_eds == {n.address for n in lab.vms.values()}
    # By name, through each VM's Envoy: api -> web and web -> api, with mutual TLS between the Envoys.
    for client, host in (("vm3", "web.demo.svc.cluster.local"), ("vm1", "api.demo.svc.cluster.local")):
        node = lab.vms[client]
        r = node.sh(
            f"python3 -c \"import urllib.request as u; r = u.urlopen('http://{host}:8080/', timeout=10); print(r.status, r.headers.get('server'))\"",
            check=False,
        )
        if r.returncode != 0:
            _fail(lab, "site", f"{client} -> {host}: {r.stdout}{r.stderr}")
        assert r.stdout.split()[0] == "200", r.stdout
        stats = node.sh("vmagent envoy-admin /stats").stdout  # as root: the admin API is a root-only socket
        handshakes = [
            int(m.group(1))
            for m in re.finditer(
                rf"cluster\.outbound\|8080\|\|{re.escape(host)}\.ssl\.handshake: (\d+)", stats
            )
        ]
        assert handshakes and handshakes[0] > 0, f"no TLS handshake from {client} to {host}"


def test_join_tokens_appear_in_no_output_and_no_journal(lab: Lab) -> None:
    """The tokens minted for the joins are in neither the -vvv output of site.yml nor any machine's
    journal (where Ansible's modules log their invocations, "Invoked with ...")."""
    lab.step(needs="site")
    tokens = (lab.cp.machine.root / MINTED.lstrip("/")).read_text().split()
    assert len(tokens) == len(VMS), tokens
    assert "ESTABLISH SSH CONNECTION" in lab.site_output, "the output is not at -vvv"
    leaked = [f"ansible-playbook -vvv output: token {t[:12]}..." for t in tokens if t in lab.site_output]
    for node in (lab.cp, *lab.vms.values()):
        journal = node.sh("journalctl --no-pager -o cat", timeout=60).stdout
        assert "Invoked with" in journal, (
            f"{node.name}: Ansible's module invocations are not in the journal: the check proves nothing"
        )
        leaked += [f"{node.name}'s journal: token {t[:12]}..." for t in tokens if t in journal]
    assert leaked == []


def test_second_run_changes_nothing_and_mints_no_token(lab: Lab) -> None:
    lab.step(needs="site")
    tokens = lab.token_count()
    result = lab.run("site", "--diff")
    if result.rc != 0:
        _fail(lab, "rerun", f"second site.yml failed:\n{result.output[-6000:]}")
    changed = {h: r["changed"] for h, r in result.recap.items() if r["changed"]}
    assert changed == {}, f"second run changed {changed}:\n{result.output[-6000:]}"
    assert lab.token_count() == tokens


LOOP = """
import json, time, urllib.request, os
ok = failed = 0; errors = []
deadline = time.monotonic() + 600
while time.monotonic() < deadline and ok + failed < 20000 and not os.path.exists('/root/stop-loop'):
    try:
        with urllib.request.urlopen('http://web.demo.svc.cluster.local:8080/', timeout=5) as r:
            r.read()
            ok += r.status == 200
            failed += r.status != 200
    except Exception as exc:
        failed += 1; errors.append(repr(exc)[:200])
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10]}))
"""


def test_a_failing_host_stops_the_rollout(lab: Lab) -> None:
    """upgrade.yml with its default batches (serial 1, max_fail_percentage 0): the first host (vm3,
    upgraded from an apt repository) cannot be confirmed in EDS because the control plane's API it is
    given is unreachable; the run fails naming it, and vm1 and vm2 (to be upgraded from a URL in the
    later batches) are not touched: same package, same service invocation, nothing changed."""
    lab.step(needs="site")
    vm3 = lab.vms["vm3"]
    # An operator's configured repository: the controller's, and only it (the LAN reaches no mirror).
    vm3.sh(
        "mkdir -p /root/apt-sources && mv /etc/apt/sources.list /etc/apt/sources.list.d/* /root/apt-sources/ 2>/dev/null;"
        f" echo 'deb [trusted=yes] {lab.base_url}/repo ./' > /etc/apt/sources.list.d/vmagent.list"
    )
    inventory = lab.inventory_with(
        "inventory-halt.yml",
        ["vm3", "vm1", "vm2"],
        {
            "vm3": {
                "vmagent_package_source": "repo",
                "vmagent_package_version": "latest",
                "vmagent_cp_api": "http://127.0.0.1:9",
                "vmagent_ready_timeout": 40,
            }
        },
        {"vmagent_package_source": lab.deb_url, "vmagent_package_checksum": lab.deb_sha256},
    )
    before = {name: lab.invocation(lab.vms[name]) for name in ("vm1", "vm2")}
    result = lab.run("upgrade", inventory=inventory)
    assert result.rc != 0, result.output[-6000:]
    assert "upgrade of vm3 failed at" in result.output and "the rollout stops here" in result.output, (
        result.output[-6000:]
    )
    assert result.recap["vm3"]["failed"] == 1, result.recap
    assert vm3.package_version("vmagent") == f"{lab.packages.version}-1", "the repository source"
    for name in ("vm1", "vm2"):
        node = lab.vms[name]
        assert result.changed(name) == 0, f"{name} was touched:\n{result.output[-6000:]}"
        assert node.package_version("vmagent") == f"{lab.previous.version}-1"
        assert lab.invocation(node) == before[name], f"{name}'s agent was restarted"
        assert lab.status(node).get("ready") is True


def test_rolling_upgrade_fails_no_request(lab: Lab) -> None:
    lab.step(needs="site")
    client = lab.vms["vm3"]
    # The client VM runs the agent the previous test upgraded (it was ready; only its EDS check failed).
    wait_for(lambda: lab.status(client).get("ready") is True, timeout=120, what="vm3 ready")
    vm3_version = client.package_version("vmagent")
    (client.machine.root / "root" / "loop.py").write_text(LOOP)
    loop = subprocess.Popen(
        ["nsenter", "-t", str(client.machine.pid1), "-a", "--", "/usr/bin/python3", "/root/loop.py"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = lab.run(
            "upgrade",
            "--limit",
            "vm1,vm2",
            "-e",
            json.dumps(
                {
                    "vmagent_package_source": lab.deb_url,
                    "vmagent_package_checksum": lab.deb_sha256,
                    "vmagent_serial": 1,
                }
            ),
        )
    finally:
        (client.machine.root / "root" / "stop-loop").touch()
        out, err = loop.communicate(timeout=60)
    if result.rc != 0:
        _fail(lab, "upgrade", f"upgrade.yml failed:\n{result.output[-8000:]}")
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    assert summary.get("failed") == 0 and summary.get("ok", 0) > 20, summary
    for name in ("vm1", "vm2"):
        assert lab.vms[name].package_version("vmagent") == f"{lab.packages.version}-1"
        assert result.changed(name) > 0
    assert "vm3" not in result.recap and client.package_version("vmagent") == vm3_version


def test_vm_with_an_expired_certificate_is_rejoined(lab: Lab) -> None:
    """vm2 stopped with a certificate that then expired (issued with a 20 s lifetime while the control
    plane ran with --cert-ttl 20s): site.yml restores the control plane's default lifetime, mints one
    token and rejoins vm2 (--rejoin), which is ready again with a fresh certificate."""
    lab.step(needs="site")
    vm2 = lab.vms["vm2"]
    short = lab.run("site", "--limit", "cp", "-e", json.dumps({"vmagent_cp_extra_args": "--cert-ttl 20s"}))
    assert short.rc == 0, short.output[-6000:]
    minted = json.loads(
        lab.cp.sh(
            "vmagent-cp token create --group demo/web --uses 1 --ttl 5m -o json"
            f" --join-address {lab.cp.address}:15012"
        ).stdout
    )
    vm2.sh("systemctl stop vmagent.service")
    (vm2.machine.root / "root/token").write_text(minted["token"] + "\n")
    vm2.sh(
        f"vmagent join {minted['address']} --token-file /root/token --ca-hash {minted['ca_hash']}"
        f" --address {vm2.address} --rejoin --no-start; rm -f /root/token"
    )
    wait_for(
        lambda: lab.status(vm2).get("identity", {}).get("expired") is True,
        timeout=120,
        what="vm2's certificate expired",
    )
    tokens = lab.token_count()
    result = lab.run(
        "site", "--limit", "cp,vm2", "-e", json.dumps({"vmagent_package_source": str(lab.packages.deb)})
    )
    if result.rc != 0:
        _fail(lab, "rejoin", f"site.yml did not rejoin vm2:\n{result.output[-8000:]}")
    assert "Join the mesh (vmagent join --rejoin)" in result.output
    assert lab.token_count() == tokens + 1, "one token, for vm2"
    status = lab.status(vm2)
    assert status["ready"] is True and status["identity"]["expired"] is False, status
    not_after = datetime.datetime.fromisoformat(status["identity"]["not_after"])
    assert not_after > datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1), status
    assert vm2.address in {str(w["address"]) for w in lab.workloads() if w.get("in_eds")}


def test_remove_purges_and_deregisters(lab: Lab) -> None:
    lab.step(needs="site")
    node = lab.vms["vm3"]
    result = lab.run("remove", "--limit", "vm3")
    if result.rc != 0:
        _fail(lab, "remove", f"remove.yml failed:\n{result.output[-6000:]}")
    assert node.package_version("vmagent") is None
    assert rules(node) == lab.iptables_before
    assert node.address not in {str(w["address"]) for w in lab.workloads()}
    again = lab.run("remove", "--limit", "vm3")
    assert again.rc == 0 and again.changed("vm3") == 0, again.output[-4000:]
