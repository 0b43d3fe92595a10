"""The control plane's end of the registration stream (``vmagent.v1.Registration/Connect``).

An asyncio servicer for a ``grpc.aio`` server (``AioServerThread``): an open stream costs a coroutine
and a queue, not a thread, so a thousand connected VMs do not need a thousand pool threads (a sync
streaming servicer would hold one pool thread per stream for its whole life). Blocking work (the group
lookup, SQLite writes, ``wait_pushed``) runs in worker threads through ``asyncio.to_thread``.

Per stream:

1. the caller is identified by its mTLS certificate (``spiffe://TD/ns/NS/sa/SA``); the first message
   must be ``Register``; the WorkloadGroup ``NS/GROUP`` must exist and its template's
   ``serviceAccount`` (default ``default``) must be the certificate's, in the certificate's namespace
   and trust domain, else the stream ends with PERMISSION_DENIED;
2. the entry is created or refreshed (``WorkloadStore.register``), ``Registered`` is sent, then the
   current name table;
3. every ``HealthReport`` and ``Heartbeat`` is stored and then acknowledged by its ``seq`` (a report
   that could not be stored is not acknowledged: the agent retries it);
4. ``Leave`` deletes the entry (it leaves EDS), then ``LeaveConfirmed`` is sent once
   ``wait_pushed(timeout)`` says the change reached the proxies, or ``Error`` if it did not in time;
5. when the stream ends the entry is marked disconnected.

``name_table(namespace)`` gives the table for agents of a namespace (what they may see, ``exportTo``);
``push_name_table()`` (any thread) sends each registered stream its namespace's table when that differs
from the last one sent to the namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from cryptography import x509

from vmagent.api import registration_pb2, registration_pb2_grpc
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.ca.authn import Unauthenticated, require_workload_identity
from vmagent.controlplane.db import StoreWriteError
from vmagent.controlplane.registry.workload_entry import (
    LabelConflict,
    Registration,
    RegistrationRefused,
    entry_name,
)
from vmagent.controlplane.registry.workload_store import AddressTaken, SameHolder, WorkloadStore
from vmagent.controlplane.specs import WorkloadGroup, from_spec

log = logging.getLogger(__name__)

GroupLookup = Callable[[str, str], dict[str, Any] | None]
NameTableProvider = Callable[[str], dict[str, list[str]]]  # namespace -> {hostname: [address, ...]}
WaitPushed = Callable[[float], bool]
IsRevoked = Callable[[SpiffeId, int], bool]

_END = object()


def _pushed_at_once(_timeout: float) -> bool:
    return True


def _empty_table(_namespace: str) -> dict[str, list[str]]:
    return {}


class _Stream:
    """One open stream: its outgoing queue on the server's loop, its caller and the entry it registered."""

    def __init__(self, loop: asyncio.AbstractEventLoop, identity: SpiffeId, serial: int) -> None:
        self.loop = loop
        self.identity = identity
        self.serial = serial
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.entry: tuple[str, str] | None = None  # (namespace, name)


