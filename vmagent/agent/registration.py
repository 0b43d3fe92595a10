"""The agent's end of the registration stream: register, relay health, heartbeat, leave.

:class:`RegistrationClient` keeps one ``Registration/Connect`` stream open from its own thread:

* every (re)connect sends ``Register`` first, then the current health if there is one;
* a heartbeat goes out every ``heartbeat_interval`` seconds (the control plane's ``Registered`` may
  change the interval);
* ``set_health`` sends a transition at once and resends it every ``ack_timeout`` seconds, on this
  stream or the next, until the control plane acknowledges it;
* a stream that brings nothing back (no Ack of anything) for ``stall_timeout`` seconds is cancelled and
  reopened, so a half-open connection does not silently stop the relay;
* failures reconnect with exponential backoff and jitter (``backoff_initial`` doubling up to
  ``backoff_max``), reset after a successful registration;
* ``leave(timeout)`` sends ``Leave`` and waits for ``LeaveConfirmed`` (the control plane sends it once
  the endpoint left EDS everywhere); after it the client stops and does not reconnect.

Name tables pushed by the control plane are handed to ``on_name_table`` (in the client's thread).
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from vmagent.api import registration_pb2, registration_pb2_grpc

log = logging.getLogger(__name__)

ChannelFactory = Callable[[], grpc.Channel]
OnNameTable = Callable[[dict[str, list[str]]], None]


@dataclass(frozen=True)
class RegisterInfo:
    """What the agent registers (see ``registration.proto``'s Register)."""

    group: str
    address: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    hostname: str = ""
    weight: int = 0

    def message(self) -> registration_pb2.AgentMessage:
        return registration_pb2.AgentMessage(
            register=registration_pb2.Register(
                namespace=self.namespace,
                group=self.group,
                address=self.address,
                labels=self.labels,
                ports=self.ports,
                network=self.network,
                locality=self.locality,
                hostname=self.hostname,
                weight=self.weight,
            )
        )


def detect_address(host: str, port: int) -> str:
    """The local address this host uses to reach ``host:port`` (no packet is sent)."""
    family, _type, _proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        return str(s.getsockname()[0]).split("%", 1)[0]


class _Session:
    """One stream attempt."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.call: Any = None
        self.last_rx = time.monotonic()
        self.heartbeat_sent = 0.0
        self.health_sent: float | None = None
        self.leave_sent = False
        self.stalled = False


class RegistrationClient:
    """Keeps the agent registered; thread-safe; see the module docstring for the behaviour."""

    def __init__(
        self,
        channel_factory: ChannelFactory,
        register_info: RegisterInfo,
        on_name_table: OnNameTable | None = None,
        heartbeat_interval: float = 5.0,
        ack_timeout: float = 5.0,
        stall_timeout: float | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        self._channel_factory = channel_factory
        self._info = register_info
        self._on_name_table = on_name_table
        self._heartbeat_interval = heartbeat_interval
        self._ack_timeout = ack_timeout
        self._stall_timeout = stall_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._left = threading.Event()
        self._leave_requested = False
        self._leave_ok = False
        self._seq = itertools.count(1)
        self._health: tuple[bool, str] | None = None
        self._health_seqs: set[int] = set()
        self._health_acked = False
        self._session: _Session | None = None
        self._connected = False
        self._connected_since: float | None = None
        self._entry_name = ""
        self._last_error: str | None = None
        self._registrations = 0
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)

    # -- public -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a stream is open and the control plane confirmed the registration on it."""
        with self._lock:
            return self._connected

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self._last_error

    @property
    def entry_name(self) -> str:
        with self._lock:
            return self._entry_name

    @property
    def health_acked(self) -> bool:
        """True when the control plane acknowledged the current health (or none was set)."""
        with self._lock:
            return self._health is None or self._health_acked

    @property
    def registrations(self) -> int:
        """How many times the control plane confirmed a Register (1 + reconnects)."""
        with self._lock:
            return self._registrations

    def status(self) -> dict[str, Any]:
        with self._lock:
            since = self._connected_since
            return {
                "connected": self._connected,
                "connected_since": (time.time() - (time.monotonic() - since)) if since else None,
                "entry_name": self._entry_name,
                "last_error": self._last_error,
                "health": None
                if self._health is None
                else {"healthy": self._health[0], "message": self._health[1], "acked": self._health_acked},
                "left": self._left.is_set(),
            }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the stream and end the thread (no Leave: the control plane sees a disconnect)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            session = self._session
        if session is not None and session.call is not None:
            session.call.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def set_health(self, healthy: bool, message: str = "") -> None:
        """Report a health state: sent at once, retried until acknowledged, repeated after reconnects."""
        with self._lock:
            if self._health is not None and self._health[0] == healthy and self._health_acked:
                self._health = (healthy, message)
                return  # the control plane already has this state
            self._health = (healthy, message)
            self._health_seqs = set()
            self._health_acked = False
            if self._session is not None:
                self._session.health_sent = None
        self._wake.set()

    def leave(self, timeout: float) -> bool:
        """Deregister and wait until the control plane confirms the endpoint left EDS; True if it did.

        Safe to repeat: after a confirmed leave it returns True at once.
        """
        with self._lock:
            if self._left.is_set():
                return self._leave_ok
            self._leave_requested = True
        self._wake.set()
        return self._left.wait(timeout) and self._leave_ok

    # -- the stream -------------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set() and not self._left.is_set():
            session = _Session()
            with self._lock:
                self._session = session
            error = "the control plane ended the stream"
            try:
                stub = registration_pb2_grpc.RegistrationStub(self._channel_factory())
                session.call = stub.Connect(self._requests(session))
                for msg in session.call:
                    if self._handle(msg, session):
                        attempt = 0
                    if self._left.is_set():
                        break
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                error = (
                    f"{code.name if code else 'ERROR'}: {exc.details() if hasattr(exc, 'details') else exc}"
                )
            except Exception as exc:
                log.exception("registration stream failed")
                error = str(exc) or type(exc).__name__
            finally:
                session.done.set()
                self._wake.set()
                if session.call is not None:
                    session.call.cancel()
                with self._lock:
                    self._connected = False
                    self._connected_since = None
            if self._stop.is_set() or self._left.is_set():
                break
            if session.stalled:
                error = "no answer from the control plane within the stall timeout"
            with self._lock:
                self._last_error = error
            attempt += 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            log.warning("registration stream: %s; reconnecting in %.1fs", error, delay)
            self._stop.wait(delay)

    def _handle(self, msg: registration_pb2.ControlMessage, session: _Session) -> bool:
        """Process one control message; True when it confirmed a registration."""
        session.last_rx = time.monotonic()
        kind = msg.WhichOneof("msg")
        if kind == "registered":
            with self._lock:
                self._connected = True
                self._connected_since = time.monotonic()
                self._entry_name = msg.registered.entry_name
                self._registrations += 1
                self._last_error = None
                if msg.registered.heartbeat_interval_seconds:
                    self._heartbeat_interval = float(msg.registered.heartbeat_interval_seconds)
            log.info("registered as WorkloadEntry %s", msg.registered.entry_name)
            return True
        if kind == "ack":
            with self._lock:
                if msg.ack.seq in self._health_seqs:
                    self._health_acked = True
        elif kind == "name_table":
            table = {h: list(a.addresses) for h, a in msg.name_table.hosts.items()}
            if self._on_name_table is not None:
                try:
                    self._on_name_table(table)
                except Exception:
                    log.exception("name table callback failed")
        elif kind == "leave_confirmed":
            with self._lock:
                self._leave_ok = True
            log.info("left the mesh: the control plane confirmed the endpoint is out of EDS")
            self._left.set()
        elif kind == "error":
            with self._lock:
                self._last_error = msg.error.message
                leaving = session.leave_sent
            log.warning("control plane: %s", msg.error.message)
            if leaving:
                self._left.set()  # the entry is gone but the push was not confirmed: leave(...) is False
        return False

    def _requests(self, session: _Session) -> Iterator[registration_pb2.AgentMessage]:
        yield self._info.message()
        session.heartbeat_sent = session.last_rx = time.monotonic()
        while not session.done.is_set() and not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            out: list[registration_pb2.AgentMessage] = []
            with self._lock:
                interval = self._heartbeat_interval
                if self._health is not None and not self._health_acked:
                    sent = session.health_sent
                    if sent is None or now - sent >= self._ack_timeout:
                        seq = next(self._seq)
                        self._health_seqs.add(seq)
                        session.health_sent = now
                        healthy, message = self._health
                        out.append(
                            registration_pb2.AgentMessage(
                                health=registration_pb2.HealthReport(
                                    seq=seq, healthy=healthy, message=message
                                )
                            )
                        )
                if self._leave_requested and not session.leave_sent:
                    session.leave_sent = True
                    out.append(registration_pb2.AgentMessage(leave=registration_pb2.Leave()))
                if now - session.heartbeat_sent >= interval:
                    session.heartbeat_sent = now
                    out.append(
                        registration_pb2.AgentMessage(
                            heartbeat=registration_pb2.Heartbeat(seq=next(self._seq))
                        )
                    )
                health_due = session.health_sent if not self._health_acked else None
            stall = self._stall_timeout or 3 * interval + self._ack_timeout
            if now - session.last_rx > stall and session.call is not None:
                log.warning(
                    "registration stream: nothing from the control plane for %.0fs", now - session.last_rx
                )
                session.stalled = True
                session.call.cancel()
                return
            yield from out
            deadline = session.heartbeat_sent + interval
            if health_due is not None:
                deadline = min(deadline, health_due + self._ack_timeout)
            self._wake.wait(max(0.01, min(deadline - time.monotonic(), 1.0)))
