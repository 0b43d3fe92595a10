"""A fleet for the Ansible tier and bench/fleet.py: Debian 12 machines booted with systemd-nspawn, each
in its own network namespace on one bridged LAN, reached over SSH by ansible-playbook running in another
namespace of that LAN (the controller).

* The rootfs is the package tier's debootstrap tree plus ``openssh-server`` and ``python3-apt`` (what
  Ansible's apt module needs on a Debian target), cached by its inputs like the package tier's.
* Every machine gets this run's SSH public key in ``/root/.ssh/authorized_keys`` before it boots.
* ``Fleet.playbook`` runs ``ansible-playbook`` from the dev venv on the collection in ``ansible/``
  (found through a collections path that links ``ansible_collections/vmagent/mesh`` to it) and returns
  its output and the PLAY RECAP per host.
* ``Fleet.serve`` runs an HTTP server (Python's ``http.server``) in the controller namespace on its LAN
  address, for the role's URL and repository package sources; ``apt_repository`` writes a flat apt
  repository (``Packages`` and an unsigned ``Release``, used with ``[trusted=yes]``) from .deb files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import wait_for
from tests.package.machine import PACKAGES, Machine, RootfsCache, apt_mirror
from vmagent.common.proc import run
from vmagent.lab.netns import Lan, Netns

REPO = Path(__file__).resolve().parents[2]
FLEET_PACKAGES = (*PACKAGES, "openssh-server", "python3-apt")
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)"
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apt_repository(directory: Path, debs: list[Path]) -> Path:
    """A flat apt repository in ``directory`` (``deb [trusted=yes] URL ./``): the .debs, ``Packages``
    (each package's control fields plus Filename, Size and SHA256) and an unsigned ``Release``."""
    directory.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        shutil.copy(deb, directory / deb.name)
        control = run(["dpkg-deb", "-f", str(deb)]).stdout.rstrip("\n")
        size = deb.stat().st_size
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {size}\nSHA256: {sha256(deb)}\n")
    packages = directory / "Packages"
    packages.write_text("\n".join(stanzas))
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    (directory / "Release").write_text(
        f"Origin: vmagent-tests\nLabel: vmagent-tests\nDate: {date}\n"
        f"SHA256:\n {sha256(packages)} {packages.stat().st_size} Packages\n"
    )
    return directory


def fleet_rootfs(cache_dir: Path) -> RootfsCache:
    cache = RootfsCache(cache_dir, apt_mirror(), FLEET_PACKAGES)
    cache.ensure()
    return cache


def collections_path(workdir: Path) -> Path:
    """A collections path holding ``ansible_collections/vmagent/mesh`` -> the checkout's ``ansible/``."""
    base = workdir / "collections"
    link = base / "ansible_collections" / "vmagent" / "mesh"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO / "ansible")
    return base


@dataclass
class PlaybookRun:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]


