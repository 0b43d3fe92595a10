"""Registration over real gRPC and mutual TLS: the agent's RegistrationClient against the control plane's
RegistrationServicer on a grpc.aio server, certificates from a real mesh CA, state in a real SQLite db."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import free_port, wait_for
from vmagent.agent.join import make_csr, secure_channel
from vmagent.agent.registration import RegisterInfo, RegistrationClient
from vmagent.api import registration_pb2, registration_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import SpiffeId, chain_pem, generate_key, key_pem
from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.grpc_server import server_credentials
from vmagent.controlplane.registry.registration import RegistrationServicer
from vmagent.controlplane.registry.workload_store import LifecycleSettings, Reaper, WorkloadStore
from vmagent.controlplane.xds.runner import AioServerThread

TD = "cluster.local"
GROUPS: dict[tuple[str, str], dict[str, Any]] = {
    ("demo", "api"): {
        "metadata": {"name": "api", "namespace": "demo"},
        "spec": {
            "metadata": {"labels": {"app": "api"}},
            "template": {"serviceAccount": "api-sa", "ports": {"http": 8080}},
            "probe": {"httpGet": {"port": 8080}},
        },
    },
    ("demo", "web"): {
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"template": {"serviceAccount": "web"}},
    },
}


def group_lookup(ns: str, name: str) -> dict[str, Any] | None:
    return GROUPS.get((ns, name))


@dataclass
class ControlPlane:
    """The registration service of a control plane; ``restart()`` is a process restart (same db)."""

    root: Path
    settings: LifecycleSettings
    port: int = field(default_factory=free_port)
    table: dict[str, list[str]] = field(default_factory=dict)
    table_requests: list[str] = field(default_factory=list)
    wait_pushed: Callable[[float], bool] = lambda _t: True
    store_class: type[WorkloadStore] = WorkloadStore

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority.load_or_create(self.root / "ca", CaSettings(TD))
        self.creds = server_credentials(self.ca, [])[1]
        self.server: AioServerThread | None = None
        self.start()

    def start(self) -> None:
        self.db = StateDb.open(self.root / "state")
        self.store = self.store_class(self.db, self.settings)
        self.changes = 0
        self.store.subscribe(self._changed)
        self.servicer = RegistrationServicer(
            self.store, group_lookup, TD, name_table=self.name_table, wait_pushed=self.wait_pushed
        )
        self.reaper = Reaper(self.store, interval=0.05)
        self.reaper.start()
        self.server = AioServerThread(f"127.0.0.1:{self.port}", self.creds, self.servicer.add_to_server)
        self.server.start()

    def name_table(self, namespace: str) -> dict[str, list[str]]:
        self.table_requests.append(namespace)
        return dict(self.table)

    def _changed(self) -> None:
        self.changes += 1

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.2)
            self.server = None
            self.servicer.close()
            self.reaper.stop()
            self.db.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def identity(self, ns: str, sa: str) -> tuple[bytes, bytes]:
        key = generate_key()
        chain = self.ca.sign_workload_csr(make_csr(key), SpiffeId(TD, ns, sa))
        return key_pem(key), chain_pem(chain)

    def channel(self, ns: str = "demo", sa: str = "api-sa") -> grpc.Channel:
        return secure_channel(
            f"127.0.0.1:{self.port}", self.ca.root_pem, CP_SERVER_NAME, self.identity(ns, sa)
        )

    def names(self) -> list[str]:
        return sorted(w["name"] for w in self.store.workloads_json())

    def eds_names(self) -> list[str]:
        return sorted(e.name for e in self.store.entries())


FAST = LifecycleSettings(heartbeat_interval=1, heartbeat_timeout=3, grace_period=60, restart_window=30)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    c = ControlPlane(tmp_path, FAST)
    yield c
    c.stop()


class Agents:
    """Clients started by a test, all stopped at its end."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.clients: list[RegistrationClient] = []
        self.channels: list[grpc.Channel] = []
        self.tables: list[dict[str, list[str]]] = []

    def start(
        self, address: str, group: str = "api", ns: str = "demo", sa: str = "api-sa", **kw: Any
    ) -> RegistrationClient:
        ch = self.cp.channel(ns, sa)
        self.channels.append(ch)
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.5)
        kw.setdefault("ack_timeout", 0.5)
        client = RegistrationClient(
            lambda: ch, RegisterInfo(group=group, address=address), self.tables.append, **kw
        )
        client.start()
        self.clients.append(client)
        return client

    def close(self) -> None:
        for c in self.clients:
            c.stop()
        for ch in self.channels:
            ch.close()


