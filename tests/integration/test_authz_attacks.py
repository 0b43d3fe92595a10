"""Issue 20's attacks by one VM on another, against a real control plane over gRPC/mutual TLS on loopback:
each is refused with a clear status and the legitimate workload's config, EDS membership and streams
are untouched (docs/security.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cp_harness import cli
from tests.harness import wait_for
from tests.integration.authz_mesh import API_CLUSTER, AdsStream, Mesh, Vm, node_id
from vmagent.api import registration_pb2, registration_pb2_grpc
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

WEB_KEY = node_id("10.9.0.1", "web-10-9-0-1")
API_KEY = node_id("10.9.0.2", "api-10-9-0-2")
ALL = (CLUSTER, ENDPOINT, LISTENER)
RBAC_POLICY = b"ns[demo]-policy[api-from-web]"


class Joined:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.web, self.api, self.web2 = mesh.vm("web"), mesh.vm("api-sa"), mesh.vm("web")
        self.web_reg = mesh.register(self.web, "web", "10.9.0.1")
        self.api_reg = mesh.register(self.api, "api", "10.9.0.2")
        self.web2_reg = mesh.register(self.web2, "web", "10.9.0.3")
        for c in (self.web_reg, self.api_reg, self.web2_reg):
            wait_for(lambda c=c: c.connected, 15, what="registration")
        meta = {"NAMESPACE": "demo", "WORKLOAD_NAME": "web", "LABELS": {"app": "web"}}
        self.web_ads = mesh.ads(self.web, WEB_KEY, meta, ALL)
        self.api_ads = mesh.ads(
            self.api, API_KEY, {**meta, "WORKLOAD_NAME": "api", "LABELS": {"app": "api"}}, ALL
        )
        for s in (self.web_ads, self.api_ads):
            for _ in ALL:
                s.recv()
        mesh.settle()

    def assert_legitimate_untouched(self, api_versions: dict[str, str]) -> None:
        m = self.mesh
        m.settle()
        assert m.versions(API_KEY) == api_versions, "api's config changed"
        assert RBAC_POLICY in m.inbound_listener(API_KEY), "api lost its AuthorizationPolicy"
        proxy = m.cp.mesh.proxies.get(API_KEY)
        assert proxy is not None and proxy.identity == self.api.identity and proxy.labels == {"app": "api"}
        assert self.api_ads.alive and self.web_ads.alive
        assert self.api_reg.connected and self.web_reg.connected
        streams = {(s["proxy"], s["identity"]) for s in m.cp.ads.status()}
        assert (API_KEY, self.api.identity.uri) in streams
        assert m.api_endpoints(WEB_KEY) == ["10.9.0.2"]
        assert b"spiffe://cluster.local/ns/demo/sa/api-sa" in m.api_cluster_sans(WEB_KEY)
        assert b"/sa/web" not in m.api_cluster_sans(WEB_KEY)


@pytest.fixture
def joined(tmp_path: Path) -> Iterator[Joined]:
    mesh = Mesh(tmp_path)
    try:
        yield Joined(mesh)
    finally:
        mesh.close()


def refused(stream: AdsStream) -> grpc.RpcError:
    assert stream.ended(15), "the stream was not ended"
    assert stream.error is not None
    return stream.error


def test_1_another_identitys_node_id_is_refused_and_metadata_labels_are_ignored(joined: Joined) -> None:
    m = joined.mesh
    before = m.versions(API_KEY)
    assert RBAC_POLICY in m.inbound_listener(API_KEY)
    # web's certificate, api's node id, labels that would strip api's policies.
    attack = m.ads(joined.web, API_KEY, {"NAMESPACE": "demo", "LABELS": {"app": "nothing"}}, ALL)
    err = refused(attack)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "address 10.9.0.2 in namespace demo belongs to workload entry demo/api-10.9.0.2" in str(
        err.details()
    )
    # Same identity as web, another VM's certificate: may not act for web's connected entry either.
    clone = refused(m.ads(joined.web2, WEB_KEY, {"LABELS": {"app": "web"}}, ALL))
    assert clone.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is connected with another certificate" in str(clone.details())
    # web's own certificate and address under another name, claiming app=api: served, but as app=web.
    spoof_key = node_id("10.9.0.1", "evil")
    spoof = m.ads(joined.web, spoof_key, {"LABELS": {"app": "api"}, "WORKLOAD_NAME": "api"}, ALL)
    spoof.recv()
    proxy = m.cp.mesh.proxies.get(spoof_key)
    assert proxy is not None and proxy.labels == {"app": "web"} and proxy.workload_name == "web"
    assert RBAC_POLICY not in m.inbound_listener(spoof_key)
    joined.assert_legitimate_untouched(before)


def test_2_registration_labels_cannot_override_the_groups(joined: Joined) -> None:
    m = joined.mesh
    before = m.versions(API_KEY)
    entry = m.entry("web-10.9.0.3")
    attacker = m.register(joined.web2, "web", "10.9.0.3", labels={"app": "api"})
    wait_for(lambda: attacker.last_error is not None, 15, what="the refusal")
    assert "PERMISSION_DENIED" in str(attacker.last_error)
    assert "label app=api conflicts with app=web of WorkloadGroup demo/web" in str(attacker.last_error)
    assert m.entry("web-10.9.0.3") == entry or m.entry("web-10.9.0.3")["labels"] == {"app": "web"}  # type: ignore[index]
    # Adding a key the group does not set is allowed (and does not move the VM behind api).
    canary = m.register(m.vm("web"), "web", "10.9.0.4", labels={"track": "canary"})
    wait_for(lambda: canary.connected, 15, what="the canary registration")
    assert m.entry("web-10.9.0.4")["labels"] == {"app": "web", "track": "canary"}  # type: ignore[index]
    joined.assert_legitimate_untouched(before)


def test_3_a_connected_address_cannot_be_taken_over_or_left_by_another_vm(joined: Joined) -> None:
    m = joined.mesh
    before = m.versions(API_KEY)
    entry = m.entry("web-10.9.0.1")
    assert entry is not None
    # A raw stream: Register web's address, then Leave.
    stub = registration_pb2_grpc.RegistrationStub(joined.web2.channel())
    msgs = [
        registration_pb2.AgentMessage(register=registration_pb2.Register(group="web", address="10.9.0.1")),
        registration_pb2.AgentMessage(leave=registration_pb2.Leave()),
    ]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Connect(iter(msgs), timeout=15))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        "address 10.9.0.1 in namespace demo belongs to the connected workload entry demo/web-10.9.0.1"
        in str(info.value.details())
    )
    after = m.entry("web-10.9.0.1")
    assert after is not None
    for k in ("cert_serial", "spiffe_id", "labels", "hostname", "connected", "in_eds", "registered_at"):
        assert after[k] == entry[k], k
    # The real VM's heartbeats are still acknowledged on its stream.
    seen = entry["last_heartbeat_at"]
    wait_for(lambda: m.entry("web-10.9.0.1")["last_heartbeat_at"] != seen, 15, what="a heartbeat")  # type: ignore[index]
    assert joined.web_reg.connected
    joined.assert_legitimate_untouched(before)


@pytest.mark.parametrize("by", ["serial", "identity"])
def test_4_revocation_ends_every_stream_and_endpoint(joined: Joined, by: str) -> None:
    m = joined.mesh
    web_before = m.versions(WEB_KEY)
    arg = f"{joined.api.serial:x}" if by == "serial" else joined.api.identity.uri
    r = cli("vmagent-cp", "revoke", f"--{by}", arg, "--state-dir", str(m.opts.state_dir))
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    wait_for(
        lambda: not joined.api_ads.alive and not joined.api_reg.connected, 10, what="api's streams to end"
    )
    wait_for(lambda: m.entry("api-10.9.0.2") is None, 10, what="api's entry to go")
    wait_for(lambda: m.api_endpoints(WEB_KEY) == [], 10, what="api to leave web's EDS")
    elapsed = time.monotonic() - t0
    err = refused(joined.api_ads)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in str(err.details())
    wait_for(lambda: "revoked" in str(joined.api_reg.last_error), 10, what="the registration refusal")
    assert "PERMISSION_DENIED" in str(joined.api_reg.last_error)
    # A new ADS stream of the revoked certificate is refused at once.
    again = refused(m.ads(joined.api, API_KEY, None, ALL))
    assert again.code() == grpc.StatusCode.PERMISSION_DENIED
    # web is untouched: its streams, its entry, its config except api's endpoints.
    assert joined.web_ads.alive and joined.web_reg.connected and m.entry("web-10.9.0.1") is not None
    m.settle()
    assert m.versions(WEB_KEY)[LISTENER] == web_before[LISTENER]
    print(f"revocation by {by}: streams and EDS cleared {elapsed:.2f}s after `vmagent-cp revoke` returned")


def test_5_revoking_a_serial_revokes_its_renewals(joined: Joined) -> None:
    m = joined.mesh
    s2: Vm = joined.api.renew()
    s3: Vm = s2.renew()
    assert len({joined.api.serial, s2.serial, s3.serial}) == 3
    r = cli(
        "vmagent-cp", "revoke", "--serial", f"{joined.api.serial:x}", "--state-dir", str(m.opts.state_dir)
    )
    assert r.returncode == 0, r.stderr

    def renewal_refused(vm: Vm) -> bool:
        try:
            vm.renew()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
            assert "revoked" in str(exc.details())
            return True
        return False

    wait_for(lambda: renewal_refused(s3), 10, what="renewal with the grandchild to be refused")
    assert renewal_refused(s2)
    for vm in (s2, s3):
        err = refused(m.ads(vm, API_KEY, None, ALL))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in str(err.details())
    # Another VM's renewals are unaffected.
    assert joined.web.renew().serial != joined.web.serial
    assert joined.web_ads.alive and joined.web_reg.connected
    assert API_CLUSTER  # the api cluster stays defined for web (endpoints aside)