class _Kick:
    """Queue marker: end the stream with PERMISSION_DENIED and ``reason`` (the certificate was revoked)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def name_table_message(table: dict[str, list[str]]) -> registration_pb2.ControlMessage:
    hosts = {h: registration_pb2.Addresses(addresses=list(a)) for h, a in table.items()}
    return registration_pb2.ControlMessage(name_table=registration_pb2.NameTable(hosts=hosts))


class RegistrationServicer(registration_pb2_grpc.RegistrationServicer):  # type: ignore[misc]
    """Serves ``Registration/Connect``; add it with :meth:`add_to_server` to a ``grpc.aio`` server."""

    def __init__(
        self,
        store: WorkloadStore,
        group_lookup: GroupLookup,
        trust_domain: str,
        name_table: NameTableProvider = _empty_table,
        wait_pushed: WaitPushed = _pushed_at_once,
        is_revoked: IsRevoked | None = None,
        leave_timeout: float = 10.0,
        same_holder: SameHolder | None = None,
        on_registration: Callable[[str], None] | None = None,
    ) -> None:
        """``same_holder(record, registration)``: is the registration's certificate the one that registered
        the live ``record`` at its address, or a renewal of it (see ``WorkloadStore.register``)."""
        self._store = store
        self._on_registration = on_registration or (lambda _result: None)
        self._groups = group_lookup
        self._trust_domain = trust_domain
        self._name_table = name_table
        self._wait_pushed = wait_pushed
        self._is_revoked = is_revoked
        self._leave_timeout = leave_timeout
        self._same_holder = same_holder
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._last_tables: dict[str, dict[str, list[str]]] = {}  # namespace -> last table sent
        # Leaves wait up to leave_timeout for pushes: in their own threads, so that a burst of leaves
        # cannot occupy the loop's default executor that heartbeats and reports need.
        self._leave_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="leave")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        registration_pb2_grpc.add_RegistrationServicer_to_server(self, server)

    def close(self) -> None:
        """Release the leave threads (call after the gRPC server stopped)."""
        self._leave_pool.shutdown(wait=False, cancel_futures=True)

    def disconnect_where(self, revoked: Callable[[SpiffeId, int], bool], reason: str) -> int:
        """End every stream whose caller (identity, certificate serial) ``revoked`` selects, with
        PERMISSION_DENIED and ``reason``; return how many. Safe from any thread."""
        with self._lock:
            targets = [s for s in self._streams.values() if revoked(s.identity, s.serial)]
        for st in targets:
            st.loop.call_soon_threadsafe(st.queue.put_nowait, _Kick(reason))
        return len(targets)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # -- name table -------------------------------------------------------------------------------

    def push_name_table(self) -> int:
        """Send every registered stream its namespace's table if it changed; return how many got one.

        Safe from any thread (the provider runs in the caller's thread).
        """
        with self._lock:
            namespaces = sorted({s.entry[0] for s in self._streams.values() if s.entry is not None})
            # A namespace without streams gets no push, so its remembered table could go stale: forget it.
            self._last_tables = {ns: t for ns, t in self._last_tables.items() if ns in namespaces}
        sent = 0
        for ns in namespaces:
            table = _normalized(self._name_table(ns))
            with self._lock:
                if self._last_tables.get(ns) == table:
                    continue
                self._last_tables[ns] = table
                targets = [s for s in self._streams.values() if s.entry is not None and s.entry[0] == ns]
            msg = name_table_message(table)
            for st in targets:
                st.loop.call_soon_threadsafe(st.queue.put_nowait, msg)
            sent += len(targets)
        return sent

    # -- the stream -------------------------------------------------------------------------------

    async def Connect(
        self,
        request_iterator: AsyncIterator[registration_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> None:
        identity, cert = await self._authenticate(context)
        stream = _Stream(asyncio.get_running_loop(), identity, cert.serial_number)
        stream_id = next(self._ids)
        session = f"{self._prefix}-{stream_id}"
        it = aiter(request_iterator)
        first = await anext(it, None)
        if first is None:
            return
        if first.WhichOneof("msg") != "register":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message must be Register")
        reg = await self._check(first.register, identity, cert, context)
        try:
            if reg.namespace != identity.namespace or identity.trust_domain != self._trust_domain:
                raise _Denied(
                    f"certificate identity {identity.uri} may not register in namespace {reg.namespace} "
                    f"(trust domain {self._trust_domain})"
                )
            group = await asyncio.to_thread(self._groups, reg.namespace, reg.group)
            if group is None:
                raise RegistrationRefused(f"WorkloadGroup {reg.namespace}/{reg.group} does not exist")
            self._authorize(identity, reg, group)
            rec = await asyncio.to_thread(self._store.register, group, reg, session, self._same_holder)
        except (_Denied, AddressTaken, LabelConflict) as exc:
            log.warning("refused registration from %s: %s", identity, exc)
            self._on_registration("denied")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except RegistrationRefused as exc:
            log.warning("refused registration from %s: %s", identity, exc)
            self._on_registration("refused")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreWriteError as exc:
            # e.g. the state dir's filesystem is full; RESOURCE_EXHAUSTED is gRPC's code for "out of
            # space". The agent retries with backoff; nothing of the registration was stored.
            log.error("refused registration from %s: %s", identity, exc)
            self._on_registration("unavailable")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        self._on_registration("accepted")
        key = (rec.namespace, rec.name)
        stream.entry = key
        with self._lock:
            self._streams[stream_id] = stream
            table = self._last_tables.get(key[0])
        if self._is_revoked is not None and await asyncio.to_thread(
            self._is_revoked, identity, cert.serial_number
        ):  # revoked while registering: the revocation watcher may have looked before the stream was listed
            stream.queue.put_nowait(_Kick(f"workload {identity} is revoked"))
        try:
            await context.write(
                registration_pb2.ControlMessage(
                    registered=registration_pb2.Registered(
                        entry_name=rec.name,
                        heartbeat_interval_seconds=max(1, round(self._store.settings.heartbeat_interval)),
                    )
                )
            )
            if table is None:
                table = _normalized(await asyncio.to_thread(self._name_table, key[0]))
                with self._lock:
                    self._last_tables.setdefault(key[0], table)
            await context.write(name_table_message(table))
            await self._serve(stream, key, session, it, context)
        finally:
            with self._lock:
                self._streams.pop(stream_id, None)
            await asyncio.to_thread(self._store.disconnected, key[0], key[1], session)

    async def _serve(
        self,
        stream: _Stream,
        key: tuple[str, str],
        session: str,
        it: AsyncIterator[registration_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> None:
        reader = asyncio.create_task(self._read(it, stream.queue))
        try:
            while True:
                item = await stream.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Kick):
                    log.warning("ending the registration stream of %s/%s: %s", key[0], key[1], item.reason)
                    await asyncio.to_thread(self._store.leave, key[0], key[1], session)  # out of EDS now
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, item.reason)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, registration_pb2.ControlMessage):
                    await context.write(item)
                    continue
                assert isinstance(item, registration_pb2.AgentMessage)
                reply = await self._handle(item, key, session, context)
                if reply is not None:
                    await context.write(reply)
        finally:
            reader.cancel()

    async def _handle(
        self,
        msg: registration_pb2.AgentMessage,
        key: tuple[str, str],
        session: str,
        context: grpc.aio.ServicerContext,
    ) -> registration_pb2.ControlMessage | None:
        kind = msg.WhichOneof("msg")
        ns, name = key
        if kind == "heartbeat":
            await asyncio.to_thread(self._store.heartbeat, ns, name, session)
            return registration_pb2.ControlMessage(ack=registration_pb2.Ack(seq=msg.heartbeat.seq))
        if kind == "health":
            h = msg.health
            try:
                await asyncio.to_thread(self._store.report_health, ns, name, session, h.healthy, h.message)
            except Exception as exc:
                log.exception("cannot store the health report of %s/%s", ns, name)
                return _error(f"health report {h.seq} not stored: {exc}")
            return registration_pb2.ControlMessage(ack=registration_pb2.Ack(seq=h.seq))
        if kind == "leave":
            await asyncio.to_thread(self._store.leave, ns, name, session)
            loop = asyncio.get_running_loop()
            pushed = await loop.run_in_executor(self._leave_pool, self._wait_pushed, self._leave_timeout)
            if not pushed:
                return _error(
                    f"the entry {ns}/{name} was removed, but the proxies did not all confirm the change "
                    f"within {self._leave_timeout:g}s"
                )
            return registration_pb2.ControlMessage(leave_confirmed=registration_pb2.LeaveConfirmed())
        if kind == "register":
            again = msg.register
            try:
                same = entry_name(again.group, again.address) == name and again.namespace in ("", ns)
            except RegistrationRefused:
                same = False
            if not same:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a stream registers one entry; open a new stream to register another group or address",
                )
            return None  # a repeated Register for the same entry changes nothing
        return _error(f"unknown message {kind!r}")

    @staticmethod
    async def _read(it: AsyncIterator[registration_pb2.AgentMessage], queue: asyncio.Queue[object]) -> None:
        try:
            async for msg in it:
                queue.put_nowait(msg)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(exc)

    # -- authentication and authorization ----------------------------------------------------------

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> tuple[SpiffeId, x509.Certificate]:
        try:
            identity, cert = require_workload_identity(context, "registration")
        except Unauthenticated as exc:
            await context.abort(exc.code, exc.message)
        if self._is_revoked is not None and await asyncio.to_thread(
            self._is_revoked, identity, cert.serial_number
        ):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"workload {identity} is revoked")
        return identity, cert

    async def _check(
        self,
        msg: registration_pb2.Register,
        identity: SpiffeId,
        cert: x509.Certificate,
        context: grpc.aio.ServicerContext,
    ) -> Registration:
        if not msg.group:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Register.group is required")
        if not msg.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Register.address is required")
        return Registration(
            namespace=msg.namespace or identity.namespace,
            group=msg.group,
            address=msg.address,
            labels=dict(msg.labels),
            ports={k: int(v) for k, v in msg.ports.items()},
            network=msg.network,
            locality=msg.locality,
            hostname=msg.hostname,
            weight=int(msg.weight),
            spiffe_id=identity.uri,
            cert_serial=f"{cert.serial_number:x}",
            cert_expiry=cert.not_valid_after_utc.timestamp(),
        )

    def _authorize(self, identity: SpiffeId, reg: Registration, group: dict[str, Any]) -> None:
        sa = from_spec(WorkloadGroup, group.get("spec") or {}).template.service_account or "default"
        want = SpiffeId(self._trust_domain, reg.namespace, sa)
        if identity != want:
            raise _Denied(
                f"certificate identity {identity.uri} may not register in WorkloadGroup "
                f"{reg.namespace}/{reg.group}, which requires {want.uri}"
            )


class _Denied(Exception):
    pass


def _normalized(table: dict[str, list[str]]) -> dict[str, list[str]]:
    return {h: sorted(a) for h, a in sorted(table.items())}


def _error(message: str) -> registration_pb2.ControlMessage:
    return registration_pb2.ControlMessage(error=registration_pb2.Error(message=message))
