"""The ADS proxy between a gRPC client on its Unix socket (standing in for Envoy) and a raw upstream."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from tests.harness import free_port, wait_for
from vmagent.agent.xds_proxy import ADS_SERVICE, CLUSTER_TYPE, LISTENER_TYPE, Backoff, XdsProxy


def _field(num: int, value: bytes) -> bytes:
    """One length-delimited protobuf field; fields written by hand keep whatever order we choose."""
    tag, length = (num << 3) | 2, len(value)
    out = bytearray([tag])
    while True:
        b = length & 0x7F
        length >>= 7
        out.append(b | (0x80 if length else 0))
        if not length:
            return bytes(out) + value


def raw_response(type_url: str, version: str, nonce: str) -> bytes:
    # Deliberately out of field order (type_url=4, nonce=5, version_info=1): a re-encoding would reorder it.
    return _field(4, type_url.encode()) + _field(5, nonce.encode()) + _field(1, version.encode())


class RawControlPlane:
    """Upstream ADS that records request bytes and answers each initial request with a raw response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self._server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.stream_stream_rpc_method_handler(self._stream)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, {"StreamAggregatedResources": handler}),)
        )
        assert server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait(5)

    def _stream(self, request_iterator: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in request_iterator:
            with self.lock:
                self.received.append(raw)
            req = discovery_pb2.DiscoveryRequest.FromString(raw)
            if not req.response_nonce:
                yield raw_response(req.type_url, "v1", f"n-{req.type_url[-7:]}")


@pytest.fixture
def runtime() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vma-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def env(runtime: Path) -> Iterator[tuple[RawControlPlane, XdsProxy, grpc.Channel]]:
    cp = RawControlPlane(free_port())
    upstream = grpc.insecure_channel(
        f"127.0.0.1:{cp.port}",
        options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)],
    )
    proxy = XdsProxy(runtime / "xds.sock", lambda: upstream, backoff=Backoff(0.05, 0.3))
    proxy.start()
    downstream = grpc.insecure_channel(f"unix:{runtime / 'xds.sock'}")
    yield cp, proxy, downstream
    downstream.close()
    proxy.stop()
    cp.stop()
    upstream.close()


class Client:
    """A raw-bytes ADS stream on the proxy's socket."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue()
        method = channel.stream_stream(f"/{ADS_SERVICE}/StreamAggregatedResources")
        self.call = method(self._gen(), timeout=30)

    def _gen(self) -> Iterator[bytes]:
        while (m := self.q.get(timeout=30)) is not None:
            yield m

    def send(self, raw: bytes) -> None:
        self.q.put(raw)

    def recv(self) -> bytes:
        return bytes(next(self.call))

    def close(self) -> None:
        self.q.put(None)
        self.call.cancel()


def _request(type_url: str, nonce: str = "", version: str = "", error: str = "") -> bytes:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req.SerializeToString()


def test_bytes_pass_through_unchanged_and_acks_are_tracked(
    env: tuple[RawControlPlane, XdsProxy, grpc.Channel],
) -> None:
    cp, proxy, downstream = env
    cp.start()
    client = Client(downstream)
    try:
        # A request with fields out of order (type_url=4 before resource_names=3): forwarded as is.
        odd_request = _field(4, CLUSTER_TYPE.encode()) + _field(3, b"c1")
        client.send(odd_request)
        resp = client.recv()
        assert resp == raw_response(CLUSTER_TYPE, "v1", f"n-{CLUSTER_TYPE[-7:]}")
        assert cp.received[0] == odd_request
        assert not proxy.acked()
        client.send(_request(CLUSTER_TYPE, nonce=f"n-{CLUSTER_TYPE[-7:]}", version="v1"))
        client.send(_request(LISTENER_TYPE))
        assert client.recv() == raw_response(LISTENER_TYPE, "v1", f"n-{LISTENER_TYPE[-7:]}")
        assert not proxy.acked()  # LDS not acknowledged yet
        client.send(_request(LISTENER_TYPE, nonce=f"n-{LISTENER_TYPE[-7:]}", error="bad listener"))
        wait_for(lambda: proxy.sync_state().get("Listener", {}).get("nack") == "bad listener", 5, what="NACK")
        assert not proxy.acked()
        client.send(_request(LISTENER_TYPE, nonce=f"n-{LISTENER_TYPE[-7:]}", version="v1"))
        wait_for(proxy.acked, 5, what="CDS and LDS acknowledged")
        assert proxy.sync_state()["Cluster"]["acked_version"] == "v1"
        assert proxy.connected
    finally:
        client.close()


def test_requests_are_replayed_when_the_control_plane_comes_up_late(
    env: tuple[RawControlPlane, XdsProxy, grpc.Channel],
) -> None:
    cp, proxy, downstream = env
    client = Client(downstream)
    try:
        first = _request(CLUSTER_TYPE)
        client.send(first)
        wait_for(lambda: proxy.last_error is not None, 5, what="upstream failure noticed")
        assert "UNAVAILABLE" in (proxy.last_error or "")
        assert not proxy.connected
        cp.start()
        resp = client.recv()  # the same Envoy stream, answered once the proxy got through
        assert resp == raw_response(CLUSTER_TYPE, "v1", f"n-{CLUSTER_TYPE[-7:]}")
        assert cp.received == [first]
    finally:
        client.close()


def test_downstream_stream_ends_unavailable_when_upstream_dies_after_responses(
    env: tuple[RawControlPlane, XdsProxy, grpc.Channel],
) -> None:
    cp, proxy, downstream = env
    cp.start()
    client = Client(downstream)
    try:
        client.send(_request(CLUSTER_TYPE))
        client.recv()
        cp.stop()
        with pytest.raises(grpc.RpcError) as info:
            client.recv()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert not proxy.connected
    finally:
        client.close()
