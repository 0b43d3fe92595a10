"""Network namespaces for the lab (the demo and the system tests): namespaces, veth pairs, bridged LANs, processes inside them.

Everything created here is torn down by ``close()`` (or the context manager / pytest fixture), even when the
test fails: background processes are killed first (and any other process still inside the namespace),
then the namespaces are deleted. Veth interfaces are created directly inside their namespaces, so the host's
root namespace is never touched and names cannot collide with other tests running at the same time.

Typical use::

    from tests.netns import netns_pool  # noqa: F401 - pytest fixture (wraps NetnsPool)

    def test_x(netns_pool: NetnsPool) -> None:
        vm = netns_pool.netns("vmcap")
        srv = netns_pool.netns("vmcap")
        veth(vm, srv, "10.231.1.1/24", "10.231.1.2/24")
        proc = srv.popen(["python3", "-m", "http.server", "80"])
        srv.wait_listening(80)
        vm.run(["curl", "http://10.231.1.2/"])

Pick a namespace-name prefix and a subnet of your own (for example ``vmcap`` and 10.231.0.0/16) so that
tests of different engineers running at the same time do not collide.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from vmagent.common.errors import CommandError
from vmagent.common.proc import run
from vmagent.lab.wait import wait_for

_COUNTER = itertools.count()


def unique_name(prefix: str) -> str:
    """A namespace name ``PREFIX-PID-N`` unique on this machine for the life of this process."""
    return f"{prefix}-{os.getpid()}-{next(_COUNTER)}"


def cleanup_stale(prefix: str) -> list[str]:
    """Delete namespaces named ``PREFIX-PID-N`` whose creating process is gone (left by a killed run).

    Only names of this harness's shape with a dead PID are touched, so concurrent runs are safe. Returns
    the names deleted.
    """
    out = run(["ip", "netns", "list"], check=False).stdout
    removed: list[str] = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name[len(prefix) + 1 :].split("-") if name.startswith(prefix + "-") else []
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        if _pid_alive(int(parts[0])):
            continue
        _kill_netns_pids(name)
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(name: str) -> None:
    """SIGKILL every process whose network namespace is ``name`` and wait (bounded) until they are gone."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        out = run(["ip", "netns", "pids", name], check=False).stdout.split()
        pids = [int(p) for p in out if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


class Netns:
    """One network namespace with a unique name built from ``prefix``; loopback is up once created.

    Use as a context manager (``with Netns("vmcap") as ns:``) or call ``create()``/``close()``; a
    ``NetnsPool`` does that for you. ``addresses`` lists the IP addresses (without prefix length) given to
    this namespace through ``add_address``/``veth``/``Lan.add_host``, in order.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.name = unique_name(prefix)
        self.addresses: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._if_counter = itertools.count()
        self._created = False

    # -- life cycle ----------------------------------------------------------------------------------
    def create(self) -> Netns:
        """Create the namespace (``ip netns add``) and bring loopback up. Returns self."""
        # Marked before `ip netns add` runs: a signal (Ctrl-C) arriving while it runs must not leave a
        # namespace that close() would think was never made (deleting a missing one is harmless).
        self._created = True
        run(["ip", "netns", "add", self.name])
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def close(self) -> None:
        """Kill the processes started here (and any other process left inside), then delete the namespace.

        Safe to call twice and after a failed ``create``.
        """
        for proc in reversed(self._procs):
            _terminate(proc)
        self._procs.clear()
        if self._created:
            _kill_netns_pids(self.name)
            run(["ip", "netns", "del", self.name], check=False)
            self._created = False

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netns({self.name!r}, addresses={self.addresses!r})"

    # -- commands ------------------------------------------------------------------------------------
    @property
    def exec_prefix(self) -> list[str]:
        """``["ip", "netns", "exec", NAME]``: prepend to a command to run it inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self,
        cmd: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace through vmagent.common.proc.run (CommandError on failure).

        ``user`` runs it as that user (uid, primary gid and supplementary groups of the account);
        ``env`` replaces the environment (PATH is kept when not given).
        """
        return run(self._wrap(cmd, user), input=input, check=check, timeout=timeout, env=_full_env(env))

    def popen(
        self,
        cmd: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.STDOUT,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:
        """Start ``cmd`` in the background inside the namespace; it is killed (with its process group)
        on ``close()``.

        ``user`` and ``env`` as for ``run``. By default stdout and stderr go to ``proc.stdout`` (text).
        The returned process is the command itself (``ip netns exec`` and ``setpriv`` exec into it), so
        ``proc.pid`` is the command's pid.
        """
        proc = subprocess.Popen(
            self._wrap(cmd, user),
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            text=True,
            env=_full_env(env),
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def _wrap(self, cmd: Sequence[str], user: str | None) -> list[str]:
        return [*self.exec_prefix, *as_user(user), *cmd]

    # -- configuration -------------------------------------------------------------------------------
    def next_ifname(self, stem: str = "veth") -> str:
        """A fresh interface name for this namespace (``veth0``, ``veth1``, ...)."""
        return f"{stem}{next(self._if_counter)}"

    def add_address(self, dev: str, cidr: str) -> str:
        """Add ``cidr`` (``IP/PREFIX``) to ``dev`` (``nodad`` for IPv6); records and returns the IP."""
        iface = ipaddress.ip_interface(cidr)
        cmd = ["ip", "addr", "add", str(iface), "dev", dev]
        if iface.version == 6:
            cmd.append("nodad")
        self.run(cmd)
        ip = str(iface.ip)
        self.addresses.append(ip)
        return ip

    def add_route(self, dest: str, via: str) -> None:
        """``ip route add DEST via VIA`` (``default`` is accepted as DEST)."""
        family = "-6" if ":" in via else "-4"
        self.run(["ip", family, "route", "add", dest, "via", via])

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl inside the namespace (``net.*`` keys are per namespace)."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    @property
    def address(self) -> str:
        """The first address given to this namespace (AssertionError when none)."""
        assert self.addresses, f"{self.name} has no address yet"
        return self.addresses[0]

    # -- waiting -------------------------------------------------------------------------------------
    def listening(self, port: int, proto: str = "tcp") -> bool:
        """True when a socket in the namespace listens on ``port`` (``tcp``) or is bound to it (``udp``)."""
        flag = "-ltnH" if proto == "tcp" else "-lunH"
        out = self.run(["ss", flag, f"sport = :{port}"], check=False).stdout
        return bool(out.strip())

    def wait_listening(self, port: int, proto: str = "tcp", timeout: float = 10.0) -> None:
        """Wait (bounded) until ``listening(port, proto)``; fails the test with a clear message otherwise."""
        wait_for(
            lambda: self.listening(port, proto),
            timeout=timeout,
            what=f"{proto} port {port} listening in {self.name}",
        )


def as_user(user: str | None) -> list[str]:
    """A ``setpriv`` prefix running a command as ``user`` (its uid, primary gid and groups); [] for None."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--reset-env",
        "--",
    ]


