"""The ``dns:`` section of the agent config file, and the DNS proxies it asks for.

    dns:
      enabled: true                     # run the DNS proxy (default true; capture.dns sends port 53 to it)
      listen: [127.0.0.1, "::1"]        # one proxy per address (default 127.0.0.1 only)
      port: 15053
      upstreams: [10.0.0.2, "[fd00::2]:53"]   # default: the host's resolvers, from resolv_conf
      resolv_conf: /etc/resolv.conf
      ttl: 30                           # seconds, for mesh answers
      upstream_timeout: 2.0             # seconds per upstream

IPv6 capture redirects port 53 to [::1]:15053, so a VM whose capture covers IPv6 DNS lists "::1" too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from vmagent.agent.dns_table import NameTable
from vmagent.common import constants
from vmagent.common.errors import ConfigError, VmagentError

if TYPE_CHECKING:  # dnslib (via dns, dns_upstream) is imported only when it is needed: it costs RSS
    from vmagent.agent.dns import DnsProxy

OBJECT = "dns"


def _error(source: str, path: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {OBJECT}.{path}: {problem}")


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = True
    listen: tuple[str, ...] = ("127.0.0.1",)
    port: int = constants.DNS_PROXY_PORT
    upstreams: tuple[str, ...] | None = None  # None: read resolv_conf at start
    resolv_conf: str = "/etc/resolv.conf"
    ttl: int = 30
    upstream_timeout: float = 2.0
    source: str = field(default="<defaults>", compare=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str) -> DnsConfig:
        """Validate the ``dns:`` mapping read from ``source``; ConfigError naming file and field."""
        if data is None:
            return cls(source=source)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {OBJECT}: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.name != "source"}
        for key in data:
            if key not in known:
                raise _error(source, str(key), f"unknown field (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        if "enabled" in data:
            if not isinstance(data["enabled"], bool):
                raise _error(source, "enabled", f"expected true or false, got {data['enabled']!r}")
            values["enabled"] = data["enabled"]
        if "listen" in data:
            values["listen"] = tuple(
                _ip(item, source, f"listen[{i}]") for i, item in enumerate(_list(data, "listen", source))
            )
            if not values["listen"]:
                raise _error(source, "listen", "needs at least one address")
        if "port" in data:
            port = data["port"]
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise _error(source, "port", f"expected a port number 1-65535, got {port!r}")
            values["port"] = port
        if "upstreams" in data:
            from vmagent.agent.dns_upstream import parse_upstream

            upstreams = []
            for i, item in enumerate(_list(data, "upstreams", source)):
                try:
                    parse_upstream(str(item))
                except VmagentError as exc:
                    raise _error(source, f"upstreams[{i}]", str(exc)) from None
                upstreams.append(str(item))
            values["upstreams"] = tuple(upstreams)
        if "resolv_conf" in data:
            if not isinstance(data["resolv_conf"], str) or not data["resolv_conf"]:
                raise _error(source, "resolv_conf", f"expected a file path, got {data['resolv_conf']!r}")
            values["resolv_conf"] = data["resolv_conf"]
        if "ttl" in data:
            ttl = data["ttl"]
            if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 86400:
                raise _error(source, "ttl", f"expected seconds 0-86400, got {ttl!r}")
            values["ttl"] = ttl
        if "upstream_timeout" in data:
            timeout = data["upstream_timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 30:
                raise _error(
                    source, "upstream_timeout", f"expected seconds above 0 and up to 30, got {timeout!r}"
                )
            values["upstream_timeout"] = float(timeout)
        return cls(source=source, **values)

    def resolved_upstreams(self) -> list[str]:
        """The configured upstreams, or the host's resolvers read from ``resolv_conf`` when none are set."""
        if self.upstreams is not None:
            return list(self.upstreams)
        from vmagent.agent.dns_upstream import read_resolv_conf

        return read_resolv_conf(self.resolv_conf)

    def build(self, table: NameTable, mark: int | None = constants.BYPASS_MARK) -> list[DnsProxy]:
        """One (not yet started) DnsProxy per listen address, all answering from ``table``."""
        from vmagent.agent.dns import DnsProxy

        upstreams = self.resolved_upstreams()
        return [
            DnsProxy(
                table=table,
                upstreams=upstreams,
                listen_host=host,
                port=self.port,
                mark=mark,
                ttl=self.ttl,
                upstream_timeout=self.upstream_timeout,
            )
            for host in self.listen
        ]


def _list(data: Mapping[str, Any], name: str, source: str) -> list[Any]:
    value = data[name]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _error(source, name, f"expected a list, got {type(value).__name__}")
    return value


def _ip(value: Any, source: str, path: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise _error(source, path, f"{value!r} is not an IP address") from None
