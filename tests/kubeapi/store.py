"""An in-memory, revisioned object store with an event log and compaction (etcd's model, in one process).

Every write gets the next global revision, like an etcd revision; an object's ``metadata.resourceVersion``
is the revision of its last write. The event log keeps each write (with the object before it) from the
last compaction on, so watches resume from any revision after it and lists can be served "as of" an
older revision. ``compact()`` drops the log up to a revision: resuming from an older one is then
``Expired`` (HTTP 410), as with a compacted etcd.
"""

from __future__ import annotations

import builtins
import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
# (group, plural resource, namespace or "", name)
Key = tuple[str, str, str, str]


class Expired(Exception):
    """A resourceVersion older than the compacted revision was asked for."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"too old resource version: {requested} ({compacted})")
        self.requested = requested
        self.compacted = compacted


@dataclass(frozen=True)
class Event:
    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: Obj  # the object after the write (for DELETED: its last state, at the deletion revision)
    prev: Obj | None  # the object before the write (None for ADDED)


class Store:
    """All objects of every kind, one revision counter, one event log. Thread-safe."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._objects: dict[Key, Obj] = {}
        self._log: list[Event] = []
        self.revision = 1
        self.compacted = 0  # events with revision <= compacted are gone
        self.watch_epoch = 0  # bumped to make every open watch end

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: Key) -> Obj | None:
        with self.cond:
            obj = self._objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        group: str,
        resource: str,
        namespace: str | None,
        at: int | None = None,
        *,
        match: Callable[[Obj], bool] | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> tuple[list[Obj], int]:
        """Objects of one resource (in one namespace, or all when None), sorted by key, and the revision read.

        ``at`` reads as of an older revision, rebuilt from the log; Expired if it was compacted."""
        out, rev, _ = self.page(group, resource, namespace, at, match=match, after=after, limit=limit)
        return out, rev

    def page(
        self,
        group: str,
        resource: str,
        namespace: str | None,
        at: int | None = None,
        *,
        match: Callable[[Obj], bool] | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> tuple[builtins.list[Obj], int, int]:
        """One page of ``list``: the objects that ``match``, with a (namespace, name) past ``after``, at most
        ``limit`` of them (0: all); also the revision read and how many matching objects follow the page.
        Only the page's objects are copied, so paging through a big collection stays linear."""
        with self.cond:
            objects = self._objects
            rev = self.revision
            if at is not None and at < self.revision:
                if at < self.compacted:
                    raise Expired(at, self.compacted)
                objects = dict(self._objects)
                for ev in reversed(self._log):
                    if ev.revision <= at:
                        break
                    if ev.prev is None:
                        objects.pop(ev.key, None)
                    else:
                        objects[ev.key] = ev.prev
                rev = at
            keys = sorted(
                k
                for k in objects
                if k[0] == group
                and k[1] == resource
                and (namespace is None or k[2] == namespace)
                and (after is None or (k[2], k[3]) > after)
            )
            out: builtins.list[Obj] = []
            remaining = 0
            for k in keys:
                o = objects[k]
                if match is not None and not match(o):
                    continue
                if limit and len(out) >= limit:
                    remaining += 1
                else:
                    out.append(copy.deepcopy(o))
            return out, rev, remaining

    def events_after(self, revision: int) -> builtins.list[Event]:
        """Events with a revision above ``revision``; Expired when some of them were compacted."""
        with self.cond:
            if revision < self.compacted:
                raise Expired(revision, self.compacted)
            # The log is sorted by revision: bisect would do, but logs between compactions stay small.
            lo, hi = 0, len(self._log)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._log[mid].revision <= revision:
                    lo = mid + 1
                else:
                    hi = mid
            return self._log[lo:]

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: Key, obj: Obj) -> Obj:
        """Create or replace ``key``; stamps resourceVersion; returns a copy of what was stored."""
        with self.cond:
            prev = self._objects.get(key)
            self.revision += 1
            stored = copy.deepcopy(obj)
            stored.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
            self._objects[key] = stored
            self._log.append(Event(self.revision, "ADDED" if prev is None else "MODIFIED", key, stored, prev))
            self.cond.notify_all()
            return copy.deepcopy(stored)

    def delete(self, key: Key) -> Obj | None:
        with self.cond:
            prev = self._objects.pop(key, None)
            if prev is None:
                return None
            self.revision += 1
            last = copy.deepcopy(prev)
            last["metadata"]["resourceVersion"] = str(self.revision)
            self._log.append(Event(self.revision, "DELETED", key, last, prev))
            self.cond.notify_all()
            return copy.deepcopy(last)

    def keys(self, group: str, resource: str, namespace: str | None = None) -> builtins.list[Key]:
        with self.cond:
            return [
                k
                for k in sorted(self._objects)
                if k[0] == group and k[1] == resource and (namespace is None or k[2] == namespace)
            ]

    def compact(self, revision: int | None = None) -> int:
        """Forget the log up to ``revision`` (default: the current one); returns the compacted revision."""
        with self.cond:
            rev = self.revision if revision is None else min(revision, self.revision)
            if rev > self.compacted:
                self.compacted = rev
                self._log = [e for e in self._log if e.revision > rev]
            self.cond.notify_all()
            return self.compacted

    def end_watches(self) -> None:
        with self.cond:
            self.watch_epoch += 1
            self.cond.notify_all()
