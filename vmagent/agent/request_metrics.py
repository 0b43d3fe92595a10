"""Istio's request metrics, aggregated from Envoy's gRPC access-log entries (``vmagent/agent/als_server.py``).

Families (Istio's names, buckets and labels): ``istio_requests_total``,
``istio_request_duration_milliseconds``, ``istio_request_bytes``, ``istio_response_bytes`` (histograms) for
HTTP; ``istio_tcp_sent_bytes_total``, ``istio_tcp_received_bytes_total``,
``istio_tcp_connections_opened_total``, ``istio_tcp_connections_closed_total`` for TCP.

Where each label comes from:

* the local side (``destination_*`` when ``reporter="destination"``, ``source_*`` when ``source``): the
  agent's own identity (its WorkloadGroup, namespace, labels and the SPIFFE id of its certificate);
* ``source_principal`` on the destination side: the URI SAN of the client certificate Envoy verified
  (mesh mTLS); a plaintext client has none and gets ``unknown``, as does ``source_workload``;
* ``source_workload`` / ``_app`` / ``_version`` on the destination side: the control plane's peer table
  (principal -> WorkloadGroup) sent with the access logger's configuration; ``source_workload_namespace``
  also from the principal itself;
* ``destination_service*`` on the source side: the upstream cluster Envoy picked
  (``outbound|PORT|SUBSET|HOST``), or, when it picked none (an injected fault), the request's authority
  as below; on the destination side: the request's authority, but only when it is a mesh hostname the
  control plane gave the agent (``known_hosts``, its DNS name table), else ``unknown``;
* ``connection_security_policy``: ``mutual_tls`` or ``none`` on the destination side, ``unknown`` on the
  source side (as Istio: the client side does not know);
* ``response_code``, ``response_flags`` (Envoy's short codes, ``-`` for none), ``request_protocol``
  (``grpc`` for ``application/grpc`` requests, else ``http``; ``tcp``).

No label is ever taken from a header a client can set, except the authority checked as above.

Cardinality is bounded: at most ``max_series`` label sets per family group (HTTP, TCP); when a new set
would exceed it, the least recently updated set is dropped and ``vmagent_request_metrics_evicted_total``
counts it (its counts then restart from 0 if it comes back, which Prometheus' ``rate()`` treats as a
counter reset).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

UNKNOWN = "unknown"
DEFAULT_MAX_SERIES = 2000
LABEL_CACHE_SIZE = 4096  # distinct label inputs remembered (cleared when full)

# Istio's default buckets.
DURATION_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
    3600000,
)  # fmt: skip
BYTES_BUCKETS = tuple(float(10**i) for i in range(10))

HTTP_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "response_flags",
    "connection_security_policy",
)
TCP_LABELS = tuple(n for n in HTTP_LABELS if n not in ("response_code",))

# Envoy's ResponseFlags fields -> the short codes of %RESPONSE_FLAGS% (Istio's response_flags label).
FLAG_CODES = (
    ("failed_local_healthcheck", "LH"),
    ("no_healthy_upstream", "UH"),
    ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"),
    ("upstream_remote_reset", "UR"),
    ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"),
    ("upstream_overflow", "UO"),
    ("no_route_found", "NR"),
    ("delay_injected", "DI"),
    ("fault_injected", "FI"),
    ("rate_limited", "RL"),
    ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"),
    ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"),
    ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"),
    ("downstream_remote_reset", "DR"),
)


@dataclass(frozen=True)
class LocalWorkload:
    """This agent's workload: the side of every entry it reports."""

    workload: str
    namespace: str
    principal: str
    app: str = ""
    version: str = ""


@dataclass(frozen=True)
class StreamContext:
    """What the control plane said about one access-log stream (its logger's ``log_name``)."""

    reporter: str
    peers: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)


def parse_log_name(text: str) -> StreamContext:
    """The context in a ``log_name`` written by the control plane (``requestmetrics.log_name``).

    Raises ValueError when it is not such a document (a logger configured by someone else).
    """
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("reporter") not in ("source", "destination"):
        raise ValueError("not a vmagent request-metrics log name")
    peers: dict[str, tuple[str, str, str]] = {}
    raw = doc.get("peers") or {}
    if isinstance(raw, dict):
        for principal, value in raw.items():
            if isinstance(value, list) and len(value) == 3:
                peers[str(principal)] = (str(value[0]), str(value[1]), str(value[2]))
    return StreamContext(str(doc["reporter"]), peers)


