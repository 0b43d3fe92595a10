"""Transport-free xDS stream state machines: state of the world (SotW) and incremental (delta).

Each machine belongs to one ADS stream of one proxy. It is fed the proxy's requests and "the snapshot
changed" events and returns the responses to write, in order. It never re-sends content the stream
already carries, so a NACKed version is not pushed again until the snapshot or the subscription changes.

SotW follows Envoy's ordering expectations: on a snapshot change the changed types go out in
:data:`~.snapshot.PUSH_ORDER` (CDS, EDS, SDS, LDS, RDS); resources of new clusters and listeners are
served when Envoy asks for them by name, i.e. after it has received the CDS/LDS response.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from vmagent.controlplane.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    WILDCARD_TYPES,
    Snapshot,
    TypeResources,
    push_rank,
    short_name,
)
from vmagent.controlplane.xds.status import StreamStatus

log = logging.getLogger(__name__)

NonceSource = Callable[[], str]


class ProtocolError(Exception):
    """The proxy sent a request that breaks the xDS protocol (the stream is ended with INVALID_ARGUMENT)."""


def _names(requested: list[str] | tuple[str, ...], type_url: str) -> frozenset[str] | None:
    """``None`` (wildcard) for LDS/CDS-style types or an explicit ``*``; else the requested names."""
    if type_url in WILDCARD_TYPES or "*" in requested:
        return None
    return frozenset(requested)


@dataclass
class _SotwSub:
    names: frozenset[str] | None
    sent: tuple[str, frozenset[str]] | None = None  # (version, names actually sent)
    nonce: str = ""
    known: Mapping[str, str] | None = None  # EDS: the versions of the set last sent (None: send it all)


class SotwStream:
    """State-of-the-world ADS for one stream."""

    def __init__(self, status: StreamStatus, nonces: NonceSource) -> None:
        self._status = status
        self._nonces = nonces
        self._subs: dict[str, _SotwSub] = {}

    def on_request(
        self, req: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DiscoveryResponse]:
        """Handle one DiscoveryRequest: record ACK/NACK, update the subscription, answer if needed."""
        type_url = req.type_url
        if not type_url:
            raise ProtocolError("DiscoveryRequest without type_url")
        sub = self._subs.get(type_url)
        names = _names(list(req.resource_names), type_url)
        if sub is not None and req.response_nonce:
            if req.response_nonce != sub.nonce:
                log.debug(
                    "%s: ignoring %s request for old nonce %s",
                    self._status.proxy_key,
                    short_name(type_url),
                    req.response_nonce,
                )
                return []
            if req.HasField("error_detail"):
                sub.known = None  # the proxy kept its previous endpoints: the next response is complete
                self._nacked(type_url, req.response_nonce, req.error_detail.message)
            else:
                self._status.ack(type_url, req.response_nonce)
        if sub is None:
            sub = self._subs[type_url] = _SotwSub(names)
            self._status.requested(type_url)
            return self._respond(type_url, sub, snapshot, force=True)
        if names != sub.names:
            sub.names = names
            return self._respond(type_url, sub, snapshot, force=False)
        return []

    def on_snapshot(
        self, snapshot: Snapshot | None, changed: frozenset[str] | None
    ) -> list[discovery_pb2.DiscoveryResponse]:
        """Push the subscribed types that differ from what the stream has (``changed=None``: check all)."""
        out: list[discovery_pb2.DiscoveryResponse] = []
        for type_url in sorted(self._subs, key=push_rank):
            if (changed is None or type_url in changed) and not any(r.type_url == type_url for r in out):
                sub = self._subs[type_url]
                out.extend(self._respond(type_url, sub, snapshot, force=sub.sent is None, partial=True))
        return out

    def _nacked(self, type_url: str, nonce: str, message: str) -> None:
        sub = self._subs[type_url]
        version = sub.sent[0] if sub.sent else ""
        if self._status.nack(type_url, nonce, message):
            log.warning(
                "proxy %s (%s) rejected %s version %s: %s",
                self._status.proxy_key,
                self._status.identity,
                short_name(type_url),
                version,
                message,
            )

    def _respond(
        self, type_url: str, sub: _SotwSub, snapshot: Snapshot | None, force: bool, partial: bool = False
    ) -> list[discovery_pb2.DiscoveryResponse]:
        if snapshot is None:
            return []
        tr = snapshot.get(type_url)
        if sub.names is None:  # wildcard: the same for every stream of this snapshot, computed once
            chosen, names = _all_names(tr)
        else:
            chosen = sub.names & tr.resources.keys()
            names = sorted(chosen)
        version = tr.subset_version(None if sub.names is None else chosen)
        if not force and sub.sent == (version, chosen):
            return []
        if type_url == ENDPOINT:
            # EDS responses are not state-of-the-world (xDS protocol: only LDS and CDS responses are; an
            # endpoint assignment left out of an EDS response is kept): send only the assignments whose
            # version the stream has not sent yet. Only on a snapshot push (``partial``); answers to a
            # request, forced responses and a push that only removes assignments are complete.
            if partial and not force and sub.sent is not None and sub.known is not None:
                changed = _changed_names(sub.known, tr.versions) & chosen
                if changed:
                    names = sorted(changed)
            sub.known = tr.versions
        nonce = self._nonces()
        resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        resp.resources.extend(tr.resources[n] for n in names)
        sub.sent, sub.nonce = (version, chosen), nonce
        self._status.sent(type_url, version, nonce)
        out = [resp]
        eds = self._subs.get(ENDPOINT)
        if type_url == CLUSTER and eds is not None and eds.sent is not None:
            # Changed clusters warm again and wait for their endpoints; Envoy does not always ask.
            out.extend(self._respond(ENDPOINT, eds, snapshot, force=True))
        return out


# Every stream of a push compares the same two snapshots: the answers are computed once and kept for
# the few most recent pairs (with the mappings themselves, so an id is never reused while cached).
_SHARED_LOCK = threading.Lock()
_DIFFS: dict[tuple[int, int], tuple[Mapping[str, str], Mapping[str, str], frozenset[str]]] = {}
_NAMES: dict[int, tuple[Mapping[str, Any], frozenset[str], list[str]]] = {}
_KEEP = 8


def _changed_names(old: Mapping[str, str], new: Mapping[str, str]) -> frozenset[str]:
    """The names in ``new`` whose version differs from (or is missing in) ``old``."""
    key = (id(old), id(new))
    with _SHARED_LOCK:
        hit = _DIFFS.get(key)
        if hit is not None and hit[0] is old and hit[1] is new:
            return hit[2]
    diff = frozenset(n for n, v in new.items() if old.get(n) != v)
    with _SHARED_LOCK:
        if len(_DIFFS) >= _KEEP:
            del _DIFFS[next(iter(_DIFFS))]
        _DIFFS[key] = (old, new, diff)
    return diff


def _all_names(tr: TypeResources) -> tuple[frozenset[str], list[str]]:
    """Every resource name of ``tr``, as a set and sorted (callers must not modify the list)."""
    key = id(tr.resources)
    with _SHARED_LOCK:
        hit = _NAMES.get(key)
        if hit is not None and hit[0] is tr.resources:
            return hit[1], hit[2]
    chosen = frozenset(tr.resources)
    names = sorted(chosen)
    with _SHARED_LOCK:
        if len(_NAMES) >= _KEEP:
            del _NAMES[next(iter(_NAMES))]
        _NAMES[key] = (tr.resources, chosen, names)
    return chosen, names


@dataclass
class _DeltaSub:
    wildcard: bool
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the proxy has: name -> version
    nonce: str = ""
    answered: bool = False


class DeltaStream:
    """Incremental (delta) ADS for one stream: sends only resources whose version the proxy lacks."""

    def __init__(self, status: StreamStatus, nonces: NonceSource) -> None:
        self._status = status
        self._nonces = nonces
        self._subs: dict[str, _DeltaSub] = {}

    def on_request(
        self, req: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        type_url = req.type_url
        if not type_url:
            raise ProtocolError("DeltaDiscoveryRequest without type_url")
        sub = self._subs.get(type_url)
        subscribe = list(req.resource_names_subscribe)
        if sub is None:
            wildcard = type_url in WILDCARD_TYPES or "*" in subscribe
            sub = self._subs[type_url] = _DeltaSub(wildcard, known=dict(req.initial_resource_versions))
            self._status.requested(type_url)
        elif req.response_nonce:
            if req.HasField("error_detail"):
                if self._status.nack(type_url, req.response_nonce, req.error_detail.message):
                    log.warning(
                        "proxy %s (%s) rejected %s: %s",
                        self._status.proxy_key,
                        self._status.identity,
                        short_name(type_url),
                        req.error_detail.message,
                    )
            else:
                self._status.ack(type_url, req.response_nonce)
        for name in subscribe:
            if name == "*":
                sub.wildcard = True
            else:
                sub.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                sub.wildcard = False
            else:
                sub.names.discard(name)
                sub.known.pop(name, None)
        return self._respond(type_url, sub, snapshot)

    def on_snapshot(
        self, snapshot: Snapshot | None, changed: frozenset[str] | None
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        out: list[discovery_pb2.DeltaDiscoveryResponse] = []
        for type_url in sorted(self._subs, key=push_rank):
            if any(r.type_url == type_url for r in out):
                continue
            if changed is None or type_url in changed or not self._subs[type_url].answered:
                out.extend(self._respond(type_url, self._subs[type_url], snapshot))
        return out

    def _respond(
        self, type_url: str, sub: _DeltaSub, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if snapshot is None:
            return []
        tr = snapshot.get(type_url)
        scope = set(tr.resources) | sub.names if sub.wildcard else set(sub.names)
        updated = sorted(n for n in scope if n in tr.versions and sub.known.get(n) != tr.versions[n])
        removed = sorted(n for n in sub.known if n not in tr.versions and (sub.wildcard or n in sub.names))
        if not updated and not removed and sub.answered:
            return []
        version = tr.subset_version(None if sub.wildcard else sub.names)
        nonce = self._nonces()
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce
        )
        for n in updated:
            resp.resources.add(name=n, version=tr.versions[n], resource=tr.resources[n])
            sub.known[n] = tr.versions[n]
        for n in removed:
            del sub.known[n]
        resp.removed_resources.extend(removed)
        sub.nonce, sub.answered = nonce, True
        self._status.sent(type_url, version, nonce)
        out = [resp]
        eds = self._subs.get(ENDPOINT)
        if type_url == CLUSTER and updated and eds is not None and eds.answered:
            # Updated clusters warm again and wait for their endpoints: send those again.
            for n in updated:
                eds.known.pop(n, None)
            out.extend(self._respond(ENDPOINT, eds, snapshot))
        return out
