"""Auto-registered WorkloadEntries: merge rules, health, heartbeat timeout, grace period, restarts.

A real SQLite state db and the real ConfigRegistry; time comes from an injected clock.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmagent.controlplane.config.loader import load_text
from vmagent.controlplane.config.snapshot import ConfigSet, StaticSource
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.model import Endpoint
from vmagent.controlplane.registry.services import ConfigRegistry
from vmagent.controlplane.registry.workload_entry import (
    LabelConflict,
    Registration,
    RegistrationRefused,
    entry_name,
)
from vmagent.controlplane.registry.workload_store import LifecycleSettings, WorkloadStore

GROUP = yaml.safe_load(
    textwrap.dedent(
        """
        apiVersion: networking.istio.io/v1
        kind: WorkloadGroup
        metadata: {name: api, namespace: demo, labels: {team: not-copied}}
        spec:
          metadata:
            labels: {app: api, version: v1}
            annotations: {owner: payments}
          template:
            serviceAccount: api-sa
            labels: {app: template, tier: backend}
            ports: {http: 8080, grpc: 9000}
            network: net-a
            locality: us-east1/b
            weight: 2
          probe:
            periodSeconds: 1
            httpGet: {port: 8080, path: /ready}
        """
    )
)
NO_PROBE = {**GROUP, "spec": {k: v for k, v in GROUP["spec"].items() if k != "probe"}}
SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: api}}
"""
SETTINGS = LifecycleSettings(heartbeat_interval=5, heartbeat_timeout=15, grace_period=600, restart_window=30)
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDb]:
    d = StateDb.open(tmp_path)
    yield d
    d.close()


@pytest.fixture
def store(db: StateDb, clock: Clock) -> WorkloadStore:
    return WorkloadStore(db, SETTINGS, clock)


def reg(address: str = "10.0.0.7", **kw: Any) -> Registration:
    return Registration(
        namespace="demo",
        group="api",
        address=address,
        spiffe_id="spiffe://cluster.local/ns/demo/sa/api-sa",
        **kw,
    )


def endpoints(store: WorkloadStore) -> list[Endpoint]:
    result = load_text(textwrap.dedent(SERVICE), "svc.yaml")
    assert result.errors == []
    reg_ = ConfigRegistry(ConfigSet([StaticSource(result.objects)]), "cluster.local", store.entries)
    (svc,) = reg_.services()
    return list(svc.endpoints)


def test_entry_from_template_with_labels_merged_and_agent_adds_keys(store: WorkloadStore) -> None:
    # An agent label that changes one of the group's is refused (stricter than Istio), nothing stored.
    with pytest.raises(
        LabelConflict, match=r"label version=v2 conflicts with version=v1 of WorkloadGroup demo/api"
    ):
        store.register(GROUP, reg(labels={"version": "v2", "host": "vm7"}), "s0")
    assert store.entries() == [] and store.get("demo", "api-10.0.0.7") is None
    store.register(
        GROUP,
        reg(labels={"version": "v1", "host": "vm7"}, ports={"http": 18080}, network="net-b"),
        "s1",
    )
    (entry,) = store.entries()
    assert (entry.kind, entry.namespace, entry.name) == ("WorkloadEntry", "demo", "api-10.0.0.7")
    assert entry.api_version == "networking.istio.io/v1"
    # template < group spec.metadata, plus the agent's new keys; the group object's own metadata.labels
    # are not copied.
    labels = {"app": "api", "tier": "backend", "version": "v1", "host": "vm7"}
    assert entry.labels == labels
    assert entry.spec == {
        "address": "10.0.0.7",
        "labels": labels,
        "ports": {"http": 18080, "grpc": 9000},
        "serviceAccount": "api-sa",
        "network": "net-b",
        "locality": "us-east1/b",
        "weight": 2,
    }
    assert entry.annotations == {
        "owner": "payments",
        "istio.io/autoRegistrationGroup": "api",
        "proxy.istio.io/health-checks-enabled": "true",
    }
    (ep,) = endpoints(store)
    assert (ep.address, ep.ports, ep.weight, ep.service_account) == (
        "10.0.0.7",
        {"http": 18080},
        2,
        "spiffe://cluster.local/ns/demo/sa/api-sa",
    )


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("10.1.2.3", "api-10.1.2.3"),
        ("2001:db8::1", "api-2001-db8--1"),
        ("2001:DB8:0:0:0:0:0:1", "api-2001-db8--1"),
        ("::1", "api---1"),
        ("2001:db8::", "api-2001-db8--0"),
        ("fd00::a:b", "api-fd00--a-b"),
    ],
)
def test_entry_names_are_dns1123_subdomains_for_ipv4_and_ipv6(address: str, name: str) -> None:
    assert entry_name("api", address) == name
    assert DNS1123_SUBDOMAIN.match(name) and len(name) <= 253


