"""The operator's path with the packages, in a booted Debian 12: install, `vmagent join` against a control
plane across a veth, the agent running under systemd (notify, watchdog), an upgrade that keeps the identity,
and a removal that leaves no capture rule and no process behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.package.conftest import Packages
from tests.package.machine import CP_ADDR, VM_ADDR, Link, Machine, RootfsCache, booted
from vmagent.common.proc import run

pytestmark = [pytest.mark.root, pytest.mark.slow]

GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: vm
  namespace: pkg
spec:
  metadata:
    labels:
      app: pkgvm
  template:
    serviceAccount: pkgvm
    ports:
      http: 8080
"""


def _exe(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _require_daemon() -> None:
    agent = run([_exe("vmagent"), "--help"], check=False).stdout
    cp = run([_exe("vmagent-cp"), "--help"], check=False).stdout
    missing = [
        c
        for c, text in (("vmagent join", agent), ("vmagent run", agent), ("vmagent-cp serve", cp))
        if c.split()[1] not in text
    ]
    if missing:
        pytest.skip(f"waiting on the daemon: {', '.join(missing)} not implemented yet")


class ControlPlane:
    """`vmagent-cp serve` from the dev tree, in the link's control-plane namespace."""

    def __init__(self, link: Link, workdir: Path) -> None:
        self.config_dir = workdir / "cp-config"
        self.state_dir = workdir / "cp-state"
        self.config_dir.mkdir()
        self.state_dir.mkdir(mode=0o700)
        (self.config_dir / "10-group.yaml").write_text(GROUP)
        self._log = open(workdir / "cp.log", "wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                link.cp_ns,
                _exe("vmagent-cp"),
                "serve",
                "--config-dir",
                str(self.config_dir),
                "--state-dir",
                str(self.state_dir),
                "--listen",
                f"{CP_ADDR}:15012",
                "--mtls-listen",
                f"{CP_ADDR}:15013",
                "--http-listen",
                "127.0.0.1:15014",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.log_path = workdir / "cp.log"

    def token(self) -> dict[str, str]:
        def create() -> dict[str, str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"vmagent-cp serve exited: {self.log_path.read_text()[-3000:]}")
            r = run(
                [
                    _exe("vmagent-cp"),
                    "token",
                    "create",
                    "--group",
                    "pkg/vm",
                    "--state-dir",
                    str(self.state_dir),
                    "--config-dir",
                    str(self.config_dir),
                    "--join-address",
                    f"{CP_ADDR}:15012",
                    "--server",
                    "",  # serve's HTTP API is in its own namespace: use the dirs given
                    "-o",
                    "json",
                ],
                check=False,
            )
            return json.loads(r.stdout) if r.returncode == 0 else None

        return wait_for(create, timeout=30, interval=0.2, what="the control plane to issue a join token")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def lab(rootfs: RootfsCache, tmp_path: Path) -> Iterator[tuple[Machine, ControlPlane]]:
    _require_daemon()
    with booted(rootfs, tmp_path, "j1") as (vm, link):
        assert link is not None
        cp = ControlPlane(link, tmp_path)
        try:
            yield vm, cp
        finally:
            cp.stop()


def install(vm: Machine, deb: Path) -> None:
    shutil.copy(deb, vm.root / "root" / deb.name)
    vm.exec(["dpkg", "-i", f"/root/{deb.name}"], timeout=300)


def journal(vm: Machine) -> str:
    return vm.exec(["journalctl", "-u", "vmagent", "--no-pager", "-n", "80"], check=False).stdout


def identity(vm: Machine) -> tuple[str, str]:
    """(SHA-256 of the private key file, SPIFFE id of the certificate)."""
    key = hashlib.sha256((vm.root / "var/lib/vmagent/key.pem").read_bytes()).hexdigest()
    out = vm.exec(["vmagent", "status", "-o", "json"], check=False).stdout
    spiffe = json.loads(out).get("identity", {}).get("spiffe_id")
    assert spiffe, f"no identity.spiffe_id in `vmagent status -o json`: {out[:2000]}"
    return key, str(spiffe)


def main_pid(vm: Machine) -> int:
    return int(vm.exec(["systemctl", "show", "-p", "MainPID", "--value", "vmagent"]).stdout.strip())


def wait_ready(vm: Machine) -> None:
    def ready() -> bool:
        active = vm.exec(["systemctl", "is-active", "vmagent"], check=False).stdout.strip()
        if active == "failed":
            raise AssertionError("vmagent.service failed:\n" + journal(vm))
        return active == "active" and vm.exec(["vmagent", "status"], check=False).returncode == 0

    wait_for(ready, timeout=90, interval=0.5, what="vmagent active and `vmagent status` ready")


PROXY_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"}


def check_surface(vm: Machine, when: str, adopted: bool = False) -> None:
    """What a local user on the VM faces (docs/security.md): private state, a root-only Envoy admin socket
    and no TCP admin port, and an agent holding only the capabilities it needs (every thread).
    ``adopted``: the running Envoy was adopted by a restarted agent (its admin socket is root:vmagent-proxy)."""
    modes = vm.exec(
        ["stat", "-c", "%n %a %U:%G", "/var/lib/vmagent", "/var/lib/vmagent/key.pem", "/run/vmagent",
         "/run/vmagent/envoy", "/run/vmagent/envoy/admin.sock", "/run/vmagent/control.sock"],
    ).stdout.split("\n")  # fmt: skip
    got = dict(line.split(" ", 1) for line in modes if line)
    print(f"{when}: {got}")
    if adopted:  # systemd chowned the kept runtime directory to root at the restart; the agent regrouped it
        assert got.pop("/run/vmagent/envoy/admin.sock") == "660 root:vmagent-proxy", when
        got["/run/vmagent/envoy/admin.sock"] = "660 vmagent-proxy:vmagent-proxy"
    assert got == {
        "/var/lib/vmagent": "700 root:root",
        "/var/lib/vmagent/key.pem": "600 root:root",
        "/run/vmagent": "750 root:vmagent-proxy",
        "/run/vmagent/envoy": "770 root:vmagent-proxy",
        "/run/vmagent/envoy/admin.sock": "660 vmagent-proxy:vmagent-proxy",
        "/run/vmagent/control.sock": "600 root:root",
    }, when
    # Nothing listens on TCP 15000 (0x3A98; state 0A = LISTEN), and root reads the admin API through the CLI.
    tcp = vm.exec(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
    assert not [ln for ln in tcp.splitlines() if ":3A98 " in ln and ln.split()[3] == "0A"], when
    info = vm.exec(["vmagent", "envoy-admin", "/server_info"], check=False)
    assert info.returncode == 0 and '"LIVE"' in info.stdout, info.stdout + info.stderr
    pid = main_pid(vm)
    tasks = vm.exec(["sh", "-c", f"grep -h '^CapEff\\|^CapBnd' /proc/{pid}/task/*/status"]).stdout
    masks = {int(line.split()[1], 16) for line in tasks.splitlines()}
    names = {0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID",
             8: "CAP_SETPCAP", 10: "CAP_NET_BIND_SERVICE", 12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW"}  # fmt: skip
    held = {names.get(n, str(n)) for mask in masks for n in range(64) if mask >> n & 1}
    print(f"{when}: agent capabilities (effective and bounding, every thread): {sorted(held)}")
    assert held == PROXY_CAPS, when
    # A local user cannot make the agent leave: the control socket refuses it.
    left = vm.exec(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "vmagent", "leave"],
                   check=False)  # fmt: skip
    assert left.returncode != 0 and "run this as root" in left.stderr, left.stdout + left.stderr
    assert main_pid(vm) == pid
    print(f"{when}: `vmagent leave` as nobody: {(left.stdout + left.stderr).strip()}")
    # The score of the running unit, as systemd sees it inside the machine.
    sec = vm.exec(["systemd-analyze", "security", "--no-pager", "vmagent.service"], check=False).stdout
    score = float(sec.rsplit("Overall exposure level for vmagent.service:", 1)[1].split()[0])
    print(f"{when}: systemd-analyze security vmagent.service (running): {score}")
    assert score <= 2.5, sec


def test_join_upgrade_remove(
    lab: tuple[Machine, ControlPlane], packages: Packages, previous_packages: Packages
) -> None:
    vm, cp = lab
    install(vm, previous_packages.deb)
    tok = cp.token()

    # The operator's join command; it enables and starts vmagent.service (Type=notify: returns once ready).
    joined = vm.exec(
        [
            "vmagent",
            "join",
            f"{CP_ADDR}:15012",
            "--token",
            tok["token"],
            "--ca-hash",
            tok["ca_hash"],
            "--address",
            VM_ADDR,
        ],
        check=False,
        timeout=180,
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr + journal(vm)
    wait_ready(vm)
    assert vm.exec(["systemctl", "is-active", "vmagent"]).stdout.strip() == "active"
    status = vm.exec(["vmagent", "status"], check=False)
    assert status.returncode == 0 and "ready:          yes" in status.stdout, status.stdout + status.stderr
    watchdog = vm.exec(["systemctl", "show", "-p", "WatchdogUSec", "vmagent"]).stdout.strip()
    assert watchdog == "WatchdogUSec=30s"
    before = identity(vm)
    assert before[1].endswith("/ns/pkg/sa/pkgvm")
    check_surface(vm, "after join")
    pid_before = main_pid(vm)

    # Upgrade to the current build: the running agent is restarted on the new code with the same identity.
    install(vm, packages.deb)
    version = vm.exec(["dpkg-query", "-W", "-f=${Version}", "vmagent"]).stdout
    assert version.startswith(packages.version)
    wait_for(lambda: main_pid(vm) not in (0, pid_before), timeout=60, what="the agent to be restarted")
    wait_ready(vm)
    assert identity(vm) == before, "the upgrade changed the VM's identity"
    check_surface(vm, "after upgrade")

    # The agent SIGKILLed (a crash): its Envoy keeps serving and capture stays (ExecStopPost sees
    # SERVICE_RESULT=signal); systemd restarts the agent after RestartSec and it adopts that Envoy.
    envoy_pid = json.loads(vm.exec(["vmagent", "status", "-o", "json"]).stdout)["envoy"]["pid"]
    agent_pid = main_pid(vm)
    vm.exec(["kill", "-KILL", str(agent_pid)])
    wait_for(
        lambda: main_pid(vm) not in (0, agent_pid), timeout=60, what="systemd to restart the killed agent"
    )
    wait_ready(vm)
    envoy = json.loads(vm.exec(["vmagent", "status", "-o", "json"]).stdout)["envoy"]
    assert envoy["pid"] == envoy_pid and envoy["adopted_pid"] == envoy_pid, (envoy, journal(vm))
    assert "keeps serving and capture stays" in journal(vm), journal(vm)
    assert "VMAGENT" in vm.exec(["iptables-save"]).stdout
    print(f"agent SIGKILLed: systemd restarted it and it adopted Envoy pid {envoy_pid}")
    check_surface(vm, "after an agent kill", adopted=True)

    # Killed again, and removed right away (maybe before systemd restarted it): nothing survives either.
    vm.exec(["kill", "-KILL", str(main_pid(vm))])

    # Removal: stopped, capture gone, no agent or Envoy process left (`vmagent cleanup` in prerm stops an
    # Envoy a killed agent left); identity kept for a reinstall.
    vm.exec(["dpkg", "-r", "vmagent"], timeout=300)
    rules = vm.exec(["sh", "-c", "iptables-save; ip6tables-save"]).stdout
    assert "VMAGENT" not in rules, rules
    procs = vm.exec(["ps", "-eo", "user=,comm=,args="]).stdout.splitlines()
    leftovers = [p for p in procs if ("vmagent" in p or "envoy" in p) and "ps -eo" not in p]
    assert leftovers == []
    assert (vm.root / "var/lib/vmagent/key.pem").is_file()