@pytest.fixture
def agents(cp: ControlPlane) -> Iterator[Agents]:
    a = Agents(cp)
    yield a
    a.close()


def test_register_creates_exactly_one_entry_and_delivers_the_name_table(
    cp: ControlPlane, agents: Agents
) -> None:
    cp.table = {"api.demo.svc.cluster.local": ["240.240.0.10"]}
    client = agents.start("10.0.0.7")
    wait_for(lambda: client.connected, 10, what="registration")
    assert cp.names() == ["api-10.0.0.7"] and cp.eds_names() == ["api-10.0.0.7"]
    (w,) = cp.store.workloads_json()
    assert (w["group"], w["address"], w["spiffe_id"], w["connected"]) == (
        "api",
        "10.0.0.7",
        "spiffe://cluster.local/ns/demo/sa/api-sa",
        True,
    )
    assert w["health"] == "unhealthy" and w["probe"] is True  # waits for its first probe result
    assert w["cert_serial"] and w["cert_expiry"]
    assert client.entry_name == "api-10.0.0.7"
    wait_for(lambda: agents.tables, 5, what="the name table")
    assert agents.tables[0] == {"api.demo.svc.cluster.local": ["240.240.0.10"]}
    # A changed table reaches the connected agent; an unchanged one is not resent.
    cp.table = {
        "api.demo.svc.cluster.local": ["240.240.0.10"],
        "db.example.com": ["192.0.2.1", "2001:db8::1"],
    }
    assert cp.servicer.push_name_table() == 1
    wait_for(lambda: len(agents.tables) == 2, 5, what="the new name table")
    assert agents.tables[1]["db.example.com"] == ["192.0.2.1", "2001:db8::1"]
    assert cp.servicer.push_name_table() == 0
    assert set(cp.table_requests) == {"demo"}  # tables are asked per namespace (exportTo)


def _connect_once(
    cp: ControlPlane, ns: str, sa: str, group: str, address: str, group_ns: str = ""
) -> grpc.RpcError:
    ch = cp.channel(ns, sa)
    stub = registration_pb2_grpc.RegistrationStub(ch)
    msg = registration_pb2.AgentMessage(
        register=registration_pb2.Register(namespace=group_ns, group=group, address=address)
    )
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Connect(iter([msg]), timeout=10))
    finally:
        ch.close()
    return err.value


def test_certificate_of_another_groups_service_account_is_refused(cp: ControlPlane, agents: Agents) -> None:
    err = _connect_once(cp, "demo", "web", "api", "10.0.0.8")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == (
        "certificate identity spiffe://cluster.local/ns/demo/sa/web may not register in WorkloadGroup "
        "demo/api, which requires spiffe://cluster.local/ns/demo/sa/api-sa"
    )
    # Another namespace with the right account name is refused too.
    err = _connect_once(cp, "other", "api-sa", "api", "10.0.0.8", group_ns="demo")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == (
        "certificate identity spiffe://cluster.local/ns/other/sa/api-sa may not register in namespace demo "
        "(trust domain cluster.local)"
    )
    # The agent keeps retrying and shows why.
    client = agents.start("10.0.0.9", sa="web")
    wait_for(lambda: client.last_error and "PERMISSION_DENIED" in client.last_error, 10, what="refusal")
    assert not client.connected and cp.names() == []


