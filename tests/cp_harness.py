"""Running a real control plane (``vmagent-cp serve`` as a subprocess) and real ``vmagent`` commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port, wait_for

WORKLOAD_GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {name}
  namespace: {namespace}
spec:
  metadata:
    labels:
      app: {name}
  template:
    serviceAccount: {sa}
    ports:
      http: 8080
"""


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``vmagent`` or ``vmagent-cp`` (first arg) from the test's venv."""
    exe = shutil.which(args[0], path=os.path.dirname(sys.executable)) or args[0]
    return subprocess.run(
        [exe, *args[1:]], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@dataclass
class ControlPlaneProcess:
    """A ``vmagent-cp serve`` on loopback with its own config and state dirs."""

    root: Path
    host: str = "127.0.0.1"
    cert_ttl: str = "24h"
    extra_args: list[str] = field(default_factory=list)
    tls_port: int = 0
    mtls_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[str] | None = None
    launcher: list[str] = field(default_factory=list)  # runs the vmagent-cp script, e.g. under coverage.py

    def __post_init__(self) -> None:
        self.config_dir = self.root / "cp-config"
        self.state_dir = self.root / "cp-state"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "cp.log"
        self.tls_port = self.tls_port or free_port()
        self.mtls_port = self.mtls_port or free_port()
        self.http_port = self.http_port or free_port()

    @property
    def join_address(self) -> str:
        return f"{self.host}:{self.tls_port}"

    def add_group(self, namespace: str, name: str, sa: str | None = None) -> Path:
        path = self.config_dir / f"wg-{namespace}-{name}.yaml"
        path.write_text(WORKLOAD_GROUP.format(namespace=namespace, name=name, sa=sa or name))
        return path

    def start(self) -> None:
        exe = shutil.which("vmagent-cp", path=os.path.dirname(sys.executable)) or "vmagent-cp"
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                *self.launcher,
                exe,
                "serve",
                "--config-dir",
                str(self.config_dir),
                "--state-dir",
                str(self.state_dir),
                "--listen",
                f"{self.host}:{self.tls_port}",
                "--mtls-listen",
                f"{self.host}:{self.mtls_port}",
                "--http-listen",
                f"{self.host}:{self.http_port}",
                "--cert-ttl",
                self.cert_ttl,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        wait_for(self._ready, timeout=20, what="control plane to listen")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"vmagent-cp serve exited {self.proc.returncode}:\n{self.log_path.read_text()}"
            )
        import socket

        for port in (self.tls_port, self.mtls_port):
            try:
                socket.create_connection((self.host, port), timeout=0.2).close()
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def served_groups(self) -> list[str]:
        """The WorkloadGroups the running server has loaded, from its ``/api/v1/server`` document."""
        with urllib.request.urlopen(self.http_url + "/api/v1/server", timeout=5) as resp:  # noqa: S310
            groups: list[str] = json.loads(resp.read())["workload_groups"]
        return groups

    def token(self, group: str, ttl: str = "1h", uses: int = 1) -> dict[str, str]:
        """``token create -o json`` output: token, ca_hash, command, ..."""
        r = cli(
            "vmagent-cp", "token", "create", "--group", group, "--ttl", ttl, "--uses", str(uses),
            "--state-dir", str(self.state_dir), "--config-dir", str(self.config_dir),
            "--join-address", self.join_address, "--server", self.http_url, "-o", "json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out: dict[str, str] = json.loads(r.stdout)
        return out

    def cp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("vmagent-cp", *args)


@dataclass
class VmDirs:
    """Config and state dirs of one agent."""

    config_dir: Path
    state_dir: Path
    runtime_dir: Path

    @classmethod
    def under(cls, root: Path, name: str = "vm") -> VmDirs:
        return cls(root / f"{name}-etc", root / f"{name}-state", root / f"{name}-run")

    def join_args(self) -> list[str]:
        return ["--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir), "--no-start"]


def join(
    cp: ControlPlaneProcess, vm: VmDirs, token: str, ca_hash: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cli(
        "vmagent", "join", cp.join_address, "--token", token, "--ca-hash", ca_hash, *vm.join_args(), *extra
    )
