"""The ``capture:`` section of the agent's config file: what traffic iptables sends to the proxy.

Validation names the file, the object (``capture``) and the field path, for example
``/etc/vmagent/config.yaml: capture.exclude_inbound_ports[2]: 'ab' is not a port number``.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from vmagent.common.constants import PROXY_USER
from vmagent.common.errors import ConfigError

Backend = Literal["auto", "nft", "legacy"]
BACKENDS: tuple[str, ...] = ("auto", "nft", "legacy")
ALL: Final = "*"
OBJECT = "capture"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyIds:
    """The proxy's numeric identity, looked up from its user name."""

    user: str
    uid: int
    gid: int


def lookup_proxy_ids(user: str) -> ProxyIds:
    """Uid and primary gid of ``user`` from the user database; KeyError when the user does not exist."""
    entry = pwd.getpwnam(user)
    grp.getgrgid(entry.pw_gid)  # the group must exist too, or owner matches would name a ghost
    return ProxyIds(user=user, uid=entry.pw_uid, gid=entry.pw_gid)


@dataclass(frozen=True)
class CaptureConfig:
    """Capture settings with safe defaults (see docs/capture.md for each field).

    ``include_*`` values are either the string ``"*"`` (everything) or a tuple of ports/networks;
    ``source`` names the file the settings came from, for error messages.
    """

    enabled: bool = True
    inbound: bool = True
    include_inbound_ports: Literal["*"] | tuple[int, ...] = ALL
    exclude_inbound_ports: tuple[int, ...] = ()
    include_outbound_cidrs: Literal["*"] | tuple[IpNetwork, ...] = ALL
    exclude_outbound_cidrs: tuple[IpNetwork, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    dns: bool = True  # mesh names resolve by default (`vmagent join --no-dns-capture` turns it off)
    ipv6: bool | None = None
    backend: Backend = "auto"
    proxy_user: str = PROXY_USER
    source: str = field(default="<defaults>", compare=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str) -> CaptureConfig:
        """Validate the ``capture:`` mapping read from ``source``; ConfigError on the first bad field.

        ``None`` (section absent) gives the defaults.
        """
        if data is None:
            return cls(source=source)
        if not isinstance(data, Mapping):
            raise _error(source, OBJECT, f"expected a mapping, got {_kind(data)}")
        known = {f.name for f in fields(cls) if f.name != "source"}
        for key in data:
            if key not in known:
                raise _error(source, f"{OBJECT}.{key}", f"unknown field (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name in ("enabled", "inbound", "dns"):
            if name in data:
                values[name] = _bool(data[name], source, name)
        if "ipv6" in data:
            raw = data["ipv6"]
            values["ipv6"] = None if raw is None or raw == "auto" else _bool(raw, source, "ipv6", "or auto")
        if "include_inbound_ports" in data:
            values["include_inbound_ports"] = _ports_or_all(data["include_inbound_ports"], source)
        for name in ("exclude_inbound_ports", "exclude_outbound_ports"):
            if name in data:
                values[name] = _ports(data[name], source, name)
        if "include_outbound_cidrs" in data:
            values["include_outbound_cidrs"] = _cidrs_or_all(data["include_outbound_cidrs"], source)
        if "exclude_outbound_cidrs" in data:
            values["exclude_outbound_cidrs"] = _cidrs(
                data["exclude_outbound_cidrs"], source, "exclude_outbound_cidrs"
            )
        if "backend" in data:
            backend = data["backend"]
            if backend not in BACKENDS:
                raise _error(
                    source, f"{OBJECT}.backend", f"unknown backend {backend!r} (expected auto, nft or legacy)"
                )
            values["backend"] = backend
        if "proxy_user" in data:
            user = data["proxy_user"]
            if not isinstance(user, str) or not user.strip():
                raise _error(source, f"{OBJECT}.proxy_user", f"expected a user name, got {user!r}")
            values["proxy_user"] = user
        return cls(source=source, **values)

    def proxy_ids(self, lookup: Callable[[str], ProxyIds] = lookup_proxy_ids) -> ProxyIds:
        """Look up the proxy user's uid and gid; ConfigError naming the file when the user is missing."""
        try:
            return lookup(self.proxy_user)
        except KeyError as exc:
            raise _error(
                self.source,
                f"{OBJECT}.proxy_user",
                f"user {self.proxy_user!r} (or its primary group) does not exist on this machine; "
                f"create it (useradd --system {self.proxy_user}) or set {OBJECT}.proxy_user",
            ) from exc


def load_capture_config(path: Path) -> CaptureConfig:
    """Read the ``capture:`` section of the agent config file at ``path``; defaults when the file is absent."""
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return CaptureConfig(source=source)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the agent config: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if doc is None:
        return CaptureConfig(source=source)
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: the agent config must be a mapping, got {_kind(doc)}")
    return CaptureConfig.from_mapping(doc.get(OBJECT), source)


# -- field validators ----------------------------------------------------------------------------------


def _error(source: str, path: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {problem}")


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _bool(value: object, source: str, name: str, extra: str = "") -> bool:
    if not isinstance(value, bool):
        want = f"true or false{' ' + extra if extra else ''}"
        raise _error(source, f"{OBJECT}.{name}", f"expected {want}, got {value!r}")
    return value


def _list(value: object, source: str, name: str, what: str) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise _error(source, f"{OBJECT}.{name}", f"expected a list of {what}, got {_kind(value)} {value!r}")
    return value


def _port(value: object, source: str, path: str) -> int:
    if isinstance(value, bool):
        raise _error(source, path, f"{value!r} is not a port number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise _error(source, path, f"{value!r} is not a port number")
    if not 1 <= value <= 65535:
        raise _error(source, path, f"port {value} is out of range (1-65535)")
    return value


def _ports(value: object, source: str, name: str) -> tuple[int, ...]:
    items = _list(value, source, name, "port numbers")
    ports = [_port(item, source, f"{OBJECT}.{name}[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(ports))


def _ports_or_all(value: object, source: str) -> Literal["*"] | tuple[int, ...]:
    if value == ALL or value == [ALL]:
        return ALL
    return _ports(value, source, "include_inbound_ports")


def _cidr(value: object, source: str, path: str) -> IpNetwork:
    if not isinstance(value, str):
        raise _error(source, path, f"{value!r} is not an IP address or CIDR")
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(value.strip(), strict=False)
            raise _error(source, path, f"{value!r} has host bits set (did you mean '{fixed}'?)") from exc
        raise _error(source, path, f"{value!r} is not an IP address or CIDR") from exc


def _cidrs(value: object, source: str, name: str) -> tuple[IpNetwork, ...]:
    items = _list(value, source, name, "CIDRs")
    nets = [_cidr(item, source, f"{OBJECT}.{name}[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(nets))


def _cidrs_or_all(value: object, source: str) -> Literal["*"] | tuple[IpNetwork, ...]:
    if value == ALL or value == [ALL]:
        return ALL
    return _cidrs(value, source, "include_outbound_cidrs")
