"""A real ``vmagent-cp serve`` for the benchmarks, and workload certificates minted from its CA.

The control plane runs as its own process (``Background``) with a watched config dir and a state dir;
certificates for lightweight clients are signed in the benchmark process by the same CA, loaded from
that state dir (``CertificateAuthority.load_or_create``), exactly as the control plane would sign them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Background, free_port, progress, run_timed, venv_tool
from vmagent.common.fsutil import atomic_write

HOST = "127.0.0.1"
TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Minted:
    """A workload identity: key and chain (leaf first) in PEM."""

    key_pem: bytes
    chain_pem: bytes


class BenchControlPlane:
    """``vmagent-cp serve`` on loopback ports chosen free, with ``root/cp-config`` and ``root/cp-state``.

    ``start()`` and ``stop()`` may be called repeatedly; the state dir (root CA, token key) and the
    ports are kept across restarts, so certificates minted once stay valid.
    """

    def __init__(self, root: Path, extra_args: list[str] | None = None) -> None:
        self.root = root
        self.config_dir = root / "cp-config"
        self.state_dir = root / "cp-state"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.tls_port, self.mtls_port, self.http_port = free_port(), free_port(), free_port()
        self.extra_args = list(extra_args or [])
        self.server: Background | None = None
        self._starts = 0

    @property
    def join_address(self) -> str:
        return f"{HOST}:{self.tls_port}"

    @property
    def mtls_address(self) -> str:
        return f"{HOST}:{self.mtls_port}"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def pid(self) -> int:
        if self.server is None:
            raise RuntimeError("the control plane is not running")
        return self.server.pid

    def write_config(self, name: str, text: str) -> Path:
        """Write one YAML file into the watched config dir atomically (the watcher polls every 0.2 s)."""
        path = self.config_dir / name
        atomic_write(path, text, 0o644)
        return path

    def remove_config(self, name: str) -> None:
        (self.config_dir / name).unlink(missing_ok=True)

    def start(self) -> None:
        self._starts += 1
        cmd = [
            venv_tool("vmagent-cp"), "serve",
            "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
            "--listen", self.join_address, "--mtls-listen", self.mtls_address,
            "--http-listen", f"{HOST}:{self.http_port}",
            *self.extra_args,
        ]  # fmt: skip
        self.server = Background(cmd, self.root / f"cp-{self._starts}.log")
        self.server.wait_ports(HOST, [self.tls_port, self.mtls_port, self.http_port], timeout=30)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def log_tail(self, lines: int = 30) -> str:
        return self.server.log_tail(lines) if self.server else ""

    def api(self, path: str, timeout: float = 10.0) -> Any:
        """GET a JSON document of the control plane's HTTP API (e.g. ``/api/v1/proxies``)."""
        with urllib.request.urlopen(self.http + path, timeout=timeout) as resp:  # noqa: S310 (http URL built here)
            return json.loads(resp.read())

    def token(self, group: str, uses: int = 1, ttl: str = "1h") -> dict[str, Any]:
        """``vmagent-cp token create -o json``: token, ca_hash, command."""
        cmd = [
            venv_tool("vmagent-cp"), "token", "create", "--group", group, "--ttl", ttl,
            "--uses", str(uses), "--state-dir", str(self.state_dir),
            "--config-dir", str(self.config_dir), "--join-address", self.join_address,
            "--server", self.http, "-o", "json",
        ]  # fmt: skip
        _, result = run_timed(cmd)
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def root_pem(self) -> bytes:
        return (self.state_dir / "root-cert.pem").read_bytes()

    def mint(self, namespace: str, service_account: str, count: int) -> list[Minted]:
        """``count`` fresh ECDSA P-256 keys with certificates for ``spiffe://TD/ns/NS/sa/SA``, signed by
        this control plane's CA (read from its state dir)."""
        from vmagent.agent.join import make_csr
        from vmagent.common.x509util import SpiffeId, chain_pem, generate_key, key_pem
        from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority

        start = time.perf_counter()
        ca = CertificateAuthority.load_or_create(self.state_dir, CaSettings(TRUST_DOMAIN))
        ident = SpiffeId(TRUST_DOMAIN, namespace, service_account)
        out: list[Minted] = []
        for _ in range(count):
            key = generate_key("ec-p256")
            chain = ca.sign_workload_csr(make_csr(key), ident)
            out.append(Minted(key_pem(key), chain_pem(chain)))
        progress(f"minted {count} certificates for {ident.uri} in {time.perf_counter() - start:.2f}s")
        return out
