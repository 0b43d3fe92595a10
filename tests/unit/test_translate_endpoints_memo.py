"""Load assignments are built again only when their service or endpoints change (the memo that keeps an
EndpointSlice change in a big cluster from rebuilding every cluster's assignment)."""

from __future__ import annotations

import dataclasses

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate.endpoints import load_assignment

PORT = Port(8080, "HTTP", "http")


def _service(*addresses: str) -> Service:
    eps = tuple(Endpoint(address=a, ports={"http": 8080}) for a in addresses)
    return Service("memo.demo.svc.cluster.local", "demo", (PORT,), endpoints=eps)


def _addresses(msg: object) -> list[str]:
    return [
        lb.endpoint.address.socket_address.address
        for loc in msg.endpoints  # type: ignore[attr-defined]
        for lb in loc.lb_endpoints
    ]


def test_same_inputs_share_the_message_and_changes_rebuild_it() -> None:
    name = "outbound|8080||memo.demo.svc.cluster.local"
    svc = _service("10.0.0.1", "10.0.0.2")
    first = load_assignment(name, svc, PORT, svc.endpoints, False)
    assert load_assignment(name, svc, PORT, svc.endpoints, False) is first
    grown = _service("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert _addresses(load_assignment(name, grown, PORT, grown.endpoints, False)) == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    # An equal but rebuilt service gives equal content; an endpoint turned unhealthy leaves.
    same = _service("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert load_assignment(name, same, PORT, same.endpoints, False) == load_assignment(
        name, grown, PORT, grown.endpoints, False
    )
    sick = dataclasses.replace(
        same, endpoints=(same.endpoints[0], dataclasses.replace(same.endpoints[1], healthy=False))
    )
    assert _addresses(load_assignment(name, sick, PORT, sick.endpoints, False)) == ["10.0.0.1"]
    # A subset of the endpoints (a DestinationRule subset) is its own input.
    assert _addresses(load_assignment(name, same, PORT, same.endpoints[2:], False)) == ["10.0.0.3"]
