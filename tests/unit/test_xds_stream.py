"""The SotW and delta stream machines and the ACK/NACK state they record, without a network."""

from __future__ import annotations

import itertools
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.rpc import status_pb2

from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from vmagent.controlplane.xds.status import StatusRegistry, StreamStatus
from vmagent.controlplane.xds.stream import DeltaStream, SotwStream


def world(
    ports: dict[str, int], routes: tuple[str, ...] = ("r",), timeout: int = 1, lport: int = 0
) -> Snapshot:
    msgs: list[Any] = []
    for name, port in ports.items():
        c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        c.connect_timeout.seconds = timeout
        msgs.append(c)
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        msgs.append(cla)
    listener = listener_pb2.Listener(name="l")
    listener.address.socket_address.port_value = lport
    msgs.append(listener)
    msgs.extend(route_pb2.RouteConfiguration(name=r) for r in routes)
    return Snapshot.from_messages(msgs)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def machine(kind: type[Any]) -> tuple[Any, StreamStatus, StatusRegistry]:
    reg = StatusRegistry(clock=Clock())
    st = reg.open_stream("p", "node-1", "spiffe://cluster.local/ns/demo/sa/web", "sotw", "ipv4:127.0.0.1:1")
    counter = itertools.count(1)
    return kind(st, lambda: f"n{next(counter)}"), st, reg


def names(resp: d.DiscoveryResponse) -> list[str]:
    out = []
    for r in resp.resources:
        if r.type_url == ENDPOINT:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name)
        elif r.type_url == CLUSTER:
            out.append(cluster_pb2.Cluster.FromString(r.value).name)
        else:
            out.append(r.type_url)
    return out


def ack(resp: d.DiscoveryResponse, resource_names: list[str] | None = None) -> d.DiscoveryRequest:
    return d.DiscoveryRequest(
        type_url=resp.type_url,
        version_info=resp.version_info,
        response_nonce=resp.nonce,
        resource_names=resource_names or [],
    )


def test_sotw_waits_for_a_snapshot_then_answers_each_subscribed_type() -> None:
    m, st, _ = machine(SotwStream)
    assert m.on_request(d.DiscoveryRequest(type_url=CLUSTER), None) == []
    assert st.state_of(CLUSTER) == "stale"
    out = m.on_snapshot(world({"a": 1}), None)
    assert [r.type_url for r in out] == [CLUSTER]
    assert names(out[0]) == ["a"]


def test_sotw_push_only_changed_types_in_envoy_order() -> None:
    m, st, _ = machine(SotwStream)
    snap = world({"a": 1, "b": 2})
    sent = {}
    for type_url, res in ((CLUSTER, []), (LISTENER, []), (ENDPOINT, ["a", "b"]), (ROUTE, ["r"])):
        (resp,) = m.on_request(d.DiscoveryRequest(type_url=type_url, resource_names=res), snap)
        assert m.on_request(ack(resp, res), snap) == []
        sent[type_url] = resp
    assert {st.state_of(t) for t in sent} == {"synced"}

    endpoint_change = world({"a": 1, "b": 3})
    out = m.on_snapshot(endpoint_change, endpoint_change.changed_types(snap))
    assert [r.type_url for r in out] == [ENDPOINT]
    assert st.state_of(ENDPOINT) == "stale" and st.state_of(CLUSTER) == "synced"

    # Everything changes at once: clusters first, their endpoints, then listeners. Route r did not
    # change and r2 is not subscribed (yet), so no RDS.
    both = world({"a": 5, "b": 6, "c": 7}, routes=("r", "r2"), lport=8080)
    out = m.on_snapshot(both, None)
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT, LISTENER]
    # Envoy then asks for the new route by name and gets it.
    (rds,) = m.on_request(ack(sent[ROUTE], ["r", "r2"]), both)
    assert rds.type_url == ROUTE and len(rds.resources) == 2


def test_sotw_changed_cluster_gets_its_endpoints_again() -> None:
    m, _, _ = machine(SotwStream)
    snap = world({"a": 1})
    m.on_request(d.DiscoveryRequest(type_url=CLUSTER), snap)
    (eds,) = m.on_request(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"]), snap)
    m.on_request(ack(eds, ["a"]), snap)
    cluster_only = world({"a": 1}, timeout=9)
    out = m.on_snapshot(cluster_only, cluster_only.changed_types(snap))
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT]
    assert out[1].version_info == eds.version_info and out[1].nonce != eds.nonce


