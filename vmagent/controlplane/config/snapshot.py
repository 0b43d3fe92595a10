"""The merged, read-only view of config from several sources, with change subscription.

``ConfigSet`` merges sources in precedence order: when two sources define the same (kind, namespace,
name), the earlier source's object is used and the shadowed one is reported in ``warnings()``.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from vmagent.controlplane.model import ConfigObject

Key = tuple[str, str, str]
log = logging.getLogger(__name__)


class ConfigView(Protocol):
    """What readers of config need: look up one object, or list a kind."""

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None: ...

    def list(self, kind: str, namespace: str | None = None) -> list[ConfigObject]: ...


class ConfigSource(Protocol):
    """A source of validated objects that tells its subscribers when its objects changed."""

    name: str

    def objects(self) -> dict[Key, ConfigObject]: ...

    def errors(self) -> list[str]: ...

    def subscribe(self, callback: Callable[[], None]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ConfigSnapshot:
    """An immutable set of objects with a version that grows with every change of a ``ConfigSet``."""

    def __init__(self, objects: Mapping[Key, ConfigObject], version: int = 0) -> None:
        self._objects = dict(objects)
        self.version = version

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None:
        return self._objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str | None = None) -> list[ConfigObject]:
        """Objects of ``kind`` (in ``namespace`` if given), sorted by namespace and name."""
        found = [
            o for k, o in self._objects.items() if k[0] == kind and (namespace is None or k[1] == namespace)
        ]
        return sorted(found, key=lambda o: (o.namespace, o.name))

    def all(self) -> builtins.list[ConfigObject]:
        return [self._objects[k] for k in sorted(self._objects)]

    def as_dict(self) -> dict[Key, ConfigObject]:
        return dict(self._objects)

    def __len__(self) -> int:
        return len(self._objects)


def merge(
    sources: Iterable[tuple[str, Mapping[Key, ConfigObject]]],
) -> tuple[dict[Key, ConfigObject], list[str]]:
    """Merge in precedence order; returns the objects and a message per shadowed object."""
    merged: dict[Key, ConfigObject] = {}
    winner: dict[Key, str] = {}
    shadowed: list[str] = []
    for name, objects in sources:
        for key, obj in objects.items():
            if key in merged:
                shadowed.append(
                    f"{name}: {key[0]} {key[1]}/{key[2]}: ignored, the {winner[key]} defines the same object "
                    f"({merged[key].source})"
                )
                continue
            merged[key] = obj
            winner[key] = name
    return merged, shadowed


class ConfigSet:
    """Thread-safe merged view of ``sources`` (highest precedence first) with ``subscribe``.

    Subscribers are called with the new snapshot from the thread of the source that changed, one call
    at a time and in version order; a subscriber that raises is logged and does not stop the others.
    """

    def __init__(self, sources: Sequence[ConfigSource]) -> None:
        self._sources = list(sources)
        self._lock = threading.Lock()
        self._notify_lock = threading.RLock()
        self._subscribers: list[Callable[[ConfigSnapshot], None]] = []
        self._snapshot = ConfigSnapshot({}, 0)
        self._shadowed: list[str] = []
        for src in self._sources:
            src.subscribe(self.refresh)
        self.refresh()

    def start(self) -> None:
        """Start every source's watcher (each loads its first view before returning)."""
        for src in self._sources:
            src.start()

    def stop(self) -> None:
        for src in self._sources:
            src.stop()

    def refresh(self) -> None:
        """Re-merge the sources; notify subscribers when the merged objects changed."""
        with self._notify_lock:
            merged, shadowed = merge((s.name, s.objects()) for s in self._sources)
            with self._lock:
                self._shadowed = shadowed
                if merged == self._snapshot.as_dict():
                    return
                self._snapshot = ConfigSnapshot(merged, self._snapshot.version + 1)
                snap = self._snapshot
                subscribers = list(self._subscribers)
            for callback in subscribers:
                try:
                    callback(snap)
                except Exception:
                    log.exception("config subscriber %r failed", callback)

    def subscribe(self, callback: Callable[[ConfigSnapshot], None]) -> None:
        """Call ``callback(snapshot)`` after every change of the merged view."""
        with self._lock:
            self._subscribers.append(callback)

    def snapshot(self) -> ConfigSnapshot:
        with self._lock:
            return self._snapshot

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None:
        return self.snapshot().get(kind, namespace, name)

    def list(self, kind: str, namespace: str | None = None) -> list[ConfigObject]:
        return self.snapshot().list(kind, namespace)

    @property
    def version(self) -> int:
        return self.snapshot().version

    def errors(self) -> builtins.list[str]:
        """Current problems of all sources (e.g. a config file that is invalid and kept at its last good version)."""
        return [e for s in self._sources for e in s.errors()]

    def warnings(self) -> builtins.list[str]:
        """Objects defined by two sources, and which one is in force."""
        with self._lock:
            return list(self._shadowed)


class StaticSource:
    """A source holding objects given in code (tests, golden files, auto-registered entries); ``set`` replaces them."""

    def __init__(self, objects: Iterable[ConfigObject] = (), name: str = "static") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._objects = {o.key: o for o in objects}
        self._subscribers: list[Callable[[], None]] = []

    def set(self, objects: Iterable[ConfigObject]) -> None:
        with self._lock:
            self._objects = {o.key: o for o in objects}
            subscribers = list(self._subscribers)
        for cb in subscribers:
            cb()

    def objects(self) -> dict[Key, ConfigObject]:
        with self._lock:
            return dict(self._objects)

    def errors(self) -> builtins.list[str]:
        return []

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def start(self) -> None:
        """Nothing to watch."""

    def stop(self) -> None:
        """Nothing to stop."""
