"""The agent's configuration file (``/etc/vmagent/config.yaml``), written by ``vmagent join``.

Top-level sections: ``control_plane``, ``trust_domain``, ``workload`` and ``mesh`` come from the join;
``capture``, ``dns``, ``envoy``, ``status`` and ``identity`` are the operator's to edit (each module parses
its own section and names the field in its errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import ConfigError
from vmagent.common.fsutil import atomic_write
from vmagent.common.yamllimits import YamlLimitError, check_size, check_yaml_limits


@dataclass
class AgentConfig:
    cp_address: str  # HOST:PORT of the TLS (join) listener
    cp_mtls_address: str  # HOST:PORT of the mutual-TLS listener
    trust_domain: str
    namespace: str
    group: str
    service_account: str
    server_name: str = CP_SERVER_NAME
    address: str = ""  # the VM's mesh address; detected at start when empty
    sections: dict[str, Any] = field(default_factory=dict)  # capture, dns, envoy, status, identity, mesh
    source: str = ""

    def section(self, name: str) -> dict[str, Any]:
        value = self.sections.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"{self.source}: config: {name}: expected a mapping, got {type(value).__name__}"
            )
        return value

    def to_yaml(self) -> str:
        doc: dict[str, Any] = {
            "control_plane": {
                "address": self.cp_address,
                "mtls_address": self.cp_mtls_address,
                "server_name": self.server_name,
            },
            "trust_domain": self.trust_domain,
            "workload": {
                "namespace": self.namespace,
                "group": self.group,
                "service_account": self.service_account,
                "address": self.address,
            },
            **self.sections,
        }
        return (
            "# Written by `vmagent join`; capture, dns, envoy and status may be edited.\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_yaml(), 0o644)

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        try:
            check_size(path.stat().st_size)
            text = path.read_text()
            check_yaml_limits(text)
            raw = yaml.safe_load(text)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} does not exist; run `vmagent join` first") from exc
        except (OSError, yaml.YAMLError, YamlLimitError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: config: expected a mapping at the top level")
        src = str(path)
        cp = _mapping(raw, "control_plane", src)
        wl = _mapping(raw, "workload", src)
        sections = {k: v for k, v in raw.items() if k not in ("control_plane", "workload", "trust_domain")}
        return cls(
            cp_address=_str(cp, "control_plane.address", src),
            cp_mtls_address=_str(cp, "control_plane.mtls_address", src),
            server_name=str(cp.get("server_name") or CP_SERVER_NAME),
            trust_domain=_str(raw, "trust_domain", src),
            namespace=_str(wl, "workload.namespace", src),
            group=_str(wl, "workload.group", src),
            service_account=_str(wl, "workload.service_account", src),
            address=str(wl.get("address") or ""),
            sections=sections,
            source=src,
        )


def _mapping(raw: dict[str, Any], key: str, src: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: config: {key}: required mapping is missing")
    return value


def _str(raw: dict[str, Any], path: str, src: str) -> str:
    value = raw.get(path.rsplit(".", 1)[-1])
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{src}: config: {path}: required string is missing")
    return value


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ConfigError naming ``what`` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
