"""ACK/NACK tracking per ADS stream and type, and the JSON list behind ``vmagent-cp proxy-status``.

Per type a stream is ``synced`` when the proxy ACKed the last response sent, ``nacked`` when it
rejected it (``error`` holds Envoy's text; the proxy keeps running its previous config), and ``stale``
otherwise: a response is on its way or not yet acknowledged, or the proxy asked for the type and has
not been sent anything yet.
"""

from __future__ import annotations

import datetime
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmagent.controlplane.xds.snapshot import push_rank, short_name

SYNCED, STALE, NACKED = "synced", "stale", "nacked"
_SEVERITY = {SYNCED: 0, STALE: 1, NACKED: 2}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


@dataclass
class TypeSync:
    """What was sent for one type on one stream and what the proxy said about it."""

    type_url: str
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_at: float | None = None
    responses: int = 0
    acked_version: str | None = None
    acked_at: float | None = None
    nacked_version: str | None = None
    error: str | None = None
    error_at: float | None = None

    @property
    def state(self) -> str:
        if self.sent_nonce is None:
            return STALE
        if self.nacked_version is not None and self.nacked_version == self.sent_version:
            return NACKED
        if self.acked_version is not None and self.acked_version == self.sent_version:
            return SYNCED
        return STALE

    def to_json(self) -> dict[str, Any]:
        state = self.state
        return {
            "type_url": self.type_url,
            "state": state,
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "sent_at": _iso(self.sent_at),
            "responses": self.responses,
            "acked_version": self.acked_version,
            "acked_at": _iso(self.acked_at),
            "error": self.error if state == NACKED else None,
            "error_at": _iso(self.error_at) if state == NACKED else None,
        }


class XdsObserver(Protocol):
    """Told of every response sent and every ACK/NACK (the control plane's Prometheus metrics)."""

    def pushed(self, type_url: str) -> None: ...

    def acked(self, type_url: str, seconds: float) -> None: ...

    def nacked(self, type_url: str) -> None: ...


@dataclass
class StreamStatus:
    """The sync state of one ADS stream; mutated by the stream, read by :meth:`StatusRegistry.status`."""

    stream_id: int
    proxy_key: str
    node_id: str
    identity: str
    protocol: str
    peer: str
    connected_since: float
    _lock: threading.Lock
    _clock: Callable[[], float]
    types: dict[str, TypeSync] = field(default_factory=dict)
    observer: XdsObserver | None = None

    def _type(self, type_url: str) -> TypeSync:
        found = self.types.get(type_url)
        if found is None:
            found = self.types[type_url] = TypeSync(type_url)
        return found

    def requested(self, type_url: str) -> None:
        """The proxy subscribed to ``type_url`` (shown as stale until something is sent and ACKed)."""
        with self._lock:
            self._type(type_url)

    def sent(self, type_url: str, version: str, nonce: str) -> None:
        with self._lock:
            t = self._type(type_url)
            t.sent_version, t.sent_nonce, t.sent_at = version, nonce, self._clock()
            t.responses += 1
        if self.observer is not None:
            self.observer.pushed(type_url)

    def ack(self, type_url: str, nonce: str) -> bool:
        """Record an ACK of the response ``nonce``; False (ignored) if it is not the latest one sent."""
        with self._lock:
            t = self._type(type_url)
            if nonce != t.sent_nonce:
                return False
            t.acked_version, t.acked_at = t.sent_version, self._clock()
            took = t.acked_at - t.sent_at if t.sent_at is not None else None
        if self.observer is not None and took is not None:
            self.observer.acked(type_url, max(0.0, took))
        return True

    def nack(self, type_url: str, nonce: str, message: str) -> bool:
        """Record a NACK of the response ``nonce`` with Envoy's ``message``; False if not the latest."""
        with self._lock:
            t = self._type(type_url)
            if nonce != t.sent_nonce:
                return False
            t.nacked_version, t.error, t.error_at = t.sent_version, message, self._clock()
        if self.observer is not None:
            self.observer.nacked(type_url)
        return True

    def state_of(self, type_url: str) -> str | None:
        with self._lock:
            t = self.types.get(type_url)
            return None if t is None else t.state

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            ordered = sorted(self.types.values(), key=lambda t: push_rank(t.type_url))
            types = {short_name(t.type_url): t.to_json() for t in ordered}
        states = [v["state"] for v in types.values()]
        overall = max(states, key=_SEVERITY.__getitem__) if states else STALE
        return {
            "proxy": self.proxy_key,
            "node_id": self.node_id,
            "identity": self.identity,
            "protocol": self.protocol,
            "peer": self.peer,
            "connected_since": _iso(self.connected_since),
            "state": overall,
            "types": types,
        }


class StatusRegistry:
    """All connected streams; :meth:`status` is what the HTTP API serves at ``/api/v1/proxies``."""

    def __init__(self, clock: Callable[[], float] = time.time, observer: XdsObserver | None = None) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._observer = observer
        self._streams: dict[int, StreamStatus] = {}
        self._ids = itertools.count(1)

    def open_stream(
        self, proxy_key: str, node_id: str, identity: str, protocol: str, peer: str
    ) -> StreamStatus:
        with self._lock:
            sid = next(self._ids)
            st = StreamStatus(
                sid, proxy_key, node_id, identity, protocol, peer, self._clock(), self._lock, self._clock,
                observer=self._observer,
            )  # fmt: skip
            self._streams[sid] = st
            return st

    def close_stream(self, stream: StreamStatus) -> None:
        with self._lock:
            self._streams.pop(stream.stream_id, None)

    def streams(self) -> list[StreamStatus]:
        with self._lock:
            return list(self._streams.values())

    def status(self) -> list[dict[str, Any]]:
        """JSON-able list, one entry per connected stream, sorted by proxy key then connection time."""
        entries = [s.to_json() for s in self.streams()]
        entries.sort(key=lambda e: (e["proxy"], e["connected_since"]))
        return entries