def test_overlong_name_keeps_its_tail(store: WorkloadStore) -> None:
    name = entry_name("g" * 250, "2001:db8::1")
    assert len(name) == 253 and name.endswith("-2001-db8--1") and DNS1123_SUBDOMAIN.match(name)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"address": "not-an-ip"}, "is not an IPv4 or IPv6 address"),
        ({"address": "fe80::1%eth0"}, "zone ids are not allowed"),
        ({"address": "0.0.0.0"}, "cannot be a workload address"),
        ({"labels": {"bad key!": "x"}}, "label name 'bad key!'"),
        ({"ports": {"http": 70000}}, "out of range"),
        ({"ports": {"HTTP": 80}}, "not a DNS-1123 label"),
        ({"locality": "a/b/c/d"}, "REGION[/ZONE[/SUBZONE]]"),
    ],
)
def test_invalid_registration_is_refused_and_stores_nothing(
    store: WorkloadStore, kw: dict[str, Any], message: str
) -> None:
    address = kw.pop("address", "10.0.0.7")
    with pytest.raises(RegistrationRefused, match=re.escape(message)):
        store.register(GROUP, reg(address, **kw), "s1")
    assert store.workloads_json() == []


def test_probe_group_starts_unhealthy_until_a_report(store: WorkloadStore, clock: Clock) -> None:
    changes: list[int] = []
    store.subscribe(lambda: changes.append(1))
    store.register(GROUP, reg(), "s1")
    assert len(changes) == 1
    (ep,) = endpoints(store)
    assert ep.healthy is False
    (entry,) = store.entries()
    cond = entry.status["conditions"][0]  # type: ignore[attr-defined]
    assert (cond["type"], cond["status"], cond["message"]) == (
        "Healthy",
        "False",
        "waiting for the first probe result",
    )

    clock.advance(1)
    assert store.report_health("demo", "api-10.0.0.7", "s1", True, "HTTP 200")
    assert len(changes) == 2
    assert endpoints(store)[0].healthy is True
    # The same state again is not an EDS change.
    assert store.report_health("demo", "api-10.0.0.7", "s1", True, "HTTP 200")
    assert len(changes) == 2
    assert store.workloads_json()[0]["health"] == "healthy"


def test_group_without_probe_is_healthy_and_has_no_condition(store: WorkloadStore) -> None:
    store.register(NO_PROBE, reg(), "s1")
    (entry,) = store.entries()
    assert entry.status == {}  # type: ignore[attr-defined]
    assert "proxy.istio.io/health-checks-enabled" not in entry.annotations
    assert endpoints(store)[0].healthy is True


def test_reregistration_refreshes_one_entry_and_keeps_health(store: WorkloadStore, clock: Clock) -> None:
    store.register(GROUP, reg(), "s1")
    store.report_health("demo", "api-10.0.0.7", "s1", True, "ok")
    store.disconnected("demo", "api-10.0.0.7", "s1")
    clock.advance(3)
    changes: list[int] = []
    store.subscribe(lambda: changes.append(1))
    store.register(GROUP, reg(hostname="vm7"), "s2")
    assert [w["name"] for w in store.workloads_json()] == ["api-10.0.0.7"]
    w = store.workloads_json()[0]
    assert (w["connected"], w["disconnected_at"], w["health"], w["hostname"]) == (
        True,
        None,
        "healthy",
        "vm7",
    )
    assert changes == []  # nothing EDS sees changed: no push for a reconnect


