"""The ADS proxy: Envoy's aggregated xDS streams on a Unix socket, forwarded to the control plane.

Both ``StreamAggregatedResources`` (state of the world) and ``DeltaAggregatedResources`` are relayed as
raw bytes in both directions (generic handlers, identity serializers): nothing is re-encoded. A copy of
each message is parsed only to follow the sync state (which nonce was sent, what Envoy ACKed or NACKed).

Each stream from Envoy is paired with one upstream stream over the channel that ``channel_factory()``
returns (the agent's mTLS channel; it is asked again for every attempt, so it may be replaced). While no
response has come back on the pairing, an upstream failure is retried with exponential backoff and
Envoy's requests are replayed from the first one, byte for byte, on the new upstream stream; Envoy
sees nothing but a slow answer. Once responses have flowed, nonces belong to that upstream stream, so an
upstream failure ends Envoy's stream with UNAVAILABLE: Envoy keeps its last config, re-opens the
stream at once (its retry policy in the bootstrap is short; the socket is local) and the new stream
waits in the proxy's backoff until the control plane is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from vmagent.agent.envoy_runtime import serve_grpc_on_socket
from vmagent.common import wire
from vmagent.common.backoff import Backoff
from vmagent.common.errors import VmagentError
from vmagent.common.metrics import Registry

ADS_SERVICE = wire.ADS_SERVICE
SOTW_METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"
CLUSTER_TYPE = wire.CLUSTER
LISTENER_TYPE = wire.LISTENER

ChannelFactory = Callable[[], grpc.Channel]

log = logging.getLogger(__name__)


@dataclass
class TypeState:
    """What the proxy saw of one resource type: the last nonce sent, and Envoy's answers."""

    last_nonce: str = ""
    acked_version: str = ""
    acks: int = 0
    nack: str = ""


