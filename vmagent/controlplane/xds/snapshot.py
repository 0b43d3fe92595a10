"""Per-proxy xDS snapshots: for each type URL, resource name -> packed ``Any``, with content versions.

A snapshot is immutable once built. Every resource gets a version (a hash of its deterministic
serialization) and every type gets a version derived from its resources' names and versions, so equal
content always yields equal versions and any change yields a new one, across restarts too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message

# The type URLs are the wire contract's (vmagent.common.wire); re-exported for the xDS code.
from vmagent.common.wire import CLUSTER as CLUSTER
from vmagent.common.wire import ENDPOINT as ENDPOINT
from vmagent.common.wire import EXTENSION_CONFIG as EXTENSION_CONFIG
from vmagent.common.wire import LISTENER as LISTENER
from vmagent.common.wire import ROUTE as ROUTE
from vmagent.common.wire import RUNTIME as RUNTIME
from vmagent.common.wire import SECRET as SECRET

# Envoy's ordering expectations for state-of-the-world ADS: clusters before their endpoints, secrets
# before the listeners that use them, listeners before their routes. Types not listed go last.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE, EXTENSION_CONFIG, RUNTIME)

# Types whose subscriptions are wildcard ("everything for this proxy"); the others are by resource name.
WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})

SHORT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        CLUSTER: "CDS",
        ENDPOINT: "EDS",
        LISTENER: "LDS",
        ROUTE: "RDS",
        SECRET: "SDS",
        RUNTIME: "RTDS",
        EXTENSION_CONFIG: "ECDS",
    }
)


def short_name(type_url: str) -> str:
    """``CDS``/``EDS``/``LDS``/``RDS``/``SDS``/``RTDS``/``ECDS`` for the well-known types, else the type URL."""
    return SHORT_NAMES.get(type_url, type_url)


def push_rank(type_url: str) -> tuple[int, str]:
    """Sort key putting types in :data:`PUSH_ORDER`, unknown types after them by URL."""
    try:
        return (PUSH_ORDER.index(type_url), "")
    except ValueError:
        return (len(PUSH_ORDER), type_url)


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def resource_version(resource: any_pb2.Any) -> str:
    """Version of one packed resource: a hash of its type URL and deterministic bytes."""
    return _digest([resource.type_url.encode(), resource.value])


def set_version(versions: Mapping[str, str], names: Iterable[str] | None = None) -> str:
    """Version of a set of resources given ``name -> resource version`` (all of them, or ``names``)."""
    chosen = sorted(versions) if names is None else sorted(n for n in set(names) if n in versions)
    return _digest(f"{n}\0{versions[n]}".encode() for n in chosen)


def resource_name(msg: Message) -> str:
    """The xDS name of a typed resource: ``cluster_name`` for ClusterLoadAssignment, else ``name``."""
    desc = msg.DESCRIPTOR
    for attr in ("name", "cluster_name"):
        if attr in desc.fields_by_name:
            value = getattr(msg, attr)
            if isinstance(value, str) and value:
                return value
    raise ValueError(f"{desc.full_name} has no name; cannot use it as an xDS resource")


def pack(msg: Message) -> any_pb2.Any:
    """Pack a typed message into ``Any`` with deterministic bytes (stable versions)."""
    a = any_pb2.Any()
    a.Pack(msg, deterministic=True)
    return a


@dataclass(frozen=True)
class TypeResources:
    """The resources of one type in a snapshot, their versions and the type's version."""

    resources: Mapping[str, any_pb2.Any]
    versions: Mapping[str, str]
    version: str

    def subset_version(self, names: Iterable[str] | None) -> str:
        """The version of the resources in ``names`` (``None`` = all), as sent to a proxy."""
        return self.version if names is None else set_version(self.versions, names)


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy should have: ``type URL -> TypeResources``.

    Build it with :meth:`from_resources` or :meth:`from_messages`; types absent from the snapshot are
    treated as empty (a proxy subscribed to them gets an empty response).
    """

    types: Mapping[str, TypeResources] = field(default_factory=dict)

    @classmethod
    def from_resources(cls, resources: Mapping[str, Mapping[str, any_pb2.Any]]) -> Snapshot:
        """From ``type URL -> name -> Any``. Each ``Any``'s type URL must equal its key."""
        types: dict[str, TypeResources] = {}
        for type_url, named in resources.items():
            versions: dict[str, str] = {}
            for name, res in named.items():
                if res.type_url != type_url:
                    raise ValueError(f"resource {name!r} has type {res.type_url}, listed under {type_url}")
                versions[name] = resource_version(res)
            types[type_url] = TypeResources(
                MappingProxyType(dict(named)), MappingProxyType(versions), set_version(versions)
            )
        return cls(MappingProxyType(types))

    @classmethod
    def from_messages(cls, messages: Iterable[Message], packer: Packer | None = None) -> Snapshot:
        """From typed protos (Cluster, ClusterLoadAssignment, Listener, ...), named by their name field.

        A name used twice within one type raises ValueError. With ``packer``, messages and resource
        sets it has seen before are not packed or hashed again, and equal types share one
        :class:`TypeResources` (see :class:`Packer`).
        """
        if packer is None:
            packer = Packer()
        grouped: dict[str, dict[str, tuple[any_pb2.Any, str]]] = {}
        for msg in messages:
            packed, version = packer.pack(msg)
            name = resource_name(msg)
            named = grouped.setdefault(packed.type_url, {})
            if name in named:
                raise ValueError(f"duplicate {short_name(packed.type_url)} resource {name!r}")
            named[name] = (packed, version)
        return cls(MappingProxyType({t: packer.type_resources(named) for t, named in grouped.items()}))

    def get(self, type_url: str) -> TypeResources:
        """The resources of ``type_url`` (empty when the snapshot has none)."""
        found = self.types.get(type_url)
        return found if found is not None else _EMPTY

    def version(self, type_url: str) -> str:
        return self.get(type_url).version

    def changed_types(self, previous: Snapshot | None) -> frozenset[str]:
        """Types whose version differs from ``previous`` (all of this snapshot's types if none)."""
        if previous is None:
            return frozenset(self.types)
        if previous is self:
            return frozenset()
        urls = set(self.types) | set(previous.types)
        return frozenset(u for u in urls if self.version(u) != previous.version(u))


