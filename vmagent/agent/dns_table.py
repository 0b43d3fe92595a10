"""The mesh name table the DNS proxy answers from: hostnames to IPv4/IPv6 addresses.

The control plane sends the whole table; ``NameTable.replace`` swaps it in at once, so a lookup sees
either the old table or the new one, never a mix. Lookups ignore case and a trailing dot.

Short names. A Kubernetes service host ``NAME.NS.svc.<cluster domain>`` is also answered as
``NAME.NS`` and ``NAME.NS.svc``, and as the bare ``NAME`` when ``NS`` is the VM's own namespace (the
``namespace`` given to the table). These are the names a pod in that namespace could use through its
search list. Hosts outside ``svc.<cluster domain>`` (ServiceEntry hosts such as ``db.example.com``) are
answered only under their exact name. A name sent by the control plane always wins over a short name
derived from another host; two hosts that would produce the same short name keep the one whose full
host sorts first, so the result does not depend on the order of the mapping.

Wildcard hosts (``*.example.com``) are skipped, as are hosts with no address: both are left to the
upstream resolvers. A malformed hostname or address makes ``replace`` raise and leaves the table as it was.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from vmagent.common.errors import VmagentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class NameTableError(VmagentError):
    """The control plane sent a table with a malformed hostname or address."""


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and drop one trailing dot: the form the table stores and looks up."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _check_hostname(name: str, original: str) -> None:
    if not name or len(name) > 253:
        raise NameTableError(f"DNS name table: hostname {original!r} is empty or longer than 253 characters")
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            raise NameTableError(
                f"DNS name table: hostname {original!r} has an invalid label {label!r} "
                "(letters, digits, '-' and '_', 1 to 63 characters)"
            )


def _parse_addresses(host: str, addresses: Iterable[str]) -> tuple[IPAddress, ...]:
    if isinstance(addresses, str):
        raise NameTableError(f"DNS name table: addresses of {host!r} must be a list, not a string")
    parsed: list[IPAddress] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(str(text).strip())
        except ValueError:
            raise NameTableError(
                f"DNS name table: address {text!r} of {host!r} is not an IPv4 or IPv6 address"
            ) from None
        if address not in parsed:
            parsed.append(address)
    return tuple(parsed)


class NameTable:
    """Thread-safe, atomically replaced mapping of mesh hostnames to addresses (see the module doc)."""

    def __init__(self, namespace: str | None = None, cluster_domain: str = "cluster.local") -> None:
        self._namespace = normalize_name(namespace) if namespace else None
        self._svc_suffix = ".svc." + normalize_name(cluster_domain)
        self._lock = threading.Lock()
        self._names: Mapping[str, tuple[IPAddress, ...]] = MappingProxyType({})
        self._hosts = 0

    def replace(self, mapping: Mapping[str, Iterable[str]]) -> None:
        """Swap in a new table built from ``{hostname: [address, ...]}``; raise NameTableError if invalid."""
        exact: dict[str, tuple[IPAddress, ...]] = {}
        for original, addresses in mapping.items():
            host = normalize_name(original)
            if host.startswith("*."):
                continue
            _check_hostname(host, original)
            parsed = _parse_addresses(original, addresses)
            if parsed:
                merged = exact.get(host, ())
                exact[host] = merged + tuple(a for a in parsed if a not in merged)
        names = dict(exact)
        for host in sorted(exact):
            for alias in self._short_names(host):
                names.setdefault(alias, exact[host])
        frozen = MappingProxyType(names)
        with self._lock:
            self._names = frozen
            self._hosts = len(exact)

    def _short_names(self, host: str) -> list[str]:
        if not host.endswith(self._svc_suffix):
            return []
        parts = host[: -len(self._svc_suffix)].split(".")
        if len(parts) != 2:
            return []
        name, namespace = parts
        aliases = [f"{name}.{namespace}", f"{name}.{namespace}.svc"]
        if namespace == self._namespace:
            aliases.append(name)
        return aliases

    def lookup(self, name: str) -> tuple[IPAddress, ...] | None:
        """The addresses of a mesh name (IPv4 and IPv6 mixed), or None when ``name`` is not a mesh name."""
        with self._lock:
            names = self._names
        return names.get(normalize_name(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.lookup(name) is not None

    def __len__(self) -> int:
        """Number of hosts the control plane sent (short names not counted)."""
        with self._lock:
            return self._hosts

    def names(self) -> list[str]:
        """Every name answered, short names included, sorted."""
        with self._lock:
            return sorted(self._names)
