"""The DNS proxy's name table."""

from __future__ import annotations

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate import build_name_table

P = (Port(80, "HTTP", "http"),)


def test_vips_win_over_endpoints() -> None:
    s = Service(
        "api.demo.svc.cluster.local",
        "demo",
        P,
        addresses=("240.240.0.10", "10.1.0.0/16"),
        endpoints=(Endpoint("10.0.0.3"),),
    )
    assert build_name_table([s]) == {"api.demo.svc.cluster.local": ["240.240.0.10"]}


def test_static_without_vip_lists_ip_endpoints_sorted_including_unhealthy() -> None:
    s = Service(
        "API.demo.svc.cluster.local.",
        "demo",
        P,
        endpoints=(
            Endpoint("10.0.0.10"),
            Endpoint("10.0.0.9", healthy=False),
            Endpoint("fd00::1"),
            Endpoint("10.0.0.9"),
        ),
    )
    assert build_name_table([s]) == {"api.demo.svc.cluster.local": ["10.0.0.9", "10.0.0.10", "fd00::1"]}


def test_dns_services_wildcards_and_empty_ones_are_left_out() -> None:
    dns = Service(
        "httpbin.example.com", "demo", P, resolution="DNS", endpoints=(Endpoint("httpbin.example.com"),)
    )
    wild = Service("*.example.com", "demo", P, addresses=("240.240.0.1",))
    empty = Service("none.demo.svc.cluster.local", "demo", P)
    assert build_name_table([dns, wild, empty]) == {}


def test_visibility_and_merging() -> None:
    a = Service("x.example.com", "one", P, addresses=("240.0.0.2",))
    b = Service("x.example.com", "two", P, addresses=("240.0.0.1",), export_to=(".",))
    assert build_name_table([a, b]) == {"x.example.com": ["240.0.0.1", "240.0.0.2"]}
    assert build_name_table([a, b], namespace="one") == {"x.example.com": ["240.0.0.2"]}


def test_the_agents_dns_table_accepts_it() -> None:
    from vmagent.agent.dns_table import NameTable

    s = Service(
        "api.demo.svc.cluster.local", "demo", P, endpoints=(Endpoint("10.0.0.3"), Endpoint("fd00::3"))
    )
    table = NameTable(namespace="demo")
    table.replace(build_name_table([s]))
    assert table.lookup("api") is not None