def test_unknown_group_and_bad_address_are_refused(cp: ControlPlane) -> None:
    err = _connect_once(cp, "demo", "api-sa", "nope", "10.0.0.8")
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "WorkloadGroup demo/nope does not exist",
    )
    err = _connect_once(cp, "demo", "api-sa", "api", "10.0.0.300")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an IPv4 or IPv6 address" in err.details()
    assert cp.names() == []


def test_health_transitions_are_retried_until_acked_across_a_restart(
    cp: ControlPlane, agents: Agents
) -> None:
    client = agents.start("10.0.0.7")
    wait_for(lambda: client.connected, 10, what="registration")
    client.set_health(True, "HTTP 200")
    wait_for(lambda: client.health_acked, 10, what="ack")
    assert cp.store.workloads_json()[0]["health"] == "healthy"

    cp.stop()
    wait_for(lambda: not client.connected, 10, what="the client to notice")
    client.set_health(False, "HTTP 503")
    assert not client.health_acked
    cp.start()  # the same db: a control-plane restart
    wait_for(lambda: client.health_acked, 15, what="the report to be acked after the restart")
    (w,) = cp.store.workloads_json()
    assert (w["health"], w["health_message"]) == ("unhealthy", "HTTP 503")
    assert client.registrations == 2 and cp.names() == ["api-10.0.0.7"]


class FlakyStore(WorkloadStore):
    """A store whose first two health writes fail (as a full disk would)."""

    failures = 2

    def report_health(self, namespace: str, name: str, session: str, healthy: bool, message: str) -> bool:
        if FlakyStore.failures > 0:
            FlakyStore.failures -= 1
            raise OSError("disk full")
        return super().report_health(namespace, name, session, healthy, message)


def test_unstored_report_is_not_acked_and_is_retried_on_the_same_stream(tmp_path: Path) -> None:
    c = ControlPlane(tmp_path, FAST, store_class=FlakyStore)
    a = Agents(c)
    try:
        client = a.start("10.0.0.7", ack_timeout=0.2)
        wait_for(lambda: client.connected, 10, what="registration")
        client.set_health(True, "ok")
        wait_for(lambda: client.health_acked, 10, what="ack after retries")
        assert FlakyStore.failures == 0
        assert c.store.workloads_json()[0]["health"] == "healthy"
        assert client.registrations == 1  # the same stream all along
        assert client.last_error is not None and "disk full" in client.last_error
    finally:
        a.close()
        c.stop()


def test_reconnect_reregisters_without_duplicates(cp: ControlPlane, agents: Agents) -> None:
    client = agents.start("2001:db8::7")
    wait_for(lambda: client.connected, 10, what="registration")
    first = cp.store.workloads_json()[0]["connected_at"]
    for restarts in (2, 3):
        cp.restart()
        wait_for(
            lambda r=restarts: client.registrations == r and client.connected, 15, what="re-registration"
        )
    assert cp.names() == ["api-2001-db8--7"] and cp.eds_names() == ["api-2001-db8--7"]
    w = cp.store.workloads_json()[0]
    assert w["connected"] is True and w["registered_at"] <= first


def test_a_second_certificate_cannot_take_a_connected_address_until_its_owner_is_gone(
    cp: ControlPlane, agents: Agents
) -> None:
    a = agents.start("10.0.0.7")
    wait_for(lambda: a.connected, 10, what="first registration")
    owner = cp.store.workloads_json()[0]["cert_serial"]
    b = agents.start("10.0.0.7")  # same identity, another certificate (a cloned or replaced VM)
    wait_for(lambda: b.last_error is not None, 10, what="the second registration to be refused")
    assert "PERMISSION_DENIED" in str(b.last_error) and "belongs to the connected workload entry" in str(
        b.last_error
    )
    assert not b.connected
    (w,) = cp.store.workloads_json()
    assert (w["cert_serial"], w["connected"]) == (owner, True)
    # Once the owner is gone (disconnected), the replacement registers the address.
    a.stop()
    wait_for(lambda: b.connected, 15, what="the replacement to register")
    (w,) = cp.store.workloads_json()
    assert w["cert_serial"] != owner and w["connected"] is True


