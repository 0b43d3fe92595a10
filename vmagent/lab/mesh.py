"""A whole mesh in network namespaces: a control plane, VMs with agents, Envoy and capture, apps, outsiders.

All hosts sit on one bridged LAN. Each VM joins with a real token, runs ``vmagent run`` as root with
capture on, and Envoy as the ``vmagent-proxy`` user, exactly as on a real VM. Used by ``make demo`` and
the system tests; everything is removed by ``close()``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmagent.agent.envoy_admin import admin_socket
from vmagent.common import proc
from vmagent.common.constants import CP_GRPC_PORT, CP_HTTP_PORT, CP_MTLS_PORT, PROXY_USER
from vmagent.lab.netns import Lan, LineLog, Netns, NetnsPool
from vmagent.lab.wait import wait_for


def exe(name: str) -> str:
    """A console script of this installation (next to the running Python), else from PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


def ensure_proxy_user(name: str = PROXY_USER) -> None:
    """Create the proxy's system user as the packages do, when it is missing."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        proc.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])


@dataclass
class ControlPlaneHost:
    ns: Netns
    workdir: Path
    config_dir: Path
    state_dir: Path
    process: subprocess.Popen[str] | None = None
    log: LineLog | None = None
    command: list[str] = field(default_factory=list)  # how `serve` was started (restart_control_plane)

    @property
    def address(self) -> str:
        return self.ns.address

    @property
    def join_address(self) -> str:
        return f"{self.address}:{CP_GRPC_PORT}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{CP_HTTP_PORT}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``vmagent-cp ARGS`` inside the control plane's namespace."""
        return self.ns.run([exe("vmagent-cp"), *args], check=check, timeout=60)

    def write_config(self, name: str, text: str) -> Path:
        path = self.config_dir / name
        path.write_text(text)
        return path

    def token(self, group: str, uses: int = 1) -> dict[str, Any]:
        r = self.cli(
            "token", "create", "--group", group, "--uses", str(uses), "--state-dir", str(self.state_dir),
            "--config-dir", str(self.config_dir), "--join-address", self.join_address, "-o", "json",
        )  # fmt: skip
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def api(self, path: str) -> Any:
        r = self.ns.run(["curl", "-sf", "--max-time", "5", self.http + path], timeout=10)
        return json.loads(r.stdout)