class _Downstream:
    """Envoy's requests on one stream. Until the first response is forwarded they are all kept, so that a
    new upstream attempt can replay them from the start; after that only unsent ones are."""

    def __init__(self, request_iterator: Iterable[bytes], observe: Callable[[bytes], None]) -> None:
        self._cond = threading.Condition()
        self._buf: list[bytes] = []
        self._retain = True
        self.closed = False
        self._thread = threading.Thread(
            target=self._read, args=(request_iterator, observe), name="xds-down", daemon=True
        )
        self._thread.start()

    def _read(self, request_iterator: Iterable[bytes], observe: Callable[[bytes], None]) -> None:
        try:
            for msg in request_iterator:
                observe(msg)
                with self._cond:
                    self._buf.append(msg)
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop_retaining(self) -> None:
        with self._cond:
            self._retain = False

    def wait_closed(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self.closed, timeout)
            return self.closed

    def replay(self, attempt_done: threading.Event) -> Iterator[bytes]:
        """Yield every request from the first one, then new ones as they come, until the attempt ends."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self._buf) and not self.closed and not attempt_done.is_set():
                    self._cond.wait(1.0)
                if attempt_done.is_set() or (self.closed and i >= len(self._buf)):
                    return
                msg = self._buf[i]
                i += 1
                if not self._retain:
                    del self._buf[:i]
                    i = 0
            yield msg


class _Session:
    """One Envoy stream and the upstream call currently paired with it."""

    def __init__(self, down: _Downstream) -> None:
        self.down = down
        self._lock = threading.Lock()
        self._call: Any = None

    def set_call(self, call: Any) -> None:
        with self._lock:
            self._call = call

    def close(self) -> None:
        self.down.close()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()


class XdsProxy:
    """Serve ADS to Envoy on ``socket_path`` and relay it to the control plane."""

    def __init__(
        self,
        socket_path: Path,
        channel_factory: ChannelFactory,
        *,
        peer_gid: int | None = None,
        backoff: Backoff | None = None,
        metrics: Registry | None = None,
        max_streams: int = 8,
    ) -> None:
        self._socket_path = socket_path
        self._channel_factory = channel_factory
        self._peer_gid = peer_gid
        self._backoff = backoff or Backoff()
        self._max_streams = max_streams
        self._lock = threading.Lock()
        self._types: dict[str, TypeState] = {}
        self._sessions: set[_Session] = set()
        self._connected = False
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        reg = metrics or Registry()
        self._m_connected = reg.gauge("vmagent_xds_proxy_upstream_connected", "1 while ADS is relayed.")
        self._m_errors = reg.counter("vmagent_xds_proxy_upstream_errors_total", "Upstream ADS failures.")
        self._m_acks = reg.counter(
            "vmagent_xds_acks_total", "xDS responses Envoy accepted, by type.", ("type",)
        )
        self._m_nacks = reg.counter(
            "vmagent_xds_nacks_total", "xDS responses Envoy rejected, by type.", ("type",)
        )

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        handlers = {
            SOTW_METHOD: grpc.stream_stream_rpc_method_handler(self._serve_sotw),
            DELTA_METHOD: grpc.stream_stream_rpc_method_handler(self._serve_delta),
        }
        self._server = serve_grpc_on_socket(
            self._socket_path, self._peer_gid, self._max_streams, "ADS", "xds",
            lambda server: server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
            ),
        )  # fmt: skip
        log.info("xDS proxy listening on %s", self._socket_path)

    def stop(self, grace: float = 1.0) -> None:
        self._stopping.set()
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.close()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None

    # --- state ----------------------------------------------------------------------------------------

    def acked(self) -> bool:
        """True once Envoy has accepted at least one cluster (CDS) and one listener (LDS) response."""
        with self._lock:
            return all(t in self._types and self._types[t].acks > 0 for t in (CLUSTER_TYPE, LISTENER_TYPE))

    @property
    def last_error(self) -> str | None:
        """The most recent upstream failure (None if there was none)."""
        with self._lock:
            return self._last_error

    @property
    def connected(self) -> bool:
        """True while an upstream stream is delivering responses."""
        with self._lock:
            return self._connected

    def sync_state(self) -> dict[str, dict[str, Any]]:
        """Per resource type (short name): the version Envoy last ACKed, ACK count and the last NACK."""
        with self._lock:
            return {
                t.rsplit(".", 1)[-1]: {"acked_version": s.acked_version, "acks": s.acks, "nack": s.nack}
                for t, s in sorted(self._types.items())
            }

    # --- streams --------------------------------------------------------------------------------------

    def _serve_sotw(
        self, request_iterator: Iterable[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._serve(SOTW_METHOD, request_iterator, context)

    def _serve_delta(
        self, request_iterator: Iterable[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._serve(DELTA_METHOD, request_iterator, context)

    def _serve(
        self, method: str, request_iterator: Iterable[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        delta = method == DELTA_METHOD
        down = _Downstream(request_iterator, lambda raw: self._observe_request(delta, raw))
        session = _Session(down)
        with self._lock:
            self._sessions.add(session)
        context.add_callback(session.close)
        try:
            while not down.closed and not self._stopping.is_set():
                attempt_done = threading.Event()
                forwarded = False
                error = "control plane ended the stream"
                try:
                    channel = self._channel_factory()
                    call = channel.stream_stream(f"/{ADS_SERVICE}/{method}")(down.replay(attempt_done))
                    session.set_call(call)
                    for raw in call:
                        if not forwarded:
                            forwarded = True
                            down.stop_retaining()
                            self._backoff.reset()
                            self._set_connected(True)
                        self._observe_response(delta, raw)
                        yield raw
                except grpc.RpcError as exc:
                    code = exc.code() if hasattr(exc, "code") else None
                    details = exc.details() if hasattr(exc, "details") else str(exc)
                    error = f"{getattr(code, 'name', code)}: {details}"
                except VmagentError as exc:
                    error = str(exc)
                finally:
                    attempt_done.set()
                    down.wake()
                    session.set_call(None)
                    if forwarded:
                        self._set_connected(False)
                if down.closed or self._stopping.is_set():
                    return
                self._record_error(error)
                if forwarded:
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details(f"control plane stream ended: {error}")
                    return
                down.wait_closed(self._backoff.next())
        finally:
            session.close()
            with self._lock:
                self._sessions.discard(session)

    # --- observation (on copies) ----------------------------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        with self._lock:
            self._connected = value
        self._m_connected.set(1 if value else 0)
        if value:
            log.info("ADS relayed to the control plane")

    def _record_error(self, error: str) -> None:
        with self._lock:
            self._last_error = error
        self._m_errors.inc()
        log.warning("ADS upstream failed: %s; retrying", error)

    def _observe_response(self, delta: bool, raw: bytes) -> None:
        try:
            resp: Any = (
                discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
            ).FromString(raw)
        except Exception:
            return
        with self._lock:
            self._types.setdefault(resp.type_url, TypeState()).last_nonce = resp.nonce

    def _observe_request(self, delta: bool, raw: bytes) -> None:
        try:
            req: Any = (
                discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
            ).FromString(raw)
        except Exception:
            return
        if not req.response_nonce:
            return
        short = req.type_url.rsplit(".", 1)[-1]
        with self._lock:
            st = self._types.setdefault(req.type_url, TypeState())
            if req.response_nonce != st.last_nonce:
                return
            if req.HasField("error_detail"):
                st.nack = req.error_detail.message
            else:
                st.acks += 1
                st.nack = ""
                st.acked_version = req.response_nonce if delta else req.version_info
        if req.HasField("error_detail"):
            self._m_nacks.inc(type=short)
            log.warning("Envoy rejected %s config: %s", short, req.error_detail.message)
        else:
            self._m_acks.inc(type=short)