def spiffe_namespace(principal: str) -> str:
    """The namespace of ``spiffe://TD/ns/NS/sa/SA``, or ``unknown``."""
    parts = principal.split("/")
    if principal.startswith("spiffe://") and len(parts) >= 7 and parts[3] == "ns" and parts[5] == "sa":
        return parts[4] or UNKNOWN
    return UNKNOWN


def peer_principal(common: Any) -> str:
    """The SPIFFE URI SAN of the downstream peer certificate Envoy verified, or ``unknown``."""
    if not common.HasField("tls_properties"):
        return UNKNOWN
    for san in common.tls_properties.peer_certificate_properties.subject_alt_name:
        if san.WhichOneof("san") == "uri" and san.uri.startswith("spiffe://"):
            return str(san.uri)
    return UNKNOWN


def response_flags(common: Any) -> str:
    if not common.HasField("response_flags"):
        return "-"
    flags = common.response_flags
    codes = [code for name, code in FLAG_CODES if getattr(flags, name, False)]
    if flags.HasField("unauthorized_details"):
        codes.append("UAEX")
    return ",".join(codes) or "-"


def service_labels(host: str, default_namespace: str = UNKNOWN) -> tuple[str, str, str]:
    """``(destination_service, _name, _namespace)`` of a hostname: ``NAME.NS.svc...`` gives NAME and NS."""
    if not host:
        return (UNKNOWN, UNKNOWN, UNKNOWN)
    labels = host.split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return (host, labels[0], labels[1])
    return (host, host, default_namespace)


def cluster_service(cluster: str) -> tuple[str, str, str]:
    """The destination service labels of an upstream cluster name (``outbound|PORT|SUBSET|HOST``)."""
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] == "outbound":
        return service_labels(parts[3])
    if cluster:
        return (UNKNOWN, cluster, UNKNOWN)  # PassthroughCluster, BlackHoleCluster: named as Istio does
    return (UNKNOWN, UNKNOWN, UNKNOWN)


def mesh_host(
    host: str, contains: Callable[[str], bool], namespace: str, domain: str = "cluster.local"
) -> str | None:
    """``host`` as a full mesh hostname when ``contains(host)`` (the agent's name table knows it), else None.

    Short forms of ``NAME.NS.svc.DOMAIN`` (``NAME`` in the agent's namespace, ``NAME.NS``, ``NAME.NS.svc``)
    are completed, so one service has one ``destination_service`` however it was called.
    """
    if not host or not contains(host):
        return None
    labels = host.split(".")
    if len(labels) == 1:
        return f"{host}.{namespace}.svc.{domain}"
    if len(labels) == 2:
        return f"{host}.svc.{domain}"
    if len(labels) == 3 and labels[2] == "svc":
        return f"{host}.{domain}"
    return host


def authority_host(authority: str) -> str:
    host = authority.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _seconds(d: Any) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


def duration_ms(common: Any) -> float:
    if common.HasField("duration"):
        return _seconds(common.duration) * 1000.0
    if common.HasField("time_to_last_downstream_tx_byte"):
        return _seconds(common.time_to_last_downstream_tx_byte) * 1000.0
    return 0.0


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self, n: int) -> None:
        self.buckets = [0] * n
        self.count = 0
        self.total = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        for i, bound in enumerate(bounds):
            if value <= bound:
                self.buckets[i] += 1
                break
        self.count += 1
        self.total += value


class _HttpSeries:
    __slots__ = ("duration", "request_bytes", "requests", "response_bytes")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = _Histogram(len(DURATION_BUCKETS_MS))
        self.request_bytes = _Histogram(len(BYTES_BUCKETS))
        self.response_bytes = _Histogram(len(BYTES_BUCKETS))