def _full_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    full = dict(env)
    full.setdefault("PATH", os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    return full


def _terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, then SIGKILL after a bounded wait; closes the pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class LineLog:
    """Collects a background process's output lines in a thread, so tests can wait on them with a deadline.

    ``LineLog(proc)`` for a process started with ``popen`` (stdout as a text pipe); ``lines`` is the list
    so far; ``wait_line(substring)`` returns the first line containing it or fails the test at the deadline.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._stream = proc.stdout
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self._stream:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def matching(self, substring: str) -> list[str]:
        """The lines so far that contain ``substring``."""
        with self._lock:
            return [line for line in self.lines if substring in line]

    def wait_line(self, substring: str, timeout: float = 10.0) -> str:
        """Wait (bounded) for a line containing ``substring`` and return it; fails the test with the
        output so far when the deadline passes or the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.matching(substring)
            if lines:
                return lines[0]
            exited = self._proc.poll() is not None
            if exited:
                self._thread.join(timeout=1)
                lines = self.matching(substring)
                if lines:
                    return lines[0]
            if exited or time.monotonic() >= deadline:
                why = (
                    f"exited with status {self._proc.returncode}"
                    if exited
                    else f"timed out after {timeout:g}s"
                )
                raise AssertionError(
                    f"{_short(self._proc.args)} {why} waiting for a line containing {substring!r}; output:\n"
                    + "\n".join(self.lines)
                )
            time.sleep(0.02)


def _short(args: object, limit: int = 160) -> str:
    text = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
    return text if len(text) <= limit else text[:limit] + "..."


def veth(a: Netns, b: Netns, cidr_a: str | None = None, cidr_b: str | None = None) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair created directly inside them, bring both ends up and give
    them the optional addresses (``IP/PREFIX``, IPv4 or IPv6). Returns the interface names (in a, in b).
    """
    if_a, if_b = a.next_ifname(), b.next_ifname()
    run(["ip", "link", "add", if_a, "netns", a.name, "type", "veth", "peer", "name", if_b, "netns", b.name])
    for ns, ifname, cidr in ((a, if_a, cidr_a), (b, if_b, cidr_b)):
        if cidr:
            ns.add_address(ifname, cidr)
        ns.run(["ip", "link", "set", ifname, "up"])
    return if_a, if_b


class Lan:
    """Several namespaces on one subnet, joined by a Linux bridge that lives in its own namespace.

    ``Lan(pool_or_none, prefix, "10.231.5.0/24")``; ``add_host()`` creates (or takes) a namespace, links it
    to the bridge and gives it the next free address of the subnet (``.1``, ``.2``, ...) or the one given.
    The bridge namespace has no firewall rules, so it forwards everything.
    """

    def __init__(self, prefix: str, subnet: str, pool: NetnsPool | None = None) -> None:
        self.prefix = prefix
        self.network = ipaddress.ip_network(subnet)
        self._pool = pool
        self._hosts_iter = self.network.hosts()
        self.hosts: list[Netns] = []
        self._owned: list[Netns] = []
        self.switch = self._new_ns()
        self.switch.run(["ip", "link", "add", "br0", "type", "bridge"])
        self.switch.run(["ip", "link", "set", "br0", "up"])

    def _new_ns(self) -> Netns:
        if self._pool is not None:
            return self._pool.netns(self.prefix)
        ns = Netns(self.prefix).create()
        self._owned.append(ns)
        return ns

    def add_host(self, ns: Netns | None = None, address: str | None = None) -> Netns:
        """Link ``ns`` (a new namespace when None) to the bridge with ``address`` (next free when None).

        Returns the namespace; its new IP is appended to ``ns.addresses``.
        """
        host = ns if ns is not None else self._new_ns()
        ip = address if address is not None else str(next(self._hosts_iter))
        cidr = f"{ip}/{self.network.prefixlen}"
        _if_host, if_sw = veth(host, self.switch, cidr, None)
        self.switch.run(["ip", "link", "set", if_sw, "master", "br0"])
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Delete the namespaces this LAN created itself (those from a pool are left to the pool)."""
        for ns in reversed(self._owned):
            ns.close()
        self._owned.clear()

    def __enter__(self) -> Lan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NetnsPool:
    """Creates namespaces and LANs and deletes all of them on ``close()`` (the fixture does that).

    Before the first namespace of a prefix is made, namespaces of that prefix left by dead test runs are
    removed (see ``cleanup_stale``).
    """

    def __init__(self) -> None:
        self._namespaces: list[Netns] = []
        self._cleaned: set[str] = set()

    def netns(self, prefix: str) -> Netns:
        """Create a namespace named after ``prefix`` (loopback up); it is deleted on ``close()``."""
        if prefix not in self._cleaned:
            cleanup_stale(prefix)
            self._cleaned.add(prefix)
        ns = Netns(prefix)
        self._namespaces.append(ns)
        return ns.create()

    def lan(self, prefix: str, subnet: str) -> Lan:
        """A bridged LAN on ``subnet`` whose namespaces belong to this pool."""
        return Lan(prefix, subnet, pool=self)

    def close(self) -> None:
        """Kill every process and delete every namespace created through this pool (errors are collected
        and raised after everything was attempted)."""
        errors: list[BaseException] = []
        for ns in reversed(self._namespaces):
            try:
                ns.close()
            except (CommandError, OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        self._namespaces.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> NetnsPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
