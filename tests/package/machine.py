"""Debian 12 root file systems for the package tier: built once with debootstrap, copied per test, booted
under systemd-nspawn in a network namespace of their own.

* ``RootfsCache`` builds ``/var/cache/vmagent-dev/rootfs-<hash of suite, mirror, packages>`` once
  (debootstrap --variant=minbase, about a minute) and hands out copies (``cp --reflink=auto -a``).
* ``Link`` is a pair of network namespaces (``vmpkg…c`` for the control plane, ``vmpkg…v`` for the VM)
  joined by a veth pair, 10.234.0.1/24 and 10.234.0.2/24.
* ``Machine`` boots a copy with ``systemd-nspawn -b --register=no --keep-unit`` in the VM namespace,
  waits for ``systemctl is-system-running --wait`` with a deadline, runs commands in it with
  ``nsenter -t PID1 -a``, and always shuts it down (then SIGKILL after a deadline) and removes the copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.harness import wait_for
from vmagent.common.proc import run

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the booted VM needs: systemd as PID 1, iptables for capture, ip for the tests, python3.11 for
# the package's dependency (a minbase system has no Python), procps for ps/pgrep.
PACKAGES = (
    "systemd",
    "dbus",
    "systemd-sysv",
    "iptables",
    "iproute2",
    "ca-certificates",
    "python3.11",
    "procps",
)
# Bump when the steps after debootstrap change, so that cached trees are rebuilt.
RECIPE = "2"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CP_ADDR = "10.234.0.1"
VM_ADDR = "10.234.0.2"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    files = [*sorted(sources.glob("sources.list.d/*.sources")), sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith((" ", "#")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                suites = fields.get("suites", "").split()
                for uri in fields.get("uris", "").split():
                    if SUITE in suites and uri.rstrip("/").endswith("/debian"):
                        return uri.rstrip("/")
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb":
                    uri_index = 2 if parts[1].startswith("[") else 1
                    uri, suite = parts[uri_index], parts[uri_index + 1]
                    if suite == SUITE and uri.rstrip("/").endswith("/debian"):
                        return uri.rstrip("/")
    return DEFAULT_MIRROR


class RootfsCache:
    """A debootstrapped Debian 12 tree cached under ``cache_dir``, keyed by what went into it."""

    def __init__(self, cache_dir: Path, mirror: str, packages: tuple[str, ...] = PACKAGES) -> None:
        self._cache_dir = cache_dir
        self._mirror = mirror
        self._packages = packages
        key = hashlib.sha256(
            f"{RECIPE}\0{SUITE}\0{mirror}\0{','.join(sorted(packages))}".encode()
        ).hexdigest()[:16]
        self.path = cache_dir / f"rootfs-{key}"

    def ensure(self) -> Path:
        """Build the tree when missing (serialised by a lock file); ``.ready`` marks a complete one."""
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self._cache_dir / "rootfs.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.path / ".ready").exists():
                self._build()
        return self.path

    def _build(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=self._cache_dir))
        try:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(self._packages),
                    SUITE,
                    str(tmp),
                    self._mirror,
                ],
                timeout=900,
            )
            tmp.chmod(0o755)  # mkdtemp made it 0700: it becomes the machine's "/"
            (tmp / "etc" / "hostname").write_text("vmpkg\n")
            # D-Bus never finishes starting in a container on this kind of host (cgroup v1: dbus-daemon
            # waits for org.freedesktop.systemd1 until its timeout), which holds the boot in "starting".
            # Nothing here needs it: systemctl talks to PID 1 over its private socket.
            units = tmp / "etc" / "systemd" / "system"
            for unit in ("dbus.service", "dbus.socket", "systemd-logind.service", "console-getty.service"):
                (units / unit).unlink(missing_ok=True)
                (units / unit).symlink_to("/dev/null")
            (tmp / ".ready").touch()
            tmp.rename(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def copy(self, dest: Path) -> Path:
        """A private copy at ``dest``. The cached tree may be a symlink to a shared cache (as helpers share
        one build): ``cp -a`` would copy the link itself and every test would then change the shared
        tree, so the link is resolved first."""
        run(["cp", "-a", "--reflink=auto", str(self.path.resolve()), str(dest)], timeout=300)
        if dest.is_symlink() or not dest.is_dir():
            raise AssertionError(f"copying {self.path} to {dest} did not make a directory")
        return dest


class Link:
    """Two network namespaces joined by a veth pair: ``cp_ns`` (10.234.0.1) and ``vm_ns`` (10.234.0.2)."""

    def __init__(self, tag: str) -> None:
        self.cp_ns = f"vmpkg{tag}c"
        self.vm_ns = f"vmpkg{tag}v"
        self._veth_cp = f"vmpkg{tag}a"
        self._veth_vm = f"vmpkg{tag}b"

    def create(self) -> None:
        for ns in (self.cp_ns, self.vm_ns):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(
            [
                "ip",
                "link",
                "add",
                self._veth_cp,
                "netns",
                self.cp_ns,
                "type",
                "veth",
                "peer",
                "name",
                self._veth_vm,
                "netns",
                self.vm_ns,
            ]
        )
        run(["ip", "-n", self.cp_ns, "addr", "add", f"{CP_ADDR}/24", "dev", self._veth_cp])
        run(["ip", "-n", self.vm_ns, "addr", "add", f"{VM_ADDR}/24", "dev", self._veth_vm])
        run(["ip", "-n", self.cp_ns, "link", "set", self._veth_cp, "up"])
        run(["ip", "-n", self.vm_ns, "link", "set", self._veth_vm, "up"])

    def delete(self) -> None:
        for ns in (self.cp_ns, self.vm_ns):
            run(["ip", "netns", "delete", ns], check=False)

    @property
    def vm_ns_path(self) -> Path:
        return Path("/run/netns") / self.vm_ns


class Machine:
    """A booted copy of the cached rootfs. Use as a context manager; teardown never raises."""

    def __init__(self, root: Path, netns: Path | None, log: Path, name: str) -> None:
        self.root = root
        self._netns = netns
        self._log = log
        self._name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 120.0) -> None:
        cmd = [
            "systemd-nspawn",
            "-D",
            str(self.root),
            "-b",
            "--register=no",
            "--keep-unit",
            "-q",
            f"--machine={self._name}",
            "--console=passive",
        ]
        if self._netns is not None:
            # nspawn keeps CAP_NET_ADMIN only for --private-network; a namespace of our own is as private,
            # and the agent needs the capability for its iptables capture.
            cmd += [f"--network-namespace-path={self._netns}", "--capability=CAP_NET_ADMIN"]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid1 = wait_for(self._find_init, timeout=30, what=f"PID 1 of {self._name} (log: {self._log})")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            remaining = max(1.0, deadline - time.monotonic())
            result = self.sh("systemctl is-system-running --wait", check=False, timeout=remaining)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)  # "starting"/"initializing" right after PID 1 came up: ask again
        raise AssertionError(f"{self._name} did not boot (state {state!r}); nspawn log: {self._log}")

    def _find_init(self) -> int | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn exited with {self._proc.returncode}: {self._log.read_text()}"
            )
        try:
            for child in psutil.Process(self._proc.pid).children(recursive=True):
                if child.name() == "systemd":
                    return child.pid
        except psutil.NoSuchProcess:
            return None
        return None

    def exec(
        self, argv: list[str], *, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the machine (all its namespaces) with a clean environment."""
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        return run(
            [
                "nsenter",
                "-t",
                str(self.pid1),
                "-a",
                "--",
                "env",
                "-i",
                *[f"{k}={v}" for k, v in env.items()],
                *argv,
            ],
            check=check,
            timeout=timeout,
            input=input,
            env={"PATH": CLEAN_PATH},
        )

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.exec(["sh", "-c", script], check=check, timeout=timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM makes systemd-nspawn ask the container's systemd for a clean shutdown.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for child in _descendants(self.pid1):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.wait(timeout=10)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def booted(
    cache: RootfsCache, workdir: Path, tag: str, with_link: bool = True
) -> Iterator[tuple[Machine, Link | None]]:
    """A booted copy of the cached rootfs (in its own network namespace), torn down on exit."""
    link = Link(tag) if with_link else None
    root = workdir / f"root-{tag}"
    machine = Machine(root, link.vm_ns_path if link else None, workdir / f"nspawn-{tag}.log", f"vmpkg{tag}")
    try:
        if link is not None:
            link.create()
        cache.copy(root)
        machine.boot()
        yield machine, link
    finally:
        machine.shutdown()
        if link is not None:
            link.delete()
        shutil.rmtree(root, ignore_errors=True)
