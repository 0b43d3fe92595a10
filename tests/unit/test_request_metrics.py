"""The agent's aggregation of Envoy's gRPC access-log entries into Istio's request metrics.

Entries are real ``envoy.data.accesslog.v3`` messages as Envoy sends them; the last test streams them to
the real AccessLogService over a Unix socket with grpcio, as Envoy's gRPC logger does.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import duration_pb2, wrappers_pb2

from tests.promtool import promtool_check, sample
from vmagent.agent.als_server import AccessLogServer
from vmagent.agent.request_metrics import (
    LocalWorkload,
    RequestMetrics,
    StreamContext,
    mesh_host,
    parse_log_name,
    spiffe_namespace,
)
from vmagent.common.metrics import Registry
from vmagent.controlplane.translate.requestmetrics import log_name

WEB = "spiffe://cluster.local/ns/demo/sa/web"
API = "spiffe://cluster.local/ns/demo/sa/api"
HOSTS = {"api.demo.svc.cluster.local", "api", "api.demo"}
MS_LINT = 'istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
DEST = StreamContext("destination", {WEB: ("web", "web", "v1")})
SRC = StreamContext("source")


def total(reg: Registry, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        s.value
        for metric in reg.collectors.collect()
        for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def agent(max_series: int = 100) -> tuple[RequestMetrics, Registry]:
    reg = Registry()
    m = RequestMetrics(
        lambda: LocalWorkload("api", "demo", API, "api", ""),
        lambda h: mesh_host(h, HOSTS.__contains__, "demo"),
        max_series=max_series,
    )
    reg.collectors.register(m)
    return m, reg


def http_entry(
    code: int = 200,
    peer: str | None = WEB,
    authority: str = "api.demo.svc.cluster.local:8080",
    cluster: str = "inbound|8080||",
    ms: int = 3,
    headers: dict[str, str] | None = None,
) -> al.HTTPAccessLogEntry:
    common = al.AccessLogCommon(
        upstream_cluster=cluster, duration=duration_pb2.Duration(nanos=ms * 1_000_000)
    )
    if peer is not None:
        san = al.TLSProperties.CertificateProperties.SubjectAltName(uri=peer)
        common.tls_properties.peer_certificate_properties.subject_alt_name.append(san)
    return al.HTTPAccessLogEntry(
        common_properties=common,
        request=al.HTTPRequestProperties(
            authority=authority,
            request_headers_bytes=100,
            request_body_bytes=20,
            request_headers=headers or {},
        ),
        response=al.HTTPResponseProperties(
            response_code=wrappers_pb2.UInt32Value(value=code),
            response_headers_bytes=80,
            response_body_bytes=5,
        ),
    )


def test_destination_names_the_peer_from_its_certificate_and_the_peer_table() -> None:
    m, reg = agent()
    m.record_http(DEST, [http_entry(), http_entry(), http_entry(code=503)])
    labels = {
        "reporter": "destination",
        "source_workload": "web",
        "source_workload_namespace": "demo",
        "source_principal": WEB,
        "source_app": "web",
        "source_version": "v1",
        "destination_workload": "api",
        "destination_workload_namespace": "demo",
        "destination_principal": API,
        "destination_app": "api",
        "destination_version": "unknown",
        "destination_service": "api.demo.svc.cluster.local",
        "destination_service_name": "api",
        "destination_service_namespace": "demo",
        "request_protocol": "http",
        "response_code": "200",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    assert total(reg, "istio_requests_total", **labels) == 2
    assert total(reg, "istio_requests_total", **{**labels, "response_code": "503"}) == 1
    assert total(reg, "istio_request_duration_milliseconds_count", **labels) == 2
    assert total(reg, "istio_request_duration_milliseconds_bucket", **labels, le="5.0") == 2
    assert total(reg, "istio_request_duration_milliseconds_bucket", **labels, le="1.0") == 0
    assert total(reg, "istio_request_bytes_sum", **labels) == 240
    assert total(reg, "istio_response_bytes_sum", **labels) == 170


def test_plaintext_is_unknown_and_headers_change_nothing() -> None:
    m, reg = agent()
    forged = {
        "x-forwarded-client-cert": f"By={API};URI={WEB}",
        "x-istio-attributes": "source.principal=" + WEB,
        "baggage": "k8s.deployment.name=web",
    }
    m.record_http(DEST, [http_entry(peer=None, headers=forged)])
    text = reg.render()
    assert sample(text, "istio_requests_total", source_principal="unknown", source_workload="unknown",
                  source_workload_namespace="unknown", connection_security_policy="none") == 1  # fmt: skip
    assert sample(text, "istio_requests_total", source_principal=WEB) is None
    assert sample(text, "istio_requests_total", source_workload="web") is None


def test_an_unlisted_principal_keeps_its_namespace_but_no_workload() -> None:
    m, reg = agent()
    m.record_http(DEST, [http_entry(peer="spiffe://cluster.local/ns/shop/sa/cart")])
    assert total(reg, "istio_requests_total", source_workload="unknown", source_workload_namespace="shop",
                     source_principal="spiffe://cluster.local/ns/shop/sa/cart") == 1  # fmt: skip


def test_destination_service_only_from_a_known_mesh_authority() -> None:
    m, reg = agent()
    m.record_http(DEST, [http_entry(authority="api:8080"), http_entry(authority="evil.example.com")])
    assert total(reg, "istio_requests_total", destination_service="api.demo.svc.cluster.local") == 1
    assert (
        total(reg, "istio_requests_total", destination_service="unknown", destination_service_name="unknown")
        == 1
    )
    assert "evil" not in reg.render()


def test_source_side_reads_the_cluster_and_falls_back_to_the_authority() -> None:
    m, reg = agent()
    fault = http_entry(code=503, peer=None, cluster="")
    fault.common_properties.response_flags.fault_injected = True
    m.record_http(SRC, [http_entry(peer=None, cluster="outbound|8080|v1|api.demo.svc.cluster.local"), fault])
    me = {"reporter": "source", "source_workload": "api", "source_principal": API,
          "connection_security_policy": "unknown", "destination_service": "api.demo.svc.cluster.local",
          "destination_service_name": "api", "destination_service_namespace": "demo"}  # fmt: skip
    assert total(reg, "istio_requests_total", **me, response_code="200", response_flags="-") == 1
    assert total(reg, "istio_requests_total", **me, response_code="503", response_flags="FI") == 1


def test_grpc_is_told_by_content_type() -> None:
    m, reg = agent()
    m.record_http(DEST, [http_entry(headers={"content-type": "application/grpc+proto"})])
    assert total(reg, "istio_requests_total", request_protocol="grpc") == 1


def test_tcp_connections_and_bytes() -> None:
    m, reg = agent()
    common = al.AccessLogCommon(upstream_cluster="inbound|9000||")
    entry = al.TCPAccessLogEntry(
        common_properties=common,
        connection_properties=al.ConnectionProperties(received_bytes=70, sent_bytes=9),
    )
    m.record_tcp(DEST, [entry, entry])
    labels = {"reporter": "destination", "source_principal": "unknown", "request_protocol": "tcp"}
    assert total(reg, "istio_tcp_connections_opened_total", **labels) == 2
    assert total(reg, "istio_tcp_connections_closed_total", **labels) == 2
    assert total(reg, "istio_tcp_received_bytes_total", **labels) == 140
    assert total(reg, "istio_tcp_sent_bytes_total", **labels) == 18


def test_series_are_capped_and_evictions_counted() -> None:
    m, reg = agent(max_series=3)
    for code in (200, 201, 202, 203, 204):
        m.record_http(DEST, [http_entry(code=code)])
    assert m.series_count() == 3
    assert total(reg, "vmagent_request_metrics_evicted_total") == 2
    assert total(reg, "istio_requests_total", response_code="200") == 0  # the least recently used went first
    assert total(reg, "istio_requests_total", response_code="204") == 1


def test_exposition_passes_promtool() -> None:
    m, reg = agent()
    m.record_http(DEST, [http_entry(), http_entry(peer=None)])
    m.record_http(SRC, [http_entry(cluster="outbound|8080||api.demo.svc.cluster.local")])
    m.record_tcp(DEST, [al.TCPAccessLogEntry(common_properties=al.AccessLogCommon())])
    promtool_check(reg.render(), allowed_lint=(MS_LINT,))


def test_log_names() -> None:
    ctx = parse_log_name(log_name("destination", {WEB: ["web", "web", "v1"]}))
    assert ctx.reporter == "destination" and ctx.peers[WEB] == ("web", "web", "v1")
    assert parse_log_name(log_name("source")).peers == {}
    for bad in ("", "x", '{"reporter": "elsewhere"}', "[]"):
        with pytest.raises(ValueError):
            parse_log_name(bad)
    assert spiffe_namespace(WEB) == "demo"
    assert spiffe_namespace("spiffe://td/other") == "unknown"


def test_access_log_service_over_a_unix_socket(tmp_path: Path) -> None:
    m, reg = agent()
    server = AccessLogServer(m, tmp_path / "als.sock", registry=reg)
    server.start()
    try:
        ident = als_pb2.StreamAccessLogsMessage.Identifier(
            log_name=log_name("destination", {WEB: ["web", "", ""]})
        )
        batch = als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(log_entry=[http_entry(), http_entry()])
        msgs = [
            als_pb2.StreamAccessLogsMessage(identifier=ident, http_logs=batch),
            als_pb2.StreamAccessLogsMessage(http_logs=batch),
        ]
        foreign = als_pb2.StreamAccessLogsMessage(
            identifier=als_pb2.StreamAccessLogsMessage.Identifier(log_name="someone-else"), http_logs=batch
        )
        with grpc.insecure_channel(f"unix:{tmp_path / 'als.sock'}") as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            stub.StreamAccessLogs(iter(msgs), timeout=10)
            stub.StreamAccessLogs(iter([foreign]), timeout=10)
    finally:
        server.stop()
    assert total(reg, "istio_requests_total", source_workload="web", reporter="destination") == 4
    assert total(reg, "vmagent_access_log_stream_errors_total") == 1
    assert total(reg, "vmagent_request_metrics_entries_total") == 4