_EMPTY = TypeResources(MappingProxyType({}), MappingProxyType({}), set_version({}))


class Packer:
    """Packs and hashes each message once, and shares equal resource sets between snapshots.

    ``pack`` remembers messages by identity (it keeps them alive, so an id is never reused while it
    is here): translators that hand the same message objects to many proxies' snapshots pay for
    packing once. ``type_resources`` returns the :class:`TypeResources` built earlier for the same
    names and versions, so snapshots of proxies that get equal resources share one copy in memory.
    A packer grows with what it sees: use one per set of inputs (e.g. per config and registry
    version) and drop it afterwards. Safe to share between threads (a race packs a message twice,
    with equal results).
    """

    def __init__(self) -> None:
        self._packed: dict[int, tuple[Message, any_pb2.Any, str]] = {}
        self._types: dict[tuple[tuple[str, str], ...], TypeResources] = {}

    def pack(self, msg: Message) -> tuple[any_pb2.Any, str]:
        """``msg`` packed deterministically, and its :func:`resource_version`."""
        found = self._packed.get(id(msg))
        if found is not None and found[0] is msg:
            return found[1], found[2]
        packed = pack(msg)
        entry = self._packed.setdefault(id(msg), (msg, packed, resource_version(packed)))
        return entry[1], entry[2]

    def type_resources(self, named: Mapping[str, tuple[any_pb2.Any, str]]) -> TypeResources:
        """The :class:`TypeResources` of ``name -> (packed, version)``, shared when seen before."""
        key = tuple((name, version) for name, (_, version) in named.items())
        found = self._types.get(key)
        if found is not None:
            return found
        versions = {name: version for name, (_, version) in named.items()}
        built = TypeResources(
            MappingProxyType({name: res for name, (res, _) in named.items()}),
            MappingProxyType(versions),
            set_version(versions),
        )
        return self._types.setdefault(key, built)