def test_two_agents_one_address_last_writer_wins(store: WorkloadStore) -> None:
    store.register(GROUP, reg(labels={"who": "first"}), "first")
    store.register(GROUP, reg(labels={"who": "second"}), "second")
    (entry,) = store.entries()
    assert entry.labels["who"] == "second"
    # The superseded stream can no longer change the entry.
    assert not store.report_health("demo", "api-10.0.0.7", "first", True, "x")
    assert not store.heartbeat("demo", "api-10.0.0.7", "first")
    store.disconnected("demo", "api-10.0.0.7", "first")
    assert store.workloads_json()[0]["connected"] is True
    assert not store.leave("demo", "api-10.0.0.7", "first")
    assert len(store.entries()) == 1


def test_heartbeat_timeout_leaves_eds_and_a_heartbeat_brings_it_back(
    store: WorkloadStore, clock: Clock
) -> None:
    store.register(NO_PROBE, reg(), "s1")
    changes: list[int] = []
    store.subscribe(lambda: changes.append(1))
    clock.advance(14)
    store.reap()
    assert len(store.entries()) == 1 and changes == []
    clock.advance(1)
    store.reap()
    assert store.entries() == [] and changes == [1]
    assert endpoints(store) == []
    w = store.workloads_json()[0]
    assert (w["in_eds"], w["connected"]) == (False, True)  # a hung stream: still "connected", out of EDS
    store.heartbeat("demo", "api-10.0.0.7", "s1")
    assert len(store.entries()) == 1 and changes == [1, 1]


def test_disconnected_entry_expires_then_is_deleted_after_the_grace_period(
    store: WorkloadStore, clock: Clock
) -> None:
    store.register(NO_PROBE, reg(), "s1")
    store.disconnected("demo", "api-10.0.0.7", "s1")
    clock.advance(5)
    store.reap()
    assert len(store.entries()) == 1  # still within the heartbeat timeout
    clock.advance(10)
    store.reap()
    assert store.entries() == []
    w = store.workloads_json()[0]
    assert w["delete_at"] == "2023-11-14T22:23:20+00:00"  # disconnected_at + 600 s
    clock.advance(584)
    store.reap()
    assert len(store.workloads_json()) == 1
    clock.advance(1)
    store.reap()
    assert store.workloads_json() == []


def test_connected_entry_is_never_deleted_by_the_grace_period(store: WorkloadStore, clock: Clock) -> None:
    store.register(NO_PROBE, reg(), "s1")
    for _ in range(3):
        clock.advance(400)
        store.heartbeat("demo", "api-10.0.0.7", "s1")
        store.reap()
    assert len(store.entries()) == 1


def test_leave_deletes_at_once(store: WorkloadStore) -> None:
    store.register(NO_PROBE, reg(), "s1")
    changes: list[int] = []
    store.subscribe(lambda: changes.append(1))
    assert store.leave("demo", "api-10.0.0.7", "s1")
    assert store.entries() == [] and store.workloads_json() == [] and changes == [1]
    assert not store.leave("demo", "api-10.0.0.7", "s1")  # repeating is harmless


