"""Helpers for the Envoy tests (no tests here): a minimal ADS control plane, a backend, a TLS client.

The control plane serves one STATIC cluster ``backend`` and one listener ``ingress`` that terminates TLS
with the SDS secrets ``default`` (its certificate) and ``ROOTCA`` (client validation context), so Envoy
must fetch both from the agent before the listener goes live. Every push bumps the version, which the
listener's route reports to clients in the ``x-config-version`` response header.
"""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from cryptography import x509
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def _pack(msg: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            resource_api_version=config_source_pb2.V3,
            api_config_source=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name="sds-grpc")
                    )
                ],
            ),
        ),
    )


def _addr(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def build_resources(version: int, listen_port: int, backend_port: int) -> dict[str, list[Any]]:
    cluster = cluster_pb2.Cluster(
        name="backend",
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name="backend",
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=_addr("127.0.0.1", backend_port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    route_config = route_pb2.RouteConfiguration(
        name="ingress",
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster="backend"),
                        response_headers_to_add=[
                            base_pb2.HeaderValueOption(
                                header=base_pb2.HeaderValue(key="x-config-version", value=str(version))
                            )
                        ],
                    )
                ],
            )
        ],
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress",
        route_config=route_config,
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))
        ],
    )
    tls = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds("default")],
            validation_context_sds_secret_config=_sds("ROOTCA"),
        )
    )
    listener = listener_pb2.Listener(
        name="ingress",
        address=_addr("127.0.0.1", listen_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm)
                    )
                ],
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=_pack(tls)
                ),
            )
        ],
    )
    return {CLUSTER_TYPE: [cluster], LISTENER_TYPE: [listener]}


@dataclass(eq=False)
class _Stream:
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    nonces: dict[str, str] = field(default_factory=dict)


class FakeControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """A small ADS server (state of the world and delta) on 127.0.0.1:``port``."""

    def __init__(self, port: int, listen_port: int, backend_port: int) -> None:
        self.port = port
        self.listen_port = listen_port
        self.backend_port = backend_port
        self.version = 1
        self.hold = threading.Event()  # while set, requests get no response
        self.lock = threading.Lock()
        self.acks: list[tuple[str, str]] = []
        self.nacks: list[tuple[str, str]] = []
        self.streams_opened = 0
        self._streams: set[_Stream] = set()
        self._server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        assert server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        server.start()
        self._server = server

    def stop(self) -> None:
        with self.lock:
            streams = list(self._streams)
        for st in streams:
            st.events.put(("end", None))
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None

    def push(self) -> int:
        """Bump the version and send the new resources on every open stream."""
        with self.lock:
            self.version += 1
            streams = list(self._streams)
        for st in streams:
            st.events.put(("push", None))
        return self.version

    def release(self) -> None:
        self.hold.clear()
        with self.lock:
            streams = list(self._streams)
        for st in streams:
            st.events.put(("push", None))

    def acked_versions(self, type_url: str) -> list[str]:
        with self.lock:
            return [v for t, v in self.acks if t == type_url]

    def _resources(self) -> tuple[str, dict[str, list[Any]]]:
        with self.lock:
            v = self.version
        return str(v), build_resources(v, self.listen_port, self.backend_port)

    def _run(
        self, request_iterator: Iterable[Any], context: grpc.ServicerContext
    ) -> Iterator[tuple[str, Any]]:
        st = _Stream()
        with self.lock:
            self._streams.add(st)
            self.streams_opened += 1
        context.add_callback(lambda: st.events.put(("end", None)))

        def read() -> None:
            try:
                for req in request_iterator:
                    st.events.put(("req", req))
            except grpc.RpcError:
                pass
            st.events.put(("end", None))

        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                kind, payload = st.events.get()
                if kind == "end":
                    return
                yield kind, (st, payload)
        finally:
            with self.lock:
                self._streams.discard(st)

    def _responses(self, request_iterator: Any, context: Any, delta: bool) -> Iterator[Any]:
        """For each response due on a stream: (version, resources, type_url, new nonce).

        ACKs and NACKs (matched by nonce) are recorded, keyed by version (SotW) or nonce (delta).
        """
        for kind, (st, req) in self._run(request_iterator, context):
            types: list[str] = []
            if kind == "req":
                if req.response_nonce:
                    if req.response_nonce != st.nonces.get(req.type_url):
                        continue
                    key = req.response_nonce if delta else req.version_info
                    with self.lock:
                        (self.nacks if req.HasField("error_detail") else self.acks).append(
                            (req.type_url, key)
                        )
                    continue
                st.nonces.setdefault(req.type_url, "")
                types = [req.type_url]
            else:
                types = list(st.nonces)
            if self.hold.is_set():
                continue
            version, resources = self._resources()
            for t in types:
                if t not in resources:
                    continue
                nonce = uuid.uuid4().hex
                st.nonces[t] = nonce
                yield version, resources, t, nonce

    def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for version, resources, t, nonce in self._responses(request_iterator, context, delta=False):
            yield discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=t, nonce=nonce, resources=[_pack(r) for r in resources[t]]
            )

    def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for version, resources, t, nonce in self._responses(request_iterator, context, delta=True):
            yield discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=version,
                type_url=t,
                nonce=nonce,
                resources=[
                    discovery_pb2.Resource(name=r.name, version=version, resource=_pack(r))
                    for r in resources[t]
                ],
            )


class Backend:
    """A plain HTTP server on loopback answering every GET with 200 ``backend``."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/slow":
                    time.sleep(0.8)  # a slow request, in flight while Envoy is asked to stop
                body = b"backend"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class TlsReply:
    status: int
    body: bytes
    config_version: str
    peer_serial: int


def tls_get(port: int, root_pem: bytes, timeout: float = 2.0, path: str = "/") -> TlsReply:
    """GET / over TLS from Envoy's ingress listener, trusting only the test root; records the peer cert."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    ctx.check_hostname = False  # the workload certificate names a SPIFFE id, not a host
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        sock = conn.sock  # http.client drops it after a "Connection: close" response
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        resp = conn.getresponse()
        body = resp.read()
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        return TlsReply(resp.status, body, resp.getheader("x-config-version") or "", serial)
    finally:
        conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
