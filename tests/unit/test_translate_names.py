"""Istio's names and the domains under which an HTTP service is routed."""

from __future__ import annotations

from vmagent.controlplane.translate import names


def test_cluster_and_sni_names() -> None:
    assert (
        names.outbound_cluster(8080, "api.demo.svc.cluster.local")
        == "outbound|8080||api.demo.svc.cluster.local"
    )
    assert names.outbound_cluster(80, "a.example.com", "v2") == "outbound|80|v2|a.example.com"
    assert names.inbound_cluster(9080) == "inbound|9080||"
    assert (
        names.outbound_sni(8080, "api.demo.svc.cluster.local", "v1")
        == "outbound_.8080_.v1_.api.demo.svc.cluster.local"
    )
    assert (
        names.outbound_sni(8080, "api.demo.svc.cluster.local")
        == "outbound_.8080_._.api.demo.svc.cluster.local"
    )
    assert names.outbound_listener(5432) == "0.0.0.0_5432"
    assert names.route_name(8080) == "8080"


def test_domains_in_same_namespace_include_bare_name() -> None:
    assert names.host_domains("api.demo.svc.cluster.local", 8080, "demo", "demo", "cluster.local") == [
        "api.demo.svc.cluster.local",
        "api.demo.svc.cluster.local:8080",
        "api.demo.svc",
        "api.demo.svc:8080",
        "api.demo",
        "api.demo:8080",
        "api",
        "api:8080",
    ]


def test_domains_from_other_namespace_have_no_bare_name() -> None:
    got = names.host_domains("api.demo.svc.cluster.local", 80, "demo", "shop", "cluster.local")
    assert "api" not in got and "api:80" not in got
    assert "api.demo" in got and "api.demo.svc:80" in got


def test_non_kubernetes_hosts_only_as_written() -> None:
    assert names.host_domains("db.example.com", 443, "demo", "demo", "cluster.local") == [
        "db.example.com",
        "db.example.com:443",
    ]
    # A host in another namespace's svc domain than the service's own gets no short names.
    assert names.host_domains("api.other.svc.cluster.local", 80, "demo", "demo", "cluster.local") == [
        "api.other.svc.cluster.local",
        "api.other.svc.cluster.local:80",
    ]


def test_protocols() -> None:
    assert names.is_http("HTTP") and names.is_http("grpc") and names.is_http("HTTP2")
    assert not names.is_http("TCP") and not names.is_http("HTTPS") and not names.is_http("")
    assert names.is_http2("GRPC") and not names.is_http2("HTTP")
    assert names.is_tls("HTTPS") and names.is_tls("TLS") and not names.is_tls("TCP")
    assert names.protocol_from_port_name("http-web") == "HTTP"
    assert names.protocol_from_port_name("grpc") == "GRPC"
    assert names.protocol_from_port_name("metrics") == "TCP"


def test_addresses() -> None:
    assert str(names.ip_of("10.0.0.1/32")) == "10.0.0.1"
    assert names.ip_of("10.0.0.0/24") is None
    assert names.ip_of("db.example.com") is None
    assert names.is_loopback("127.0.0.1") and not names.is_loopback("10.0.0.1")
    assert sorted(["fd00::1", "10.0.0.10", "10.0.0.9"], key=names.sort_key_ip) == [
        "10.0.0.9",
        "10.0.0.10",
        "fd00::1",
    ]