@dataclass
class VmHost:
    name: str
    ns: Netns
    workdir: Path
    group: str  # NS/NAME
    agent: subprocess.Popen[str] | None = None
    agent_log: LineLog | None = None
    apps: list[subprocess.Popen[str]] = field(default_factory=list)
    join_output: str = ""  # what `vmagent join` printed

    @property
    def address(self) -> str:
        return self.ns.address

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def runtime_dir(self) -> Path:
        """Under /run like the real /run/vmagent: Envoy (user vmagent-proxy) must reach its sockets and
        bootstrap, which a private test temp dir would not allow."""
        return Path("/run/vmagent-lab") / self.ns.name

    def dirs(self) -> list[str]:
        return ["--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir)]

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin API: a Unix socket only root and the proxy user reach (no TCP port)."""
        return admin_socket(self.runtime_dir)

    def envoy_admin(self, path: str, timeout: float = 5) -> str:
        """The body of GET ``path`` from this VM's Envoy admin socket, as root; "" when it does not answer."""
        url = "http://localhost" + path
        cmd = ["curl", "-s", "--max-time", str(int(timeout)), "--unix-socket", str(self.admin_socket), url]
        return self.ns.run(cmd, check=False, timeout=timeout + 10).stdout

    def vmagent(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns.run([exe("vmagent"), *args], check=check, timeout=60)

    def status(self) -> dict[str, Any]:
        r = self.vmagent("status", *self.dirs(), "-o", "json", check=False)
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def curl(
        self, url: str, *extra: str, user: str | None = "nobody", timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """``curl`` from this VM as an ordinary user (an unmodified client); never raises on HTTP errors."""
        cmd = ["curl", "-s", "--max-time", str(int(timeout)), "-w", "\n%{http_code}", *extra, url]
        return self.ns.run(cmd, user=user, check=False, timeout=timeout + 5)

    def leave(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``vmagent leave`` in this VM (its dirs and runtime dir); the agent exits when it succeeds."""
        cmd = [exe("vmagent"), "leave", *self.dirs(), "--runtime-dir", str(self.runtime_dir), *args]
        return self.ns.run(cmd, check=check, timeout=timeout)

    def stop_apps(self, timeout: float = 10) -> None:
        """Stop this VM's apps (SIGTERM, then SIGKILL after ``timeout``) and wait until they are gone."""
        for app in self.apps:
            if app.poll() is None:
                app.terminate()
                try:
                    app.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    app.kill()
                    app.wait()
        self.apps.clear()

    def run_loop(
        self,
        url: str,
        action: Callable[[], object],
        *,
        rate: float = 250,
        duration: float = 12.0,
        requests: int | None = None,
        warmup: int = 500,
        label: str = "loop",
    ) -> dict[str, Any]:
        """Run the paced request loop (``vmagent.lab.loadloop``) from this VM as an ordinary user through
        capture; once ``warmup`` requests were answered run ``action()`` in this thread, then wait for the
        loop to end (``duration`` seconds, at most ``requests``, default rate x duration). Returns the
        loop's JSON report, which is also printed as ``LABEL: {...}`` (``pytest -s``)."""
        count = requests if requests is not None else int(rate * duration)
        cmd = [
            sys.executable, "-m", "vmagent.lab.loadloop", "--url", url, "--rate", str(rate),
            "--requests", str(count), "--duration", str(duration), "--workers", "16", "--timeout", "30",
        ]  # fmt: skip
        loop = self.ns.popen(cmd, user="nobody", stderr=None)
        log = LineLog(loop)
        wait_for(
            lambda: any(int(line.split()[1]) >= warmup for line in log.matching("progress")),
            timeout=30,
            what=f"{warmup} answered requests",
        )
        action()
        assert loop.wait(timeout=duration + 60) == 0
        report: dict[str, Any] = json.loads(log.matching("{")[-1])
        print(f"\n{label}: {json.dumps(report)}")
        return report

    def start_app(self, port: int = 8080, *extra: str) -> None:
        app = self.ns.popen(
            [sys.executable, "-m", "vmagent.lab.echo", "--port", str(port), "--name", self.name, *extra]
        )
        self.apps.append(app)
        LineLog(app).wait_line("listening", timeout=10)


class MeshLab:
    """Build with ``add_control_plane``, ``add_vm`` and ``add_host``; tear down with ``close()``."""

    def __init__(self, workdir: Path, prefix: str = "vmlab", subnet: str = "10.230.0.0/24") -> None:
        self.workdir = workdir
        self.pool = NetnsPool()
        self.lan: Lan = self.pool.lan(prefix, subnet)
        self.prefix = prefix
        self.cp: ControlPlaneHost | None = None
        self.vms: dict[str, VmHost] = {}
        self.hosts: dict[str, Netns] = {}
        self._resolv_dirs: list[Path] = []

    # -- building -----------------------------------------------------------------------------------

    def add_control_plane(
        self, configs: dict[str, str], extra_args: list[str] | None = None
    ) -> ControlPlaneHost:
        ns = self.lan.add_host()
        base = self.workdir / "cp"
        cp = ControlPlaneHost(ns, base, base / "config", base / "state")
        cp.config_dir.mkdir(parents=True, exist_ok=True)
        for name, text in configs.items():
            cp.write_config(name, text)
        cmd = [
            exe("vmagent-cp"), "serve", "--config-dir", str(cp.config_dir), "--state-dir", str(cp.state_dir),
            "--listen", f"0.0.0.0:{CP_GRPC_PORT}", "--mtls-listen", f"0.0.0.0:{CP_MTLS_PORT}",
            "--http-listen", f"127.0.0.1:{CP_HTTP_PORT}", *(extra_args or []),
        ]  # fmt: skip
        cp.command = cmd
        cp.process = ns.popen(cmd)
        cp.log = LineLog(cp.process)
        cp.log.wait_line("control plane ready", timeout=30)
        self.cp = cp
        return cp

    def restart_control_plane(self, timeout: float = 30) -> ControlPlaneHost:
        """Stop ``vmagent-cp serve`` (SIGTERM) and start it again with the same arguments and state."""
        cp = self.cp
        assert cp is not None and cp.command, "add_control_plane first"
        if cp.process is not None and cp.process.poll() is None:
            cp.process.terminate()
            try:
                cp.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                cp.process.kill()
                cp.process.wait()
        cp.process = cp.ns.popen(cp.command)
        cp.log = LineLog(cp.process)
        cp.log.wait_line("control plane ready", timeout=timeout)
        return cp

    def kill_control_plane(self) -> int:
        """SIGKILL ``vmagent-cp serve`` (a crash, an OOM kill) and wait until it is gone; returns its pid.
        ``restart_control_plane`` starts it again."""
        cp = self.cp
        assert cp is not None and cp.process is not None and cp.process.poll() is None, "no control plane"
        cp.process.send_signal(signal.SIGKILL)
        cp.process.wait(timeout=10)
        return cp.process.pid

    def add_host(self, name: str) -> Netns:
        """A host outside the mesh (no agent)."""
        ns = self.lan.add_host()
        self.hosts[name] = ns
        return ns

    def add_vm(
        self,
        name: str,
        group: str,
        app_port: int | None = 8080,
        config: dict[str, Any] | None = None,
        start: bool = True,
        labels: dict[str, str] | None = None,
        register: str = "auto",
        join_args: tuple[str, ...] = (),
    ) -> VmHost:
        """A VM that joins ``group`` (NS/NAME), with the echo app on ``app_port`` and the agent running.

        ``register="auto"``: the agent registers itself (``labels`` go into its ``registration.labels``);
        ``"static"`` writes an operator's WorkloadEntry for the VM into the control plane's config dir and
        turns the agent's registration off.
        """
        assert self.cp is not None, "add_control_plane first"
        ensure_proxy_user()
        ns = self.lan.add_host()
        vm = VmHost(name, ns, self.workdir / name, group)
        overrides = dict(config or {})
        if register == "static":
            self.write_workload_entry(vm, labels or {})
            overrides["registration"] = {"enabled": False}
        elif labels:
            overrides.setdefault("registration", {})["labels"] = labels
        self._resolv_conf(ns)
        tok = self.cp.token(group)
        vm.join_output = vm.vmagent(
            "join", self.cp.join_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"],
            "--address", ns.address, *vm.dirs(), "--no-start", *join_args,
        ).stdout  # fmt: skip
        self._configure(vm, overrides)
        if app_port is not None:
            vm.start_app(app_port)
        if start:
            self.start_agent(vm)
        self.vms[name] = vm
        return vm

    def write_workload_entry(self, vm: VmHost, labels: dict[str, str]) -> Path:
        """An operator-written WorkloadEntry for ``vm`` from its WorkloadGroup's template."""
        assert self.cp is not None
        namespace, group = vm.group.split("/", 1)
        wg = self._group(namespace, group)
        spec = wg.get("spec") or {}
        template = dict(spec.get("template") or {})
        entry_labels = {
            **(template.get("labels") or {}),
            **((spec.get("metadata") or {}).get("labels") or {}),
            **labels,
        }
        entry = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": vm.name, "namespace": namespace},
            "spec": {**template, "address": vm.address, "labels": entry_labels},
        }
        return self.cp.write_config(f"zz-workloadentry-{vm.name}.yaml", yaml.safe_dump(entry))

    def _group(self, namespace: str, name: str) -> dict[str, Any]:
        assert self.cp is not None
        for path in sorted(self.cp.config_dir.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                meta = (doc or {}).get("metadata") or {}
                if (
                    doc.get("kind") == "WorkloadGroup"
                    and meta.get("name") == name
                    and meta.get("namespace", "default") == namespace
                ):
                    return dict(doc)
        raise KeyError(f"WorkloadGroup {namespace}/{name} is not in the control plane's config dir")

    def _configure(self, vm: VmHost, overrides: dict[str, Any]) -> None:
        path = vm.config_dir / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        # DNS capture stays as `vmagent join` left it (on by default, off with --no-dns-capture).
        cfg.setdefault("dns", {})["upstreams"] = ["127.0.0.1:9"]  # nothing outside the mesh to resolve
        for key, value in overrides.items():
            if isinstance(value, dict):
                cfg.setdefault(key, {}).update(value)
            else:
                cfg[key] = value
        path.write_text(yaml.safe_dump(cfg))

    def _resolv_conf(self, ns: Netns) -> None:
        """Give the namespace a resolv.conf of its own (``ip netns exec`` mounts it over /etc/resolv.conf)."""
        d = Path("/etc/netns") / ns.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {self.lan_gateway()}\n")
        self._resolv_dirs.append(d)

    def lan_gateway(self) -> str:
        """An address on the LAN that no host uses; DNS to it is captured by the agents."""
        net = self.lan.network
        return str(net.network_address + (net.num_addresses - 2))

    def start_agent(self, vm: VmHost, timeout: float = 30) -> None:
        vm.runtime_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        cmd = [exe("vmagent"), "run", *vm.dirs(), "--runtime-dir", str(vm.runtime_dir)]
        vm.agent = vm.ns.popen(cmd)
        vm.agent_log = LineLog(vm.agent)
        vm.agent_log.wait_line("agent ready", timeout=timeout)

    def kill_agent(self, vm: VmHost, envoy: bool = True) -> tuple[int, int | None]:
        """SIGKILL the agent and (``envoy``) its Envoy, as a crash or a power loss would (capture stays in
        place); returns (agent pid, Envoy pid or None)."""
        assert vm.agent is not None and vm.agent.poll() is None, f"the agent of {vm.name} is not running"
        envoy_pid = (vm.status().get("envoy") or {}).get("pid")
        agent_pid = vm.agent.pid
        vm.agent.send_signal(signal.SIGKILL)
        if envoy_pid and envoy:
            try:
                os.kill(int(envoy_pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        vm.agent.wait(timeout=10)
        return agent_pid, int(envoy_pid) if envoy_pid else None

    def stop_agent(self, vm: VmHost) -> None:
        if vm.agent is not None and vm.agent.poll() is None:
            vm.agent.terminate()
            try:
                vm.agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                vm.agent.kill()
                vm.agent.wait()
        vm.agent = None
        self._kill_orphaned_envoy(vm)

    @staticmethod
    def _kill_orphaned_envoy(vm: VmHost) -> None:
        """SIGKILL the Envoy a killed agent left running (it outlives its agent, to be adopted), so that no
        Envoy outlives the lab. Only the recorded pid, and only when it runs this VM's bootstrap."""
        try:
            pid = int(json.loads((vm.runtime_dir / "envoy.json").read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError):
            return
        if str(vm.runtime_dir / "envoy-bootstrap.json").encode() in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- observing ----------------------------------------------------------------------------------

    def wait_reachable(self, vm: VmHost, url: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until ``url`` answers 200 from ``vm``; return the echo app's JSON."""

        def attempt() -> dict[str, Any] | None:
            r = vm.curl(url)
            body, _, code = r.stdout.rpartition("\n")
            return json.loads(body) if code == "200" else None

        return wait_for(attempt, timeout=timeout, interval=0.2, what=f"{url} from {vm.name}")

    def describe(self) -> str:
        lines = [f"control plane  {self.cp.address if self.cp else '-'}"]
        lines += [f"vm {v.name:11} {v.address}  ({v.group})" for v in self.vms.values()]
        lines += [f"host {n:9} {ns.address}" for n, ns in self.hosts.items()]
        return "\n".join(lines)

    def close(self) -> None:
        for vm in self.vms.values():
            self.stop_agent(vm)
        if self.cp is not None and self.cp.process is not None and self.cp.process.poll() is None:
            self.cp.process.terminate()
        self.pool.close()
        for vm in self.vms.values():
            shutil.rmtree(vm.runtime_dir, ignore_errors=True)
        for d in self._resolv_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> MeshLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shell_join(cmd: list[str]) -> str:
    return shlex.join(cmd)
