"""The VMs of the tier: ``vagrant/Vagrantfile`` driven by ``vagrant`` with the libvirt provider, and reached
over SSH on the private network (the host has the network's ``.1``).

* ``build_box`` runs ``vagrant/build-box.sh`` (cached by its inputs under ``$VMAGENT_CACHE``) and adds the
  box to a Vagrant home of the cache (``$VMAGENT_CACHE/vagrant-home``), so the tier never touches
  ``~/.vagrant.d`` and reuses the added box across runs.
* ``Cluster`` keeps Vagrant's machine state (``VAGRANT_DOTFILE_PATH``) in the run's temporary directory,
  names the domains with a prefix of its own, and ``destroy()`` never raises.
* ``Cluster.ssh`` is plain ``ssh`` with the box's key (``vagrant ssh`` costs seconds per call under
  emulation); ``Cluster.vagrant`` is for ``up``, ``reload`` and ``destroy``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.package.machine import apt_mirror
from vmagent.common.proc import run
from vmagent.lab.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
BOX_TIMEOUT = 1800.0
# The console logs are written by qemu (user libvirt-qemu), which cannot reach pytest's 0700 temporary
# directories: they go to libvirt's log directory and are moved into the run's directory at the end.
SERIAL_DIR = Path("/var/log/libvirt/qemu")
PROGRESS = re.compile(r"Progress: \d+%")


@dataclass(frozen=True)
class Box:
    directory: Path
    name: str
    key: Path


def build_box(cache: Path) -> Box:
    """The box for this checkout's build-box.sh: built when missing, added to the tier's Vagrant home."""
    env = {**os.environ, "VMAGENT_CACHE": str(cache), "MIRROR": apt_mirror()}
    result = run([str(VAGRANT_DIR / "build-box.sh")], env=env, timeout=BOX_TIMEOUT, check=False)
    if result.returncode != 0:
        raise AssertionError(f"vagrant/build-box.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    directory = Path(result.stdout.strip().splitlines()[-1])
    name = (directory / "box-name").read_text().strip()
    home = cache / "vagrant-home"
    venv = {**os.environ, "VAGRANT_HOME": str(home)}
    boxes = run(["vagrant", "box", "list", "--machine-readable"], env=venv, timeout=300).stdout
    if f",box-name,{name}" not in boxes:
        run(
            ["vagrant", "box", "add", "--force", "--name", name, str(directory / f"{name}.box")],
            env=venv,
            timeout=600,
        )
    return Box(directory, name, directory / "vagrant_ed25519")


class Cluster:
    """The control-plane VM ``cp`` and workload VMs ``vm1``..``vmN`` of one run."""

    def __init__(self, box: Box, cache: Path, workdir: Path, vms: int, subnet: str, prefix: str) -> None:
        self.box = box
        self.workdir = workdir
        self.prefix = prefix
        self.subnet = subnet
        self.names = ["cp", *(f"vm{i}" for i in range(1, vms + 1))]
        self.addresses = {name: f"{subnet}.{10 + i}" for i, name in enumerate(self.names)}
        self.log = workdir / "vagrant.log"
        self.up_seconds = 0.0
        self.env = {
            **os.environ,
            "VAGRANT_HOME": str(cache / "vagrant-home"),
            "VAGRANT_CWD": str(VAGRANT_DIR),
            "VAGRANT_DOTFILE_PATH": str(workdir / "dot-vagrant"),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "VMAGENT_CACHE": str(cache),
            "MESH_BOX_DIR": str(box.directory),
            "MESH_VMS": str(vms),
            "MESH_SUBNET": subnet,
            "MESH_NETWORK": f"{prefix}mesh",
            "MESH_PREFIX": prefix,
            "MESH_SERIAL_DIR": str(SERIAL_DIR),
        }

    def vagrant(self, *args: str, timeout: float = 1800.0) -> float:
        """Run ``vagrant ARGS``; its output goes to vagrant.log (without the upload's progress lines).
        Returns the seconds it took; raises with the log's tail when it fails."""
        start = time.monotonic()
        proc = subprocess.run(
            ["vagrant", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        output = "\n".join(
            line
            for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
            if not PROGRESS.search(line)
        )
        with self.log.open("a") as log:
            log.write(f"$ vagrant {' '.join(args)}  (exit {proc.returncode})\n{output}\n")
        if proc.returncode != 0:
            raise AssertionError(f"vagrant {' '.join(args)} failed ({proc.returncode}):\n{output[-4000:]}")
        return time.monotonic() - start

    def ssh_args(self, name: str) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.box.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "BatchMode=yes",
            f"vagrant@{self.addresses[name]}",
        ]

    def ssh(
        self, name: str, script: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` as root on VM ``name`` (through sudo); raise with its output when it fails."""
        cmd = [*self.ssh_args(name), "sudo sh -c " + shlex.quote(script)]
        result = run(cmd, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{name}: {script!r} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def wait_ssh(self, name: str, timeout: float = 900.0) -> None:
        wait_for(
            lambda: self.ssh(name, "true", check=False, timeout=30).returncode == 0,
            timeout=timeout,
            interval=2.0,
            what=f"SSH on {name} ({self.addresses[name]})",
        )

    def qemu_processes(self) -> list[str]:
        """QEMU processes of this run's domains (there must be none after destroy)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "qemu-system" in cmdline and f"guest={self.prefix}" in cmdline:
                found.append(f"qemu pid {proc.info['pid']}")
        return found

    def destroy(self) -> None:
        """``vagrant destroy -f``; never raises (the libvirt teardown removes what it leaves)."""
        try:
            self.vagrant("destroy", "-f", timeout=600)
        except Exception as exc:  # reported by the teardown's leftovers check
            print(f"vagrant destroy failed: {exc}", file=sys.stderr)
        for log in SERIAL_DIR.glob(f"{self.prefix}*"):
            with contextlib.suppress(OSError):
                shutil.move(str(log), self.workdir / log.name)
