"""The ``AggregatedDiscoveryService`` servicer (SotW and delta) for a ``grpc.aio`` server.

Every stream is authenticated by the client certificate of its mutual TLS connection: the SPIFFE URI
SAN is the proxy's identity. The first request's ``node``, that identity and the certificate's serial
are handed to ``on_proxy_connected``, which binds them (docs/security.md) and returns the proxy key whose snapshot the stream serves (or raises to
refuse); the stream can never receive another key's snapshot. Each stream is one asyncio task plus a
reader task, so thousands of streams share one event loop thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.ca.authn import Unauthenticated, require_workload_identity
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.status import StatusRegistry, StreamStatus
from vmagent.controlplane.xds.stream import DeltaStream, ProtocolError, SotwStream

log = logging.getLogger(__name__)

OnConnected = Callable[[SpiffeId, int, base_pb2.Node], str]  # (identity, certificate serial, node)
OnDisconnected = Callable[[str], None]
IsRevoked = Callable[[SpiffeId, int], bool]


class _Machine(Protocol):
    def on_request(self, req: Any, snapshot: Any) -> list[Any]: ...
    def on_snapshot(self, snapshot: Any, changed: frozenset[str] | None) -> list[Any]: ...


class _Push:
    """Queue marker: the proxy's snapshot changed."""


class _End:
    """Queue marker: the proxy closed its side of the stream."""