class Node:
    """One booted machine: its namespace on the LAN, address and nspawn ``Machine``."""

    def __init__(self, name: str, ns: Netns, machine: Machine) -> None:
        self.name = name
        self.ns = ns
        self.machine = machine
        self.address = ns.addresses[0]

    def sh(self, script: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.machine.sh(script, check=check, timeout=timeout)

    def package_version(self, name: str) -> str | None:
        r = self.sh(f"dpkg-query -W -f '${{Status}} ${{Version}}' {name}", check=False)
        if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
            return None
        return r.stdout.split()[-1]


class Fleet:
    """Machines on a LAN plus a controller namespace. Use as a context manager; teardown never raises."""

    def __init__(self, rootfs: RootfsCache, workdir: Path, prefix: str, subnet: str) -> None:
        self._rootfs = rootfs
        self.workdir = workdir
        self._prefix = prefix
        self.lan = Lan(prefix, subnet)
        self.controller = self.lan.add_host()
        self.nodes: dict[str, Node] = {}
        self.key = workdir / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmagent-fleet", "-f", str(self.key)])
        self.collections = collections_path(workdir)

    def boot(self, names: list[str]) -> None:
        """Copy the rootfs for each name, then boot them one after the other."""
        pubkey = self.key.with_suffix(".pub").read_text()
        for name in names:
            ns = self.lan.add_host()
            root = self.workdir / f"root-{name}"
            self._rootfs.copy(root)
            ssh_dir = root / "root" / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            (ssh_dir / "authorized_keys").write_text(pubkey)
            (ssh_dir / "authorized_keys").chmod(0o600)
            (root / "etc" / "hostname").write_text(f"{name}\n")
            machine = Machine(
                root,
                Path("/run/netns") / ns.name,
                self.workdir / f"nspawn-{name}.log",
                f"{self._prefix}{name}",
            )
            node = Node(name, ns, machine)
            self.nodes[name] = node
            machine.boot()
            # A resolver on the LAN that does not exist: mesh names are answered by the agent's DNS proxy
            # (capture.dns), anything else fails fast instead of leaving the namespace.
            node.sh(f"rm -f /etc/resolv.conf; echo 'nameserver {self.lan_gateway}' > /etc/resolv.conf")
            wait_for(
                lambda n=node: (
                    self.controller.run(
                        ["python3", "-c", f"import socket; socket.create_connection(('{n.address}', 22), 2)"],
                        check=False,
                    ).returncode
                    == 0
                ),
                timeout=60,
                what=f"sshd on {name}",
            )

    @property
    def lan_gateway(self) -> str:
        return str(self.lan.network.broadcast_address - 1)

    def write_inventory(
        self,
        path: Path,
        groups: dict[str, list[str]],
        host_vars: dict[str, dict[str, Any]],
        all_vars: dict[str, Any],
    ) -> Path:
        """An inventory in YAML (written as JSON, which YAML reads): groups of node names, per-host vars."""
        ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10"
        common = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": ssh_args,
            "ansible_python_interpreter": "/usr/bin/python3",
            **all_vars,
        }
        children = {
            group: {
                "hosts": {
                    name: {"ansible_host": self.nodes[name].address, **host_vars.get(name, {})}
                    for name in names
                }
            }
            for group, names in groups.items()
        }
        path.write_text(json.dumps({"all": {"vars": common, "children": children}}, indent=1))
        return path

    def playbook(
        self,
        inventory: Path,
        playbook: str,
        *args: str,
        timeout: float = 900.0,
        extra_env: dict[str, str] | None = None,
    ) -> PlaybookRun:
        """``ansible-playbook -i INVENTORY vmagent.mesh.PLAYBOOK ARGS`` from the controller namespace
        (``extra_env`` adds to or overrides its environment)."""
        venv_bin = Path(sys.executable).parent
        env = {
            "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_PIPELINING": "True",
            # One SSH connection per host for the whole run, and no -C (Ansible's default ssh_args
            # compress, which only costs CPU for an already compressed package on a LAN).
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=300s",
            "ANSIBLE_FORKS": "10",
            **(extra_env or {}),
        }
        cmd = [str(venv_bin / "ansible-playbook"), "-i", str(inventory), f"vmagent.mesh.{playbook}", *args]
        result = self.controller.run(cmd, check=False, timeout=timeout, env=env)
        output = result.stdout + result.stderr
        recap: dict[str, dict[str, int]] = {}
        in_recap = False
        for line in output.splitlines():
            if line.startswith("PLAY RECAP"):
                in_recap = True
                continue
            m = RECAP.match(line) if in_recap else None
            if m:
                recap[m["host"]] = {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        return PlaybookRun(result.returncode, output, recap)

    def serve(self, directory: Path, port: int = 8000) -> str:
        """Serve ``directory`` over HTTP from the controller's LAN address (stopped with the LAN);
        returns the base URL."""
        address = self.controller.addresses[0]
        self.controller.popen(
            ["python3", "-m", "http.server", str(port), "--bind", address, "--directory", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = f"import socket; socket.create_connection(('{address}', {port}), 2)"
        wait_for(
            lambda: self.controller.run(["python3", "-c", probe], check=False).returncode == 0,
            timeout=30,
            what=f"the HTTP server on {address}:{port}",
        )
        return f"http://{address}:{port}"

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.machine.shutdown()
        with contextlib.suppress(Exception):
            self.lan.close()
        for node in self.nodes.values():
            shutil.rmtree(node.machine.root, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
