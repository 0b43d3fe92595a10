"""A workload's inbound ports, derived from the services that select it."""

from __future__ import annotations

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate import workload_ports


def test_ports_come_from_selecting_services_with_target_ports() -> None:
    web = Service(
        "web.demo.svc.cluster.local",
        "demo",
        (Port(80, "HTTP", "http", target_port=8000), Port(9090, "GRPC", "grpc")),
        endpoints=(
            Endpoint("10.0.0.2", ports={"http": 8000, "grpc": 9090}, workload_name="web-1", namespace="demo"),
        ),
    )
    other = Service(
        "o.demo.svc.cluster.local", "demo", (Port(5432, "TCP", "tcp"),), endpoints=(Endpoint("10.0.0.9"),)
    )
    got = workload_ports(
        [web, other], "demo", "web-1", ["10.0.0.2"], named_ports={"tcp-debug": 7000, "http": 8000}
    )
    assert got == (
        Port(7000, "TCP", "tcp-debug"),
        Port(8000, "HTTP", "http"),
        Port(9090, "GRPC", "grpc"),
    )


def test_matching_by_address_when_no_workload_name() -> None:
    s = Service(
        "a.demo.svc.cluster.local",
        "demo",
        (Port(8080, "HTTP", "http"),),
        endpoints=(Endpoint("10.0.0.2", ports={"http": 8080}),),
    )
    assert workload_ports([s], "demo", addresses=["10.0.0.2"]) == (Port(8080, "HTTP", "http"),)
    assert workload_ports([s], "demo", addresses=["10.0.0.3"]) == ()
