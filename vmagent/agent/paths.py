"""Where the agent keeps its files. Keys and certificates live on persistent disk, never under /run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_DIR = Path("/etc/vmagent")
DEFAULT_STATE_DIR = Path("/var/lib/vmagent")
DEFAULT_RUNTIME_DIR = Path("/run/vmagent")


@dataclass(frozen=True)
class AgentPaths:
    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    runtime_dir: Path = DEFAULT_RUNTIME_DIR

    @property
    def config_file(self) -> Path:
        """Mesh settings written by ``vmagent join`` (YAML); operators may edit the capture/dns/envoy parts."""
        return self.config_dir / "config.yaml"

    @property
    def workload_group_file(self) -> Path:
        """The WorkloadGroup object the join token was issued for (JSON)."""
        return self.config_dir / "workloadgroup.json"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "key.pem"

    @property
    def chain_file(self) -> Path:
        """Certificate chain, leaf first."""
        return self.state_dir / "cert-chain.pem"

    @property
    def root_file(self) -> Path:
        return self.state_dir / "root-cert.pem"

    @property
    def sds_socket(self) -> Path:
        return self.runtime_dir / "sds.sock"

    @property
    def xds_socket(self) -> Path:
        return self.runtime_dir / "xds.sock"

    @property
    def als_socket(self) -> Path:
        """Envoy's access logs for the request metrics (gRPC AccessLogService)."""
        return self.runtime_dir / "als.sock"
