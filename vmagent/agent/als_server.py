"""The AccessLogService Envoy's request-metrics access loggers stream to, over a Unix domain socket.

Envoy opens one ``StreamAccessLogs`` stream per logger configuration and worker thread; its first message
carries the identifier whose ``log_name`` the control plane wrote (reporter, peer table); every message
carries a batch of HTTP or TCP entries, which go to ``RequestMetrics`` (``vmagent/agent/request_metrics.py``).
Envoy expects no answer until it closes the stream. Streams with a log name that is not the control
plane's are read and ignored (counted as errors), so an operator's own gRPC logger cannot break it.

The socket is restricted to the proxy user's group, like the SDS and xDS sockets: only Envoy can feed the
metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from vmagent.agent.envoy_runtime import serve_grpc_on_socket
from vmagent.agent.request_metrics import RequestMetrics, StreamContext, parse_log_name
from vmagent.common.metrics import Registry

log = logging.getLogger(__name__)


class AccessLogServer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """gRPC ``envoy.service.accesslog.v3.AccessLogService`` on ``socket_path`` feeding ``metrics``."""

    def __init__(
        self,
        metrics: RequestMetrics,
        socket_path: Path,
        *,
        peer_gid: int | None = None,
        registry: Registry | None = None,
        max_streams: int = 16,
    ) -> None:
        self._metrics = metrics
        self._socket_path = socket_path
        self._peer_gid = peer_gid
        self._max_streams = max_streams
        self._server: grpc.Server | None = None
        reg = registry or Registry()
        self._bad = reg.counter(
            "vmagent_access_log_stream_errors_total",
            "Access-log streams from Envoy whose log name is not the control plane's request-metrics one.",
        )

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    def start(self) -> None:
        self._server = serve_grpc_on_socket(
            self._socket_path, self._peer_gid, self._max_streams, "access logs", "als",
            lambda server: als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, server),
        )  # fmt: skip
        log.info("access-log service listening on %s", self._socket_path)

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None

    def StreamAccessLogs(
        self, request_iterator: Iterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        ctx: StreamContext | None = None
        refused = False
        for msg in request_iterator:
            if msg.HasField("identifier"):
                try:
                    ctx = parse_log_name(msg.identifier.log_name)
                except ValueError:
                    ctx = None
                    if not refused:
                        refused = True
                        self._bad.inc()
                        log.warning("ignoring access logs named %.80r", msg.identifier.log_name)
            if ctx is None:
                continue
            if msg.HasField("http_logs"):
                self._metrics.record_http(ctx, msg.http_logs.log_entry)
            elif msg.HasField("tcp_logs"):
                self._metrics.record_tcp(ctx, msg.tcp_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()