def test_heartbeats_keep_the_entry_and_their_loss_removes_it_then_the_grace_period_deletes_it(
    tmp_path: Path,
) -> None:
    c = ControlPlane(tmp_path, LifecycleSettings(heartbeat_interval=1, heartbeat_timeout=4, grace_period=10))
    a = Agents(c)
    try:
        client = a.start("10.0.0.7", group="web", sa="web")
        wait_for(lambda: client.connected, 10, what="registration")
        registered = time.time()

        # Heartbeats (every second) keep it in EDS past the heartbeat timeout.
        def kept_past_timeout() -> bool:
            assert c.eds_names() == ["web-10.0.0.7"]
            w = c.store.get("demo", "web-10.0.0.7")
            return w is not None and w.last_heartbeat > registered + 5

        wait_for(kept_past_timeout, 20, what="heartbeats beyond the timeout")
        client.stop()  # the agent dies: its stream ends, heartbeats stop
        wait_for(lambda: not c.store.workloads_json()[0]["connected"], 5, what="disconnect")
        gone = c.store.workloads_json()[0]
        disconnected = time.time()
        wait_for(lambda: c.eds_names() == [], 15, what="the entry to leave EDS")
        # Out of EDS by the heartbeat timeout, before the grace period deleted the entry.
        assert c.names() == ["web-10.0.0.7"] and gone["delete_at"] is not None
        wait_for(lambda: c.names() == [], 30, what="the grace period to delete the entry")
        assert time.time() - disconnected >= 10 - 1.5  # 10 s after the disconnect (second-rounded times)
    finally:
        a.close()
        c.stop()


def test_leave_confirms_only_after_the_change_was_pushed(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    pushed = threading.Event()

    c: ControlPlane

    def wait_pushed(timeout: float) -> bool:
        seen.append(c.eds_names())  # the entry must already be out of what EDS is built from
        return pushed.wait(timeout)

    c = ControlPlane(tmp_path, FAST, wait_pushed=wait_pushed)
    a = Agents(c)
    try:
        client = a.start("10.0.0.7")
        wait_for(lambda: client.connected, 10, what="registration")
        changes = c.changes
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(client.leave(10)))
        t.start()
        wait_for(lambda: seen, 5, what="wait_pushed to be called")
        assert seen == [[]] and c.changes == changes + 1 and result == []
        pushed.set()
        t.join(10)
        assert result == [True]
        assert c.names() == []
        assert client.leave(1) is True  # repeating is safe
        wait_for(lambda: c.servicer.stream_count == 0, 5, what="the stream to close")
        assert c.names() == []  # no reconnect after leaving
    finally:
        a.close()
        c.stop()


def test_leave_not_confirmed_in_time_returns_false(tmp_path: Path) -> None:
    c = ControlPlane(tmp_path, FAST, wait_pushed=lambda _t: False)
    a = Agents(c)
    try:
        client = a.start("10.0.0.7")
        wait_for(lambda: client.connected, 10, what="registration")
        assert client.leave(10) is False
        assert c.names() == []
        assert client.last_error is not None and "did not all confirm" in client.last_error
    finally:
        a.close()
        c.stop()


def test_fifty_agents_registering_at_once_make_fifty_entries(cp: ControlPlane, agents: Agents) -> None:
    clients = [agents.start(f"10.0.1.{i}") for i in range(1, 51)]
    started = time.monotonic()
    wait_for(lambda: all(c.connected for c in clients), 30, what="50 registrations")
    elapsed = time.monotonic() - started
    assert cp.names() == sorted(f"api-10.0.1.{i}" for i in range(1, 51))
    assert len(cp.store.entries()) == 50
    assert all(c.registrations == 1 for c in clients)
    assert cp.servicer.stream_count == 50
    print(f"50 registrations in {elapsed:.2f}s")