class _TcpSeries:
    __slots__ = ("closed", "opened", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.opened = 0
        self.closed = 0


class RequestMetrics(Collector):
    """The aggregated families; register it on a ``CollectorRegistry`` (``collect`` renders them)."""

    def __init__(
        self,
        local: Callable[[], LocalWorkload],
        known_hosts: Callable[[str], str | None] = lambda _host: None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        self._local = local
        self._known_hosts = known_hosts
        self._max = max_series
        self._lock = threading.Lock()
        self._http: OrderedDict[tuple[str, ...], _HttpSeries] = OrderedDict()
        self._tcp: OrderedDict[tuple[str, ...], _TcpSeries] = OrderedDict()
        self.evicted = 0
        self.entries = 0
        self._label_cache: dict[tuple[Any, ...], tuple[str, ...]] = {}  # entries' inputs -> label values

    # -- labels ---------------------------------------------------------------------------------------

    def _peer_labels(self, me: LocalWorkload, ctx: StreamContext, common: Any, host: str) -> dict[str, str]:
        mine = {"workload": me.workload, "namespace": me.namespace, "principal": me.principal,
                "app": me.app or UNKNOWN, "version": me.version or UNKNOWN}  # fmt: skip
        if ctx.reporter == "destination":
            principal = peer_principal(common)
            workload, app, version = ctx.peers.get(principal, (UNKNOWN, "", ""))
            peer = {"workload": workload, "namespace": spiffe_namespace(principal), "principal": principal,
                    "app": app or UNKNOWN, "version": version or UNKNOWN}  # fmt: skip
            known = self._known_hosts(host) if host else None
            service = service_labels(known, me.namespace) if known else (UNKNOWN, UNKNOWN, UNKNOWN)
            src, dst = peer, mine
            policy = "mutual_tls" if principal != UNKNOWN else "none"
        else:
            service = cluster_service(common.upstream_cluster)
            if service[0] == UNKNOWN and host:  # no cluster picked (a fault, no route): what was called
                known = self._known_hosts(host)
                service = service_labels(known, me.namespace) if known else service
            dst = {k: UNKNOWN for k in mine}
            dst["namespace"] = service[2]
            src, dst, policy = mine, dst, UNKNOWN
        out = {"reporter": ctx.reporter}
        for side, values in (("source", src), ("destination", dst)):
            out[f"{side}_workload"] = values["workload"]
            out[f"{side}_workload_namespace"] = values["namespace"]
            out[f"{side}_principal"] = values["principal"]
            out[f"{side}_app"] = values["app"]
            out[f"{side}_version"] = values["version"]
        out["destination_service"], out["destination_service_name"], out["destination_service_namespace"] = (
            service
        )
        out["connection_security_policy"] = policy
        return out

    # -- recording ------------------------------------------------------------------------------------

    def record_http(self, ctx: StreamContext, entries: Iterable[Any]) -> None:
        """Count ``HTTPAccessLogEntry`` messages from one stream."""
        me = self._local()
        for entry in entries:
            common = entry.common_properties
            if common.intermediate_log_entry:
                continue
            req, resp = entry.request, entry.response
            ctype = req.request_headers.get("content-type", "")
            code = resp.response_code.value if resp.HasField("response_code") else 0
            principal = peer_principal(common) if ctx.reporter == "destination" else ""
            # Everything the labels are computed from: equal inputs give equal labels (cached).
            raw = (me, ctx.reporter, principal, ctx.peers.get(principal), req.authority, common.upstream_cluster,
                   ctype, code, common.response_flags.SerializeToString())  # fmt: skip
            key = self._label_cache.get(raw)
            if key is None:
                labels = self._peer_labels(me, ctx, common, authority_host(req.authority))
                labels["request_protocol"] = "grpc" if ctype.startswith("application/grpc") else "http"
                labels["response_code"] = str(code)
                labels["response_flags"] = response_flags(common)
                key = tuple(labels[n] for n in HTTP_LABELS)
                if len(self._label_cache) >= LABEL_CACHE_SIZE:
                    self._label_cache.clear()
                self._label_cache[raw] = key
            with self._lock:
                series = self._touch(self._http, key, _HttpSeries)
                series.requests += 1
                series.duration.observe(DURATION_BUCKETS_MS, duration_ms(common))
                series.request_bytes.observe(
                    BYTES_BUCKETS, req.request_headers_bytes + req.request_body_bytes
                )
                series.response_bytes.observe(
                    BYTES_BUCKETS, resp.response_headers_bytes + resp.response_body_bytes
                )
                self.entries += 1

    def record_tcp(self, ctx: StreamContext, entries: Iterable[Any]) -> None:
        """Count ``TCPAccessLogEntry`` messages (one per closed connection) from one stream."""
        me = self._local()
        for entry in entries:
            common = entry.common_properties
            if common.intermediate_log_entry:
                continue
            labels = self._peer_labels(me, ctx, common, "")
            labels["request_protocol"] = "tcp"
            labels["response_flags"] = response_flags(common)
            key = tuple(labels[n] for n in TCP_LABELS)
            conn = entry.connection_properties
            with self._lock:
                series = self._touch(self._tcp, key, _TcpSeries)
                series.opened += 1
                series.closed += 1
                series.received += conn.received_bytes
                series.sent += conn.sent_bytes
                self.entries += 1

    def _touch(self, table: OrderedDict[tuple[str, ...], Any], key: tuple[str, ...], new: Any) -> Any:
        series = table.get(key)
        if series is None:
            while len(table) >= self._max:
                table.popitem(last=False)
                self.evicted += 1
            series = table[key] = new()
        else:
            table.move_to_end(key)
        return series

    # -- exposition -----------------------------------------------------------------------------------

    def series_count(self) -> int:
        with self._lock:
            return len(self._http) + len(self._tcp)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            http = [(k, s.requests, _copy(s.duration), _copy(s.request_bytes), _copy(s.response_bytes))
                    for k, s in self._http.items()]  # fmt: skip
            tcp = [(k, s.sent, s.received, s.opened, s.closed) for k, s in self._tcp.items()]
            evicted, entries = self.evicted, self.entries
        req = CounterMetricFamily("istio_requests", "Requests (Istio standard metric).", labels=HTTP_LABELS)
        dur = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Request duration in milliseconds.", labels=HTTP_LABELS
        )
        rqb = HistogramMetricFamily(
            "istio_request_bytes", "Request sizes (headers and body).", labels=HTTP_LABELS
        )
        rsb = HistogramMetricFamily(
            "istio_response_bytes", "Response sizes (headers and body).", labels=HTTP_LABELS
        )
        for key, count, d, qb, sb in http:
            values = list(key)
            req.add_metric(values, count)
            dur.add_metric(values, _buckets(DURATION_BUCKETS_MS, d), d.total)
            rqb.add_metric(values, _buckets(BYTES_BUCKETS, qb), qb.total)
            rsb.add_metric(values, _buckets(BYTES_BUCKETS, sb), sb.total)
        sent = CounterMetricFamily("istio_tcp_sent_bytes", "Bytes sent to the downstream peer over TCP.",
                                   labels=TCP_LABELS)  # fmt: skip
        recv = CounterMetricFamily(
            "istio_tcp_received_bytes", "Bytes received from the downstream peer over TCP.", labels=TCP_LABELS
        )
        opened = CounterMetricFamily(
            "istio_tcp_connections_opened", "TCP connections opened.", labels=TCP_LABELS
        )
        closed = CounterMetricFamily(
            "istio_tcp_connections_closed", "TCP connections closed.", labels=TCP_LABELS
        )
        for key, s, r, o, c in tcp:
            values = list(key)
            sent.add_metric(values, s)
            recv.add_metric(values, r)
            opened.add_metric(values, o)
            closed.add_metric(values, c)
        evicted_f = CounterMetricFamily(
            "vmagent_request_metrics_evicted",
            "Label sets dropped from the istio_* families to stay within the series limit.",
            value=evicted,
        )
        entries_f = CounterMetricFamily(
            "vmagent_request_metrics_entries",
            "Access-log entries aggregated into istio_* metrics.",
            value=entries,
        )
        yield from (req, dur, rqb, rsb, sent, recv, opened, closed, evicted_f, entries_f)


def _copy(h: _Histogram) -> _Histogram:
    out = _Histogram(len(h.buckets))
    out.buckets = list(h.buckets)
    out.count, out.total = h.count, h.total
    return out


def _buckets(bounds: tuple[float, ...], h: _Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, h.buckets, strict=True):
        running += n
        out.append((_le(bound), running))
    out.append(("+Inf", h.count))
    return out


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