def test_sotw_filters_by_subscription_and_answers_subscription_changes() -> None:
    m, _, _ = machine(SotwStream)
    snap = world({"a": 1, "b": 2, "c": 3})
    (eds,) = m.on_request(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a", "zzz"]), snap)
    assert names(eds) == ["a"]
    (eds2,) = m.on_request(ack(eds, ["a", "c"]), snap)
    assert names(eds2) == ["a", "c"]
    # b changes: not subscribed, no push.
    b_changed = world({"a": 1, "b": 9, "c": 3})
    assert m.on_snapshot(b_changed, b_changed.changed_types(snap)) == []


def test_sotw_nack_is_recorded_and_not_resent_until_the_content_changes() -> None:
    m, st, reg = machine(SotwStream)
    good = world({"a": 1})
    (cds,) = m.on_request(d.DiscoveryRequest(type_url=CLUSTER), good)
    m.on_request(ack(cds), good)
    bad = world({"a": 1}, timeout=99)
    (cds_bad,) = m.on_snapshot(bad, {CLUSTER})
    nack = d.DiscoveryRequest(
        type_url=CLUSTER,
        version_info=cds.version_info,
        response_nonce=cds_bad.nonce,
        error_detail=status_pb2.Status(code=13, message="timeout too long"),
    )
    assert m.on_request(nack, bad) == []
    assert m.on_snapshot(bad, None) == []  # same bad version: not pushed again
    (entry,) = reg.status()
    cds_status = entry["types"]["CDS"]
    assert cds_status["state"] == "nacked"
    assert cds_status["error"] == "timeout too long"
    assert cds_status["acked_version"] == cds.version_info
    assert cds_status["sent_version"] == cds_bad.version_info
    assert entry["state"] == "nacked"
    # The fixed config goes out and is ACKed: the error is cleared from the status.
    fixed = world({"a": 1}, timeout=2)
    (cds_fixed,) = m.on_snapshot(fixed, {CLUSTER})
    assert st.state_of(CLUSTER) == "stale"
    m.on_request(ack(cds_fixed), fixed)
    assert reg.status()[0]["types"]["CDS"]["error"] is None
    assert st.state_of(CLUSTER) == "synced"


def test_ack_or_nack_of_an_older_nonce_changes_nothing() -> None:
    m, st, _ = machine(SotwStream)
    s1 = world({"a": 1})
    (first,) = m.on_request(d.DiscoveryRequest(type_url=CLUSTER), s1)
    s2 = world({"a": 1, "b": 2})
    (second,) = m.on_snapshot(s2, {CLUSTER, ENDPOINT})
    m.on_request(ack(first), s2)
    assert st.state_of(CLUSTER) == "stale"
    m.on_request(
        d.DiscoveryRequest(
            type_url=CLUSTER, response_nonce=first.nonce, error_detail=status_pb2.Status(message="old")
        ),
        s2,
    )
    assert st.state_of(CLUSTER) == "stale"
    m.on_request(ack(second), s2)
    assert st.state_of(CLUSTER) == "synced"


def test_delta_tracks_what_the_proxy_has() -> None:
    m, st, _ = machine(DeltaStream)
    snap = world({"a": 1, "b": 2})
    (cds,) = m.on_request(
        d.DeltaDiscoveryRequest(
            type_url=CLUSTER, initial_resource_versions={"a": snap.get(CLUSTER).versions["a"]}
        ),
        snap,
    )
    assert [r.name for r in cds.resources] == ["b"]  # the proxy already had a at this version
    m.on_request(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce), snap)
    assert st.state_of(CLUSTER) == "synced"
    (eds,) = m.on_request(
        d.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=["a", "b"]), snap
    )
    assert sorted(r.name for r in eds.resources) == ["a", "b"]
    (eds2,) = m.on_request(
        d.DeltaDiscoveryRequest(
            type_url=ENDPOINT, response_nonce=eds.nonce, resource_names_unsubscribe=["b"]
        ),
        snap,
    ) or [None]
    assert eds2 is None  # unsubscribing needs no answer
    assert st.state_of(ENDPOINT) == "synced"
    changed = world({"a": 1, "b": 3})
    assert m.on_snapshot(changed, changed.changed_types(snap)) == []  # b is no longer subscribed
    gone = world({"b": 3})
    out = m.on_snapshot(gone, gone.changed_types(changed))
    assert [(r.type_url, list(r.removed_resources)) for r in out] == [(CLUSTER, ["a"]), (ENDPOINT, ["a"])]


def test_delta_first_request_is_answered_even_when_empty() -> None:
    m, _, _ = machine(DeltaStream)
    (lds,) = m.on_request(d.DeltaDiscoveryRequest(type_url=LISTENER), Snapshot())
    assert not lds.resources and not lds.removed_resources and lds.nonce


def test_status_json_shape() -> None:
    m, _, reg = machine(SotwStream)
    snap = world({"a": 1})
    (cds,) = m.on_request(d.DiscoveryRequest(type_url=CLUSTER), snap)
    (entry,) = reg.status()
    assert entry["proxy"] == "p" and entry["node_id"] == "node-1"
    assert entry["identity"] == "spiffe://cluster.local/ns/demo/sa/web"
    assert entry["connected_since"].endswith("+00:00")
    assert entry["types"]["CDS"] == {
        "type_url": CLUSTER,
        "state": "stale",
        "sent_version": cds.version_info,
        "sent_nonce": cds.nonce,
        "sent_at": entry["types"]["CDS"]["sent_at"],
        "responses": 1,
        "acked_version": None,
        "acked_at": None,
        "error": None,
        "error_at": None,
    }


def test_sotw_endpoint_push_carries_only_the_changed_assignments() -> None:
    """EDS responses are not state of the world (only LDS and CDS are): a push after an endpoint change
    carries the changed assignments only; a NACK makes the next one complete again."""
    m, _, _ = machine(SotwStream)
    snap = world({"a": 1, "b": 2, "c": 3})
    (eds,) = m.on_request(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["*"]), snap)
    assert names(eds) == ["a", "b", "c"]
    assert m.on_request(ack(eds, ["*"]), snap) == []
    b_changed = world({"a": 1, "b": 4, "c": 3})
    (push,) = m.on_snapshot(b_changed, b_changed.changed_types(snap))
    assert names(push) == ["b"] and push.version_info == b_changed.version(ENDPOINT)
    nack = ack(push, ["*"])
    nack.version_info = eds.version_info
    nack.error_detail.CopyFrom(status_pb2.Status(message="rejected"))
    assert m.on_request(nack, b_changed) == []
    c_changed = world({"a": 1, "b": 4, "c": 5})
    (after_nack,) = m.on_snapshot(c_changed, c_changed.changed_types(b_changed))
    assert names(after_nack) == ["a", "b", "c"]
