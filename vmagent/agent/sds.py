"""The SDS server Envoy fetches its certificate and trust bundle from, over a Unix domain socket.

Two secrets are served from the ``IdentityStore``, with Istio's names:

* ``default`` — ``tls_certificate`` with the certificate chain (leaf first) and the private key, inline;
* ``ROOTCA`` — ``validation_context`` whose ``trusted_ca`` is the mesh root.

Each ``StreamSecrets`` stream gets a response when Envoy first asks (or changes the names it asks for);
ACKs and NACKs get none. When the store saves a rotated certificate, every open stream is pushed the new
secrets at once, so Envoy swaps certificates in place without a restart. Key material is never logged.

On a gateway (``files`` given) it also serves certificate files named by the secret — ``file-cert:CERT~KEY``,
``file-root:CA`` and ``kubernetes://NAME[-cacert]`` (see ``vmagent.agent.gateway``) — read by the agent as
root, so Envoy (the proxy user) needs no access to the key. The files behind each stream's secrets are
checked every ``file_poll_interval`` seconds; when one changed (or appeared), that stream is pushed the
new contents. A secret whose files are missing or invalid is left out of the response (with a warning),
so the listener needing it stays warming until the files are fixed.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from vmagent.agent.envoy_runtime import serve_grpc_on_socket
from vmagent.agent.gateway import FileCertificates, is_file_secret
from vmagent.agent.identity import Identity, IdentityStore
from vmagent.common import wire
from vmagent.common.errors import VmagentError
from vmagent.common.metrics import Registry

# Names, not secrets.
SECRET_TYPE_URL = wire.SECRET
DEFAULT_SECRET = wire.SECRET_DEFAULT
ROOT_SECRET = wire.SECRET_ROOTCA

log = logging.getLogger(__name__)


def build_secret(name: str, ident: Identity) -> secret_pb2.Secret | None:
    """The secret called ``name`` made from ``ident``; None for a name this server does not know."""
    if name == DEFAULT_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=ident.chain_pem),
                private_key=base_pb2.DataSource(inline_bytes=ident.key_pem),
            ),
        )
    if name == ROOT_SECRET:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=ident.root_pem)
            ),
        )
    return None


@dataclass(eq=False)
class _Stream:
    """One Envoy StreamSecrets stream: its event queue and what it asked for."""

    peer: str
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    names: tuple[str, ...] = ()
    last_nonce: str = ""
    acked_version: str = ""
    file_fingerprint: tuple[tuple[str, int, int, int], ...] = ()


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """gRPC ``envoy.service.secret.v3.SecretDiscoveryService`` on ``socket_path``.

    ``peer_gid`` is the group allowed to connect (the proxy user's); None keeps the socket private to
    the current user.
    """

    def __init__(
        self,
        identity_store: IdentityStore,
        socket_path: Path,
        *,
        peer_gid: int | None = None,
        metrics: Registry | None = None,
        max_streams: int = 32,
        files: FileCertificates | None = None,
        file_poll_interval: float = 2.0,
    ) -> None:
        self._store = identity_store
        self._files = files
        self._file_poll_interval = file_poll_interval
        self._poll_stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_good: dict[str, secret_pb2.Secret] = {}
        self._socket_path = socket_path
        self._peer_gid = peer_gid
        self._max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._generation = 0
        self._server: grpc.Server | None = None
        reg = metrics or Registry()
        self._pushes = reg.counter("vmagent_sds_pushes_total", "Secret responses sent to Envoy.")
        self._nacks = reg.counter("vmagent_sds_nacks_total", "Secret responses Envoy rejected.")
        self._streams_gauge = reg.gauge("vmagent_sds_streams", "Open SDS streams from Envoy.")
        identity_store.subscribe(self._on_rotation)

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    def start(self) -> None:
        """Listen on the socket (replacing a stale one) and restrict it to the proxy's group."""
        self._server = serve_grpc_on_socket(
            self._socket_path, self._peer_gid, self._max_streams, "SDS", "sds",
            lambda server: sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server),
        )  # fmt: skip
        log.info("SDS listening on %s", self._socket_path)
        if self._files is not None:
            self._poll_stop.clear()
            self._poller = threading.Thread(target=self._poll_files, name="sds-files", daemon=True)
            self._poller.start()

    def stop(self, grace: float = 1.0) -> None:
        self._poll_stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        with self._lock:
            streams = list(self._streams)
        for st in streams:
            st.events.put(("end", None))
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def acked_versions(self) -> list[str]:
        """The version each open stream last acknowledged ("" before its first ACK)."""
        with self._lock:
            return [s.acked_version for s in self._streams]

    def current_version(self) -> str:
        ident = self._store.current()
        with self._lock:
            gen = self._generation
        return f"{gen}-{ident.serial:x}"

    # --- rotation -------------------------------------------------------------------------------------

    def _on_rotation(self, ident: Identity) -> None:
        with self._lock:
            self._generation += 1
            streams = list(self._streams)
        log.info("certificate rotated (serial %x); pushing to %d SDS stream(s)", ident.serial, len(streams))
        for st in streams:
            st.events.put(("rotate", None))

    # --- certificate files (gateways) -----------------------------------------------------------------

    def _file_names(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if is_file_secret(n)] if self._files is not None else []

    def check_files(self) -> int:
        """Push the streams whose certificate files changed since their last response; how many."""
        files = self._files
        if files is None:
            return 0
        with self._lock:
            streams = list(self._streams)
        changed = [
            st
            for st in streams
            if st.last_nonce
            and (names := self._file_names(st.names))
            and files.fingerprint(names) != st.file_fingerprint
        ]
        if changed:
            with self._lock:
                self._generation += 1
            log.info("certificate files changed; pushing to %d SDS stream(s)", len(changed))
            for st in changed:
                st.events.put(("rotate", None))
        return len(changed)

    def _file_secret(self, name: str) -> secret_pb2.Secret | None:
        """The secret from its files now; when they are unusable (say, half-way through a renewal), the
        last good version, so a bad write never takes a working certificate away."""
        assert self._files is not None
        try:
            secret = self._files.build(name)
        except VmagentError as exc:
            with self._lock:
                last = self._last_good.get(name)
            log.warning("cannot serve secret: %s%s", exc, "; serving the last good one" if last else "")
            return last
        with self._lock:
            self._last_good[name] = secret
        return secret

    def _poll_files(self) -> None:
        while not self._poll_stop.wait(self._file_poll_interval):
            try:
                self.check_files()
            except Exception:  # the poller must survive anything a file system does
                log.exception("checking certificate files failed")

    # --- gRPC methods ---------------------------------------------------------------------------------

    def StreamSecrets(
        self, request_iterator: Iterable[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        st = _Stream(peer=context.peer())
        with self._lock:
            self._streams.add(st)
            self._streams_gauge.set(len(self._streams))
        context.add_callback(lambda: st.events.put(("end", None)))
        reader = threading.Thread(
            target=self._read, args=(request_iterator, st), name="sds-read", daemon=True
        )
        reader.start()
        try:
            while True:
                kind, payload = st.events.get()
                if kind == "end":
                    return
                resp = self._handle(st, kind, payload)
                if resp is not None:
                    yield resp
        finally:
            with self._lock:
                self._streams.discard(st)
                self._streams_gauge.set(len(self._streams))

    def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        try:
            return self._response(tuple(request.resource_names))
        except VmagentError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # unreachable: abort raises

    # --- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _read(request_iterator: Iterable[discovery_pb2.DiscoveryRequest], st: _Stream) -> None:
        try:
            for req in request_iterator:
                st.events.put(("request", req))
        except grpc.RpcError:
            pass
        finally:
            st.events.put(("end", None))

    def _handle(self, st: _Stream, kind: str, req: Any) -> discovery_pb2.DiscoveryResponse | None:
        if kind == "rotate":
            return self._send(st, st.names) if st.last_nonce and st.names else None
        assert isinstance(req, discovery_pb2.DiscoveryRequest)
        names = tuple(sorted(req.resource_names))
        if req.response_nonce and req.response_nonce != st.last_nonce:
            return None  # a reply to an older response; the newer one is on its way
        if req.HasField("error_detail"):
            self._nacks.inc()
            log.warning(
                "Envoy rejected secrets %s (version %s): %s",
                ",".join(st.names),
                req.version_info or "-",
                req.error_detail.message,
            )
        elif req.response_nonce:
            st.acked_version = req.version_info
        if names != st.names or not req.response_nonce:
            return self._send(st, names)
        return None

    def _send(self, st: _Stream, names: tuple[str, ...]) -> discovery_pb2.DiscoveryResponse | None:
        file_names = self._file_names(names)
        if self._files is not None and file_names:
            st.file_fingerprint = self._files.fingerprint(file_names)
        try:
            resp = self._response(names)
        except VmagentError as exc:
            log.warning("cannot serve secrets %s: %s", ",".join(names), exc)
            return None
        st.names = names
        st.last_nonce = resp.nonce
        self._pushes.inc()
        log.debug("SDS push %s version %s to %s", ",".join(names), resp.version_info, st.peer)
        return resp

    def _response(self, names: tuple[str, ...]) -> discovery_pb2.DiscoveryResponse:
        ident = self._store.current()
        resp = discovery_pb2.DiscoveryResponse(
            version_info=self.current_version(), type_url=SECRET_TYPE_URL, nonce=secrets.token_hex(16)
        )
        for name in names:
            if self._files is not None and is_file_secret(name):
                file_secret = self._file_secret(name)
                if file_secret is not None:
                    resp.resources.add().Pack(file_secret)
                continue
            secret = build_secret(name, ident)
            if secret is None:
                log.warning("Envoy asked for unknown secret %r; serving only default and ROOTCA", name)
                continue
            resp.resources.add().Pack(secret)
        return resp