def test_restart_continues_grace_from_stored_times(db: StateDb, clock: Clock) -> None:
    first = WorkloadStore(db, SETTINGS, clock)
    first.register(GROUP, reg("10.0.0.1"), "a")
    first.report_health("demo", "api-10.0.0.1", "a", True, "ok")
    first.register(GROUP, reg("10.0.0.2"), "b")
    first.disconnected("demo", "api-10.0.0.2", "b")
    clock.advance(2)
    first.heartbeat("demo", "api-10.0.0.1", "a")  # not persisted: within heartbeat_persist_interval
    # The process dies with stream "a" open. It restarts 100 s later.
    clock.advance(100)
    second = WorkloadStore(db, SETTINGS, clock)
    by_name = {w["name"]: w for w in second.workloads_json()}
    assert by_name["api-10.0.0.1"]["connected"] is False
    assert by_name["api-10.0.0.1"]["disconnected_at"] == "2023-11-14T22:13:20+00:00"  # last stored heartbeat
    assert by_name["api-10.0.0.1"]["health"] == "healthy"
    assert by_name["api-10.0.0.2"]["disconnected_at"] == "2023-11-14T22:13:20+00:00"
    # Agents get the restart window to reconnect before anything leaves EDS.
    second.reap()
    assert len(second.entries()) == 2
    clock.advance(29)
    second.reap()
    assert len(second.entries()) == 2
    second.register(GROUP, reg("10.0.0.1"), "a2")
    clock.advance(1)
    second.reap()
    assert [e.name for e in second.entries()] == ["api-10.0.0.1"]
    # 10.0.0.2 is deleted 600 s after its stored disconnect time, not 600 s after the restart.
    clock.advance(600 - 130)
    second.reap()
    assert sorted(w["name"] for w in second.workloads_json()) == ["api-10.0.0.1"]


def test_expired_entry_stays_out_of_eds_after_a_restart(db: StateDb, clock: Clock) -> None:
    first = WorkloadStore(db, SETTINGS, clock)
    first.register(NO_PROBE, reg(), "a")
    first.disconnected("demo", "api-10.0.0.7", "a")
    clock.advance(20)
    first.reap()
    assert first.entries() == []
    second = WorkloadStore(db, SETTINGS, clock)
    assert second.entries() == []


def test_operator_entry_of_the_same_name_wins_and_is_never_deleted(
    store: WorkloadStore, clock: Clock
) -> None:
    operator = """
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: api-10.0.0.7, namespace: demo}
    spec: {address: 10.0.0.7, labels: {app: api}, weight: 9}
    """
    result = load_text(textwrap.dedent(SERVICE) + "---\n" + textwrap.dedent(operator), "mesh.yaml")
    assert result.errors == []
    registry = ConfigRegistry(ConfigSet([StaticSource(result.objects)]), "cluster.local", store.entries)
    store.register(NO_PROBE, reg(), "s1")
    store.disconnected("demo", "api-10.0.0.7", "s1")
    (ep,) = registry.services()[0].endpoints
    assert ep.weight == 9
    clock.advance(10_000)
    store.reap()
    registry.notify_changed()
    assert [e.workload_name for e in registry.services()[0].endpoints] == ["api-10.0.0.7"]
    assert registry.services()[0].endpoints[0].weight == 9


def test_workloads_json_fields(store: WorkloadStore, clock: Clock) -> None:
    r = Registration(
        namespace="demo", group="api", address="2001:db8::7", hostname="vm7",
        spiffe_id="spiffe://cluster.local/ns/demo/sa/api-sa", cert_serial="1a2b", cert_expiry=clock.now + 3600,
    )  # fmt: skip
    store.register(GROUP, r, "s1")
    (w,) = store.workloads_json()
    assert w == {
        "namespace": "demo",
        "group": "api",
        "name": "api-2001-db8--7",
        "address": "2001:db8::7",
        "hostname": "vm7",
        "spiffe_id": "spiffe://cluster.local/ns/demo/sa/api-sa",
        "labels": {"app": "api", "tier": "backend", "version": "v1"},
        "ports": {"http": 8080, "grpc": 9000},
        "network": "net-a",
        "locality": "us-east1/b",
        "weight": 2,
        "health": "unhealthy",
        "health_message": "waiting for the first probe result",
        "health_changed_at": "2023-11-14T22:13:20+00:00",
        "probe": True,
        "in_eds": True,
        "connected": True,
        "connected_at": "2023-11-14T22:13:20+00:00",
        "disconnected_at": None,
        "last_heartbeat_at": "2023-11-14T22:13:20+00:00",
        "registered_at": "2023-11-14T22:13:20+00:00",
        "delete_at": None,
        "cert_serial": "1a2b",
        "cert_expiry": "2023-11-14T23:13:20+00:00",
    }
