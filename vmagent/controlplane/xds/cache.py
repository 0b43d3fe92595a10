"""The latest snapshot per proxy, and watchers told which types changed when it is replaced."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vmagent.controlplane.xds.snapshot import Snapshot, short_name

log = logging.getLogger(__name__)

Watcher = Callable[[frozenset[str]], None]


class SnapshotCache:
    """Thread-safe map ``proxy key -> Snapshot``.

    :meth:`set` compares the new snapshot with the previous one and calls the watchers registered for
    that proxy key only, with the set of changed type URLs; nothing is called when nothing changed.
    Watchers run in the caller's thread and must not block (the ADS server hands the event to its
    event loop).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, dict[int, Watcher]] = {}
        self._next_id = 0

    def set(self, proxy_key: str, snapshot: Snapshot) -> frozenset[str]:
        """Store ``snapshot`` for ``proxy_key``; notify its watchers; return the changed type URLs."""
        with self._lock:
            previous = self._snapshots.get(proxy_key)
            changed = snapshot.changed_types(previous)
            self._snapshots[proxy_key] = snapshot
            watchers = list(self._watchers.get(proxy_key, {}).values())
        if changed and watchers:
            log.debug("snapshot for %s changed: %s", proxy_key, ", ".join(sorted(map(short_name, changed))))
        if changed:
            for w in watchers:
                try:
                    w(changed)
                except Exception:
                    log.exception("snapshot watcher for %s failed", proxy_key)
        return changed

    def get(self, proxy_key: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(proxy_key)

    def clear(self, proxy_key: str) -> None:
        """Forget the snapshot of ``proxy_key`` (watchers stay; they see nothing until the next set)."""
        with self._lock:
            self._snapshots.pop(proxy_key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._snapshots)

    def watch(self, proxy_key: str, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(changed_types)`` on each effective change for ``proxy_key``; return an unwatch."""
        with self._lock:
            wid = self._next_id
            self._next_id += 1
            self._watchers.setdefault(proxy_key, {})[wid] = watcher

        def unwatch() -> None:
            with self._lock:
                group = self._watchers.get(proxy_key)
                if group is not None:
                    group.pop(wid, None)
                    if not group:
                        del self._watchers[proxy_key]

        return unwatch
