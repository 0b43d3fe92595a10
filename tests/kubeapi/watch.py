"""Watch streams: the events of one resource after a resourceVersion, filtered, with bookmarks and expiry.

A stream yields ``{"type": ..., "object": ...}`` events and ends when its timeout passes (cleanly, as the
API server ends watches), with ``DROPPED`` when the test hook drops every open watch (the handler then
cuts the connection), or after an ``ERROR`` event carrying a 410 ``Expired`` Status once its starting
resourceVersion has been compacted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.kubeapi.errors import expired
from tests.kubeapi.operations import Operations
from tests.kubeapi.resources import ResourceType
from tests.kubeapi.store import Event, Expired, Obj

DROPPED: Obj = {"type": "DROPPED"}
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class WatchRequest:
    type: ResourceType
    namespace: str | None  # None: every namespace
    match: Callable[[Obj], bool]
    resource_version: str = ""
    bookmarks: bool = False
    send_initial_events: bool = False
    timeout: float = 1800.0
    bookmark_interval: float = 1.0


def _bookmark(t: ResourceType, rev: int, initial_end: bool = False) -> Obj:
    meta: Obj = {"resourceVersion": str(rev)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"type": "BOOKMARK", "object": {"kind": t.kind, "apiVersion": t.api_version, "metadata": meta}}


def _filtered(req: WatchRequest, ev: Event) -> Obj | None:
    t = req.type
    if ev.key[0] != t.group or ev.key[1] != t.resource:
        return None
    if req.namespace is not None and ev.key[2] != req.namespace:
        return None
    was = ev.prev is not None and req.match(ev.prev)
    now = ev.type != "DELETED" and req.match(ev.obj)
    if ev.type == "DELETED":
        return {"type": "DELETED", "object": Operations.present(t, dict(ev.obj))} if was else None
    if now and was:
        return {"type": "MODIFIED", "object": Operations.present(t, dict(ev.obj))}
    if now:
        return {"type": "ADDED", "object": Operations.present(t, dict(ev.obj))}
    if was and ev.prev is not None:
        # Left the selector: a DELETED of the last state that matched, at this revision (as the watch cache does).
        last = dict(ev.prev, metadata=dict(ev.prev["metadata"], resourceVersion=str(ev.revision)))
        return {"type": "DELETED", "object": Operations.present(t, last)}
    return None


def stream(ops: Operations, req: WatchRequest) -> Iterator[Obj]:
    store, t = ops.store, req.type
    epoch = store.watch_epoch
    start = time.monotonic()
    deadline = start + req.timeout
    rv = req.resource_version
    if rv in ("", "0") or req.send_initial_events:
        listed = ops.list(t, req.namespace, req.match)
        for obj in listed.items:
            yield {"type": "ADDED", "object": obj}
        pos = listed.revision
        if req.send_initial_events and req.bookmarks:
            yield _bookmark(t, pos, initial_end=True)
    else:
        try:
            pos = int(rv)
        except ValueError:
            yield {
                "type": "ERROR",
                "object": expired(f"invalid resource version {rv!r}").status()
                | {"code": 400, "reason": "BadRequest"},
            }
            return
    next_bookmark = time.monotonic() + req.bookmark_interval
    while True:
        events: list[Event] = []
        action = ""
        with store.cond:
            while True:
                if epoch != store.watch_epoch:
                    action = "drop"
                    break
                try:
                    events = store.events_after(pos)
                except Expired as e:
                    action = f"too old resource version: {e.requested} ({e.compacted})"
                    break
                if events:
                    break
                now = time.monotonic()
                wake = min(deadline, next_bookmark) if req.bookmarks else deadline
                if now >= wake:
                    break
                store.cond.wait(wake - now)
            current = store.revision
        if action == "drop":
            yield DROPPED
            return
        if action:
            yield {"type": "ERROR", "object": expired(action).status()}
            return
        for ev in events:
            out = _filtered(req, ev)
            pos = ev.revision
            if out is not None:
                yield out
        if not events:
            pos = max(pos, current)
        now = time.monotonic()
        if req.bookmarks and now >= next_bookmark:
            yield _bookmark(t, pos)
            next_bookmark = now + req.bookmark_interval
        if now >= deadline:
            return