class _Kick:
    """Queue marker: end the stream with PERMISSION_DENIED and ``reason`` (e.g. the workload was revoked)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_PUSH, _END = _Push(), _End()


class Refused(VmagentError):
    """Raised by ``on_proxy_connected`` to refuse a proxy; the message goes back to it."""


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves snapshots from ``cache`` to authenticated proxies and tracks their sync state.

    ``on_proxy_connected(identity, serial, node)`` runs in a worker thread when a stream's first request
    arrives; it returns the proxy key or raises (the stream ends with PERMISSION_DENIED and the
    exception text). ``on_proxy_disconnected(proxy_key)`` runs when such a stream ends.
    ``is_revoked(identity, certificate serial)`` refuses revoked workloads with PERMISSION_DENIED.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        on_proxy_connected: OnConnected,
        on_proxy_disconnected: OnDisconnected | None = None,
        is_revoked: IsRevoked | None = None,
        registry: StatusRegistry | None = None,
    ) -> None:
        self._cache = cache
        self._on_connected = on_proxy_connected
        self._on_disconnected = on_proxy_disconnected
        self._is_revoked = is_revoked
        self.registry = registry if registry is not None else StatusRegistry()
        self._live_lock = threading.Lock()
        # stream id -> (proxy key, identity, certificate serial, loop, queue)
        self._live: dict[
            int, tuple[str, SpiffeId, int, asyncio.AbstractEventLoop, asyncio.Queue[object]]
        ] = {}
        prefix = secrets.token_hex(4)
        counter = itertools.count(1)
        self._nonces: Callable[[], str] = lambda: f"{prefix}-{next(counter)}"

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    def status(self) -> list[dict[str, Any]]:
        """One JSON-able entry per connected stream (see :mod:`.status`); safe from any thread."""
        return self.registry.status()

    def disconnect(self, proxy_key: str, reason: str) -> int:
        """End every stream of ``proxy_key`` with PERMISSION_DENIED and ``reason``; return how many.

        Safe from any thread; used when a workload is revoked or deleted while connected.
        """
        return self.disconnect_where(lambda key, _identity, _serial: key == proxy_key, reason)

    def disconnect_where(self, selected: Callable[[str, SpiffeId, int], bool], reason: str) -> int:
        """End every stream whose (proxy key, identity, certificate serial) ``selected`` picks, with
        PERMISSION_DENIED and ``reason``; return how many. Safe from any thread."""
        with self._live_lock:
            live = list(self._live.values())
        targets = [(loop, q) for key, ident, serial, loop, q in live if selected(key, ident, serial)]
        for loop, q in targets:
            loop.call_soon_threadsafe(q.put_nowait, _Kick(reason))
        return len(targets)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(request_iterator, context, "sotw")

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(request_iterator, context, "delta")

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> tuple[SpiffeId, int]:
        try:
            identity, cert = require_workload_identity(context, "ADS")
        except Unauthenticated as exc:
            await context.abort(exc.code, exc.message)
        if self._is_revoked is not None and await asyncio.to_thread(
            self._is_revoked, identity, cert.serial_number
        ):
            log.warning("refused ADS stream of revoked workload %s (serial %x)", identity, cert.serial_number)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"workload {identity} is revoked")
        return identity, cert.serial_number

    async def _serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, protocol: str
    ) -> None:
        identity, serial = await self._authenticate(context)
        it = aiter(requests)
        first = await anext(it, None)
        if first is None:
            return
        node: base_pb2.Node = first.node
        if not node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        try:
            proxy_key = await asyncio.to_thread(self._on_connected, identity, serial, node)
        except Exception as exc:
            log.warning("refused ADS stream from %s (node %s): %s", identity, node.id, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc) or "refused")
        st = self.registry.open_stream(proxy_key, node.id, identity.uri, protocol, context.peer())
        log.info("proxy %s connected (%s, node %s, %s xDS)", proxy_key, identity, node.id, protocol)
        machine: _Machine = (
            SotwStream(st, self._nonces) if protocol == "sotw" else DeltaStream(st, self._nonces)
        )
        try:
            await self._run(machine, st, first, it, context, identity, serial)
        finally:
            self.registry.close_stream(st)
            log.info("proxy %s disconnected (node %s)", proxy_key, node.id)
            if self._on_disconnected is not None:
                try:
                    await asyncio.to_thread(self._on_disconnected, proxy_key)
                except Exception:
                    log.exception("on_proxy_disconnected(%s) failed", proxy_key)

    async def _run(
        self,
        machine: _Machine,
        st: StreamStatus,
        first: Any,
        it: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        identity: SpiffeId,
        serial: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        pending: list[frozenset[str] | None] = []  # accumulated changed types of a queued push

        def mark(changed: frozenset[str]) -> None:
            if pending:
                prev = pending[0]
                pending[0] = None if prev is None else prev | changed
            else:
                pending.append(changed)
                queue.put_nowait(_PUSH)

        def notify(changed: frozenset[str]) -> None:
            loop.call_soon_threadsafe(mark, changed)

        unwatch = self._cache.watch(st.proxy_key, notify)
        reader = asyncio.create_task(self._read(it, queue))
        with self._live_lock:
            self._live[st.stream_id] = (st.proxy_key, identity, serial, loop, queue)
        try:
            item: object = first
            while True:
                if item is _END:
                    return
                if isinstance(item, _Kick):
                    log.warning("ending ADS stream of %s: %s", st.proxy_key, item.reason)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, item.reason)
                if isinstance(item, BaseException):
                    raise item
                snapshot = self._cache.get(st.proxy_key)
                try:
                    if item is _PUSH:
                        changed = pending.pop() if pending else None
                        out = machine.on_snapshot(snapshot, changed)
                    else:
                        if item.HasField("node") and item.node.id and item.node.id != st.node_id:  # type: ignore[attr-defined]
                            await context.abort(
                                grpc.StatusCode.PERMISSION_DENIED, "node.id changed mid-stream"
                            )
                        out = machine.on_request(item, snapshot)
                except ProtocolError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                for resp in out:
                    await context.write(resp)
                item = await queue.get()
        finally:
            with self._live_lock:
                self._live.pop(st.stream_id, None)
            unwatch()
            reader.cancel()

    @staticmethod
    async def _read(it: AsyncIterator[Any], queue: asyncio.Queue[object]) -> None:
        try:
            async for req in it:
                queue.put_nowait(req)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(exc)
