"""A real agent for the benchmarks: ``vmagent join`` with a token, then ``vmagent run`` with its Envoy.

Capture and the DNS proxy are off and Envoy runs as the agent's own user (``run_as: null``), so no
root is needed; Envoy's admin, Prometheus and readiness ports and the agent's status port are chosen
free on loopback. Readiness is the status port's ``/healthz/ready`` answering 200 (Envoy live, its
first config ACKed, the certificate valid).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.common import Background, free_port, run_timed, venv_tool
from bench.cpserver import BenchControlPlane
from vmagent.agent.envoy_admin import admin_request, admin_socket


class BenchAgent:
    """One VM's agent: dirs under ``root/NAME-*``, joined once, started and stopped as often as needed."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.config_dir = root / f"{name}-etc"
        self.state_dir = root / f"{name}-state"
        self.runtime_dir = root / f"{name}-run"
        self.status_port = free_port()
        self.proc: Background | None = None
        self._runs = 0

    def join(
        self, cp: BenchControlPlane, group: str, envoy: bool = True, address: str | None = None
    ) -> float:
        """``vmagent join`` with a single-use token (``--address`` if given), then the benchmark's config
        edits; returns the join's wall seconds."""
        tok = cp.token(group)
        cmd = [
            venv_tool("vmagent"), "join", cp.join_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"],
            "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir), "--no-start",
            *(["--address", address] if address else []),
        ]  # fmt: skip
        wall, _ = run_timed(cmd)
        path = self.config_dir / "config.yaml"
        cfg: dict[str, Any] = yaml.safe_load(path.read_text())
        cfg["capture"] = {"enabled": False}
        cfg["dns"] = {"enabled": False}
        cfg["envoy"] = {
            "enabled": envoy,
            "run_as": None,
            "prometheus_port": free_port(),
            "readiness_port": free_port(),
            "log_level": "warning",
        }
        cfg["status"] = {"host": "127.0.0.1", "port": self.status_port}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return wall

    def start(self) -> float:
        """Start ``vmagent run``; returns the ``time.monotonic()`` just before the process was created."""
        self._runs += 1
        cmd = [
            venv_tool("vmagent"), "run", "--config-dir", str(self.config_dir),
            "--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir),
        ]  # fmt: skip
        t0 = time.monotonic()
        self.proc = Background(cmd, self.root / f"{self.name}-{self._runs}.log")
        return t0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"agent {self.name} is not running")
        return self.proc.pid

    def ready(self) -> bool:
        """True when ``/healthz/ready`` on the status port answers 200; RuntimeError if the agent exited."""
        if self.proc is None or self.proc.proc.poll() is not None:
            raise RuntimeError(f"agent {self.name} exited:\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.status_port}/healthz/ready"
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.01) -> float:
        """Poll readiness every ``interval`` seconds; returns the ``time.monotonic()`` it was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic()
            time.sleep(interval)
        raise RuntimeError(f"agent {self.name} not ready within {timeout:g}s:\n{self.log_tail()}")

    def envoy_pid(self) -> int | None:
        """The pid of the Envoy child of the agent, if one runs."""
        import psutil

        for child in psutil.Process(self.pid).children(recursive=True):
            if "envoy" in child.name():
                return int(child.pid)
        return None

    def admin(self, path: str, timeout: float = 5.0) -> str:
        """GET ``path`` from the agent's Envoy, over its admin socket in the runtime directory."""
        status, body = admin_request(admin_socket(self.runtime_dir), "GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"Envoy admin GET {path} answered {status}")
        return body.decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.log_tail(lines) if self.proc else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None
