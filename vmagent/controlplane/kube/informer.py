"""An informer: one kind of the Kubernetes API mirrored into memory, with change notifications.

The loop is the one client-go's reflector runs, written for plain JSON objects:

1. **list** the collection; its ``metadata.resourceVersion`` is where the watch starts;
2. **watch** from that resourceVersion with ``allowWatchBookmarks=true``; every event and bookmark
   moves the resume point forward;
3. when the stream ends (server timeout, dropped connection) resume the watch from the last
   resourceVersion seen — nothing is listed again;
4. on ``410 Gone`` (the resume point was compacted away) list again and emit only the differences
   against the cache: objects that appeared, disappeared or whose resourceVersion changed;
5. on any other failure wait with exponential backoff and try again; the cache is kept, so nothing
   already known is withdrawn while the API server is unreachable.

A kind the API server does not serve (a CRD not installed yet: ``404``) is waited for: the informer
retries with backoff and starts when the resource appears. ``403`` (RBAC) is logged once per state
change, with the resource named, and retried the same way.

Objects are cached as they come, less ``metadata.managedFields`` (server-side apply bookkeeping nothing
here reads), and through ``transform`` when given: a kind cached by the thousand (Pods) keeps only the
fields its consumer reads, as client-go's informer transforms do.

Handlers receive a list of ``Change`` per batch (a relist's differences arrive as one batch) on the
informer's own thread; they must be quick (hand work to a debounced scheduler).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmagent.common.backoff import Backoff
from vmagent.controlplane.kube.client import JsonObj, KubeClient, KubeError, Resource, WatchStream

log = logging.getLogger(__name__)

ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True)
class Change:
    type: str  # ADDED, MODIFIED or DELETED
    key: ObjKey
    obj: JsonObj  # the new object (the last known one for DELETED)


def object_key(obj: JsonObj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version(obj: JsonObj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


Handler = Callable[[list[Change]], None]
Transform = Callable[[JsonObj], JsonObj]


def _trim(obj: JsonObj, transform: Transform | None) -> JsonObj:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return transform(obj) if transform is not None else obj


class Informer:
    """Mirror of one ``Resource`` (all namespaces) kept current by list + watch."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        handler: Handler | None = None,
        *,
        label_selector: str = "",
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.client = client
        self._transform = transform
        self.resource = resource
        self._handlers: list[Handler] = [handler] if handler is not None else []
        self._label_selector = label_selector
        self._watch_timeout = watch_timeout
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._lock = threading.Lock()
        self._objects: dict[ObjKey, JsonObj] = {}
        self._rv = ""  # resume point: the last resourceVersion seen (list, event or bookmark)
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # set after the first successful list
        self.state = "starting"  # listing, watching, waiting (404), forbidden, error
        self.last_error = ""
        self.lists = 0  # full lists made (the first one and one per 410)
        self.events = 0  # watch events applied

    # -- public -------------------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        with self._lock:
            self._handlers.append(handler)

    def objects(self) -> dict[ObjKey, JsonObj]:
        with self._lock:
            return dict(self._objects)

    def get(self, namespace: str, name: str) -> JsonObj | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    # -- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._rv:
                    self._list()
                if self._watch():
                    self._backoff.reset()
                else:  # a stream that ends at once, again and again, must not spin
                    self._stop.wait(self._backoff.next())
            except _Expired:
                log.info("%s: resourceVersion %s expired (410); listing again", self.resource, self._rv)
                self._rv = ""
            except KubeError as exc:
                self._failed(exc)
            except Exception as exc:  # a dropped connection mid-stream, a malformed line
                self._failed(
                    KubeError(0, "stream failed", f"{type(exc).__name__}: {exc}", str(self.resource))
                )

    def _failed(self, exc: KubeError) -> None:
        if self._stop.is_set():
            return
        state = {404: "waiting", 403: "forbidden", 410: "expired"}.get(exc.status, "error")
        if state == "expired":
            self._rv = ""
            return
        message = str(exc)
        if state == "waiting":
            message = f"{self.resource} is not served by the API server (CRD not installed?); waiting for it"
        elif state == "forbidden":
            message = f"{self.resource}: forbidden by the API server (RBAC): {exc}"
        if (state, message) != (self.state, self.last_error):
            (log.info if state == "waiting" else log.warning)("%s", message)
        self.state, self.last_error = state, message
        delay = self._backoff.next()
        # A missing CRD is looked for again every few seconds at most, so installing it takes effect soon.
        self._stop.wait(min(delay, 5.0) if state == "waiting" else delay)

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self._label_selector)] if self._label_selector else []

    def _list(self) -> None:
        self.state = "listing"
        items: list[JsonObj] = []
        cont = ""
        while True:  # paged, so a huge collection does not need one huge response
            query = [*self._query(), ("limit", "500")]
            if cont:
                query.append(("continue", cont))
            page = self.client.get(self.resource.collection_path(), query)
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            meta = page.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                rv = str(meta.get("resourceVersion") or "")
                break
        kind = self.resource.kind
        fresh: dict[ObjKey, JsonObj] = {}
        for raw in items:
            item = _trim(raw, self._transform)
            item.setdefault("kind", kind)  # list items carry no kind; consumers like to see it
            item.setdefault("apiVersion", self.resource.api_version)
            fresh[object_key(item)] = item
        with self._lock:
            old = self._objects
            changes = [Change(DELETED, k, o) for k, o in old.items() if k not in fresh]
            for k, o in fresh.items():
                prev = old.get(k)
                if prev is None:
                    changes.append(Change(ADDED, k, o))
                elif resource_version(prev) != resource_version(o):
                    changes.append(Change(MODIFIED, k, o))
            self._objects = fresh
            self._rv = rv
            self.lists += 1
        self.synced.set()
        self._emit(changes)

    def _watch(self) -> bool:
        """Watch until the stream ends; True when it delivered at least one line."""
        query = [
            *self._query(),
            ("watch", "1"),
            ("resourceVersion", self._rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self._watch_timeout)),
        ]
        stream = self.client.open_watch(self.resource.collection_path(), query, self._watch_timeout + 30)
        self._stream = stream
        if self._stop.is_set():
            stream.close()
            return False
        self.state, self.last_error = "watching", ""
        got = False
        try:
            for line in stream.lines():
                if self._stop.is_set():
                    break
                if line.strip():
                    got = True
                    self._event(json.loads(line))
        finally:
            self._stream = None
        return got

    def _event(self, event: dict[str, Any]) -> None:
        etype = str(event.get("type", ""))
        obj = event.get("object") if isinstance(event.get("object"), dict) else {}
        assert isinstance(obj, dict)
        if etype == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise _Expired()
            raise KubeError(code, str(obj.get("reason", "")), str(obj.get("message", "")), str(self.resource))
        rv = resource_version(obj)
        if etype == "BOOKMARK":
            if rv:
                self._rv = rv
            return
        if etype not in (ADDED, MODIFIED, DELETED):
            return
        obj = _trim(obj, self._transform)
        obj.setdefault("kind", self.resource.kind)
        obj.setdefault("apiVersion", self.resource.api_version)
        key = object_key(obj)
        with self._lock:
            if etype == DELETED:
                self._objects.pop(key, None)
            else:
                self._objects[key] = obj
            if rv:
                self._rv = rv
            self.events += 1
        self._emit([Change(etype, key, obj)])

    def _emit(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._lock:
            handlers = list(self._handlers)
        for h in handlers:
            try:
                h(changes)
            except Exception:
                log.exception("%s: change handler failed", self.resource)


class _Expired(Exception):
    """The watch's resourceVersion is gone (410): list again."""
