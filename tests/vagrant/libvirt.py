"""The libvirt daemons of the VM tier, started by the tier and left as they were found.

``Libvirt.start()`` starts ``libvirtd`` (with ``virtlogd``, through which the QEMU driver logs) when it is
not running: with ``systemctl`` where systemd is PID 1, by hand (``virtlogd -d``, ``libvirtd -d``)
elsewhere, e.g. in a container. It records the domains, networks, pools and volumes that exist before the
run. ``Libvirt.stop()`` removes whatever the run added (domains, networks, volumes; the ``default`` pool
when vagrant-libvirt created it), stops the daemons it started, and returns what it could not remove,
so that the teardown can fail naming it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmagent.common.proc import run
from vmagent.lab.wait import wait_for

URI = "qemu:///system"
POOL = "default"
PIDFILES = {"libvirtd": Path("/run/libvirtd.pid"), "virtlogd": Path("/run/virtlogd.pid")}


def virsh(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return run(["virsh", "-c", URI, *args], check=check, timeout=timeout)


def _names(*args: str) -> set[str]:
    result = virsh(*args, "--name", check=False)
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def _volumes() -> set[str]:
    result = virsh("vol-list", POOL, check=False)
    if result.returncode != 0:
        return set()
    lines = result.stdout.splitlines()[2:]  # a header and a rule
    return {line.split()[0] for line in lines if line.strip()}


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def kvm_usable() -> bool:
    """/dev/kvm is there and the CPU has VT-x/AMD-V (a /dev/kvm without them hangs whoever opens it)."""
    flags = Path("/proc/cpuinfo").read_text()
    return Path("/dev/kvm").exists() and (" vmx" in flags or " svm" in flags)


def _daemon_command(daemon: str) -> list[str]:
    """How to start ``daemon``. Where /dev/kvm exists but cannot work, libvirtd runs in a mount namespace
    of its own with /dev/null over /dev/kvm: otherwise its capability probe of QEMU tries KVM, hangs and
    fails, the result is never cached, and every define or start of a domain probes again (``vagrant up``
    then waits without end at "Updating domain definition"). The host's /dev/kvm is untouched."""
    binary = f"/usr/sbin/{daemon}"
    if daemon != "libvirtd" or not Path("/dev/kvm").exists() or kvm_usable():
        return [binary, "-d"]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount --bind /dev/null /dev/kvm && exec {binary} -d",
    ]


def _systemd_is_pid1() -> bool:
    return Path("/proc/1/comm").read_text().strip() == "systemd"


@dataclass
class Snapshot:
    domains: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    pools: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            domains=_names("list", "--all"),
            networks=_names("net-list", "--all"),
            pools=_names("pool-list", "--all"),
            volumes=_volumes(),
        )


class Libvirt:
    def __init__(self) -> None:
        self.started: list[str] = []  # daemons (or systemd units) this run started, in start order
        self.before = Snapshot()

    def start(self) -> None:
        if virsh("version", check=False, timeout=20).returncode != 0:
            if _systemd_is_pid1():
                run(["systemctl", "start", "libvirtd.service"], timeout=120)
                self.started.append("systemd:libvirtd.service")
            else:
                for daemon in ("virtlogd", "libvirtd"):
                    if _pid_alive(PIDFILES[daemon]) is None:
                        run(_daemon_command(daemon), timeout=60)
                        self.started.append(daemon)
            wait_for(
                lambda: virsh("list", "--all", check=False, timeout=20).returncode == 0,
                timeout=120,
                interval=0.5,
                what="libvirtd to answer virsh",
            )
        self.before = Snapshot.take()

    def leftovers(self) -> list[str]:
        """What this run added and is still there (domains, networks, volumes, pool)."""
        now = Snapshot.take()
        found = [f"domain {d}" for d in sorted(now.domains - self.before.domains)]
        found += [f"network {n}" for n in sorted(now.networks - self.before.networks)]
        found += [f"volume {POOL}/{v}" for v in sorted(now.volumes - self.before.volumes)]
        found += [f"pool {p}" for p in sorted(now.pools - self.before.pools)]
        return found

    def remove_added(self) -> None:
        """Destroy and undefine every domain, network, volume and pool the run added (after Vagrant's own
        destroy, this is what an interrupted ``vagrant up`` or the box upload leaves)."""
        now = Snapshot.take()
        for domain in sorted(now.domains - self.before.domains):
            virsh("destroy", domain, check=False)
            virsh("undefine", domain, "--remove-all-storage", "--nvram", check=False)
            virsh("undefine", domain, "--remove-all-storage", check=False)
        for network in sorted(now.networks - self.before.networks):
            virsh("net-destroy", network, check=False)
            virsh("net-undefine", network, check=False)
        for volume in sorted(_volumes() - self.before.volumes):
            virsh("vol-delete", "--pool", POOL, volume, check=False)
        for pool in sorted(now.pools - self.before.pools):
            virsh("pool-destroy", pool, check=False)
            virsh("pool-undefine", pool, check=False)

    def stop(self) -> list[str]:
        """Remove what the run added, stop the daemons it started; return what is left (empty: clean)."""
        left: list[str] = []
        with contextlib.suppress(Exception):
            self.remove_added()
        try:
            left += self.leftovers()
        except Exception as exc:  # libvirtd gone: nothing to list, but say so
            left.append(f"libvirt could not be asked what is left: {exc}")
        for daemon in reversed(self.started):
            if daemon.startswith("systemd:"):
                run(["systemctl", "stop", daemon.split(":", 1)[1]], check=False, timeout=120)
                continue
            pid = _pid_alive(PIDFILES[daemon])
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _pid_alive(PIDFILES[daemon]) == pid and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(PIDFILES[daemon]) == pid:
                left.append(f"daemon {daemon} (pid {pid}) did not stop")
        self.started.clear()
        return left
