"""Envoy access logs from Istio's MeshConfig ``accessLogFile`` / ``accessLogEncoding`` / ``accessLogFormat``.

As in Istio, an empty or missing ``accessLogFile`` means no access log; ``/dev/stdout`` sends the lines to
Envoy's standard output, which the agent forwards to its own log (journald on a VM). The log is added to
every HTTP connection manager and every tcp_proxy of a proxy's listeners, after translation, so the
translation of each listener stays unaware of it and output without access logs is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from vmagent.common.errors import ConfigError
from vmagent.controlplane.translate.protos import typed

Encoding = Literal["TEXT", "JSON"]

FILE_LOGGER = "envoy.access_loggers.file"

# Istio's default TEXT format (Envoy command operators).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

# Istio's default JSON fields.
DEFAULT_JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
}

MESH_FIELDS = ("accessLogFile", "accessLogEncoding", "accessLogFormat")


@dataclass(frozen=True)
class AccessLogSettings:
    path: str
    encoding: Encoding = "TEXT"
    text_format: str = DEFAULT_TEXT_FORMAT
    json_format: tuple[tuple[str, str], ...] = tuple(DEFAULT_JSON_FORMAT.items())


def parse_access_log(mesh_config: dict[str, Any], source: str) -> AccessLogSettings | None:
    """The access-log settings of a MeshConfig document; None when ``accessLogFile`` is empty or absent."""
    path = mesh_config.get("accessLogFile", "")
    if not isinstance(path, str):
        raise ConfigError(f"{source}: accessLogFile: expected a file path string")
    encoding = mesh_config.get("accessLogEncoding", "TEXT")
    if encoding not in ("TEXT", "JSON"):
        raise ConfigError(f"{source}: accessLogEncoding: {encoding!r} is not TEXT or JSON")
    fmt = mesh_config.get("accessLogFormat", "")
    if not isinstance(fmt, str):
        raise ConfigError(f"{source}: accessLogFormat: expected a string")
    if not path:
        return None
    if not path.startswith("/"):
        raise ConfigError(f"{source}: accessLogFile: {path!r} is not an absolute path")
    if encoding == "TEXT":
        text = fmt if not fmt or fmt.endswith("\n") else fmt + "\n"
        return AccessLogSettings(path, "TEXT", text_format=text or DEFAULT_TEXT_FORMAT)
    if not fmt:
        return AccessLogSettings(path, "JSON")
    try:
        fields = json.loads(fmt)
    except ValueError as exc:
        raise ConfigError(
            f"{source}: accessLogFormat: with JSON encoding it must be a JSON object ({exc})"
        ) from exc
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ConfigError(f"{source}: accessLogFormat: with JSON encoding it must map names to strings")
    return AccessLogSettings(path, "JSON", json_format=tuple((str(k), v) for k, v in fields.items()))


def access_log(settings: AccessLogSettings) -> accesslog_pb2.AccessLog:
    """Envoy's file access logger for ``settings``."""
    fmt = sfs.SubstitutionFormatString()
    if settings.encoding == "JSON":
        st = struct_pb2.Struct()
        st.update(dict(settings.json_format))
        fmt.json_format.CopyFrom(st)
    else:
        fmt.text_format_source.inline_string = settings.text_format
    cfg = file_pb2.FileAccessLog(path=settings.path, log_format=fmt)
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=typed(cfg))


def with_access_logs(listeners: dict[str, Message], settings: AccessLogSettings) -> dict[str, Message]:
    """Copies of ``listeners`` whose HTTP connection managers and tcp_proxies log to ``settings``.

    The inputs are shared between proxies and are not changed.
    """
    entry = access_log(settings)
    return with_loggers(listeners, lambda _listener: (entry, entry))


# For one listener: the access log its HTTP connection managers get, and the one its tcp_proxies get.
LoggersFor = Callable[[listener_pb2.Listener], tuple[accesslog_pb2.AccessLog, accesslog_pb2.AccessLog]]


def with_loggers(listeners: dict[str, Message], loggers_for: LoggersFor) -> dict[str, Message]:
    """Copies of ``listeners`` with ``loggers_for(listener)`` appended to every HTTP connection manager and
    tcp_proxy of every filter chain (the default one included). The inputs are not changed."""
    out: dict[str, Message] = {}
    for name, msg in listeners.items():
        if not isinstance(msg, listener_pb2.Listener):
            out[name] = msg
            continue
        http_entry, tcp_entry = loggers_for(msg)
        copy = listener_pb2.Listener()
        copy.CopyFrom(msg)
        chains = [*copy.filter_chains]
        if copy.HasField("default_filter_chain"):
            chains.append(copy.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                _append_logger(f.typed_config, http_entry, tcp_entry)
        out[name] = copy
    return out


def _append_logger(
    config: Any, http_entry: accesslog_pb2.AccessLog, tcp_entry: accesslog_pb2.AccessLog
) -> None:
    for cls, entry in ((hcm.HttpConnectionManager, http_entry), (tcp_proxy_pb2.TcpProxy, tcp_entry)):
        if config.Is(cls.DESCRIPTOR):
            inner = cls()
            config.Unpack(inner)
            inner.access_log.append(entry)
            config.CopyFrom(typed(inner))
            return
