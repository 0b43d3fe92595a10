"""A raw gRPC xDS client against the ADS server over TLS: delta protocol, SotW filtering, authentication."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from tests.harness import wait_for
from tests.integration.test_ads_support import (
    AdsHarness,
    Issued,
    TestCa,
    client_channel,
    start_ads,
    types_state,
)
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, Snapshot

TIMEOUT = 5.0


def snapshot(endpoints: dict[str, int]) -> Snapshot:
    """EDS clusters named after ``endpoints`` keys, each with one endpoint on the given port."""
    msgs: list[Any] = []
    for name, port in endpoints.items():
        msgs.append(cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS))
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        sa = cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = "127.0.0.1", port
        msgs.append(cla)
    return Snapshot.from_messages(msgs)


class RawStream:
    """One ADS stream driven by hand: ``send`` requests, ``recv`` responses (with a deadline)."""

    def __init__(self, channel: grpc.Channel, delta: bool) -> None:
        self._out: queue.Queue[Any] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(iter(self._out.get, None))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for resp in self.call:
                self._in.put(resp)
        except grpc.RpcError as exc:
            self._in.put(exc)

    def send(self, req: Any) -> None:
        self._out.put(req)

    def recv(self, timeout: float = TIMEOUT) -> Any:
        item = self._in.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def nothing_within(self, timeout: float) -> bool:
        try:
            self._in.get(timeout=timeout)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()


def node(node_id: str) -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster="test")


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


@pytest.fixture
def web(ca: TestCa) -> Issued:
    return ca.workload("demo", "web")


@pytest.fixture
def ads(ca: TestCa) -> Iterator[AdsHarness]:
    h = start_ads(ca)
    try:
        yield h
    finally:
        h.runner.stop()


def test_delta_sends_only_changed_resources_and_removals(ca: TestCa, web: Issued, ads: AdsHarness) -> None:
    ads.cache.set("web-1", snapshot({"a": 1001, "b": 1002}))
    with client_channel(ca, ads.port, web) as ch:
        s = RawStream(ch, delta=True)
        try:
            s.send(discovery_pb2.DeltaDiscoveryRequest(node=node("web-1"), type_url=CLUSTER))
            cds = s.recv()
            assert cds.type_url == CLUSTER
            assert sorted(r.name for r in cds.resources) == ["a", "b"]
            s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce))
            s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=["a"]))
            eds = s.recv()
            assert [r.name for r in eds.resources] == ["a"]
            s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=eds.nonce))
            wait_for(
                lambda: types_state(ads.ads, "web-1") == {"CDS": "synced", "EDS": "synced"},
                TIMEOUT,
                what="delta ACKs recorded",
            )

            # b's endpoint changes: nothing is sent (not subscribed). a's changes: only a, only EDS.
            ads.cache.set("web-1", snapshot({"a": 1001, "b": 2002}))
            assert s.nothing_within(0.3)
            ads.cache.set("web-1", snapshot({"a": 2001, "b": 2002}))
            eds2 = s.recv()
            assert eds2.type_url == ENDPOINT and [r.name for r in eds2.resources] == ["a"]
            assert eds2.resources[0].version != eds.resources[0].version
            assert eds2.nonce != eds.nonce
            s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=eds2.nonce))

            # Cluster b goes away: CDS names it in removed_resources and sends nothing else.
            ads.cache.set("web-1", snapshot({"a": 2001}))
            cds2 = s.recv()
            assert cds2.type_url == CLUSTER and list(cds2.removed_resources) == ["b"] and not cds2.resources

            # A NACK is recorded with the proxy's text and the resource is not pushed again.
            s.send(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=CLUSTER,
                    response_nonce=cds2.nonce,
                    error_detail=status_pb2.Status(code=3, message="cluster b: still in use"),
                )
            )
            wait_for(lambda: types_state(ads.ads, "web-1").get("CDS") == "nacked", TIMEOUT, what="NACK")
            entry = ads.ads.status()[0]
            assert entry["types"]["CDS"]["error"] == "cluster b: still in use"
            assert entry["protocol"] == "delta"
            assert s.nothing_within(0.3)
        finally:
            s.close()


def test_sotw_sends_requested_endpoints_only_and_ignores_repeated_acks(
    ca: TestCa, web: Issued, ads: AdsHarness
) -> None:
    ads.cache.set("web-1", snapshot({"a": 1001, "b": 1002, "c": 1003}))
    with client_channel(ca, ads.port, web) as ch:
        s = RawStream(ch, delta=False)
        try:
            s.send(discovery_pb2.DiscoveryRequest(node=node("web-1"), type_url=CLUSTER))
            cds = s.recv()
            assert len(cds.resources) == 3  # wildcard
            s.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce
                )
            )
            s.send(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a", "c"]))
            eds = s.recv()
            got = [endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name for r in eds.resources]
            assert got == ["a", "c"]
            s.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=ENDPOINT,
                    resource_names=["a", "c"],
                    version_info=eds.version_info,
                    response_nonce=eds.nonce,
                )
            )
            assert s.nothing_within(0.3)  # an ACK with an unchanged subscription gets no answer
            # A request with an old nonce is ignored.
            s.send(
                discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["b"], response_nonce="old")
            )
            assert s.nothing_within(0.3)
            # A changed subscription is answered at once.
            s.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=ENDPOINT,
                    resource_names=["b"],
                    version_info=eds.version_info,
                    response_nonce=eds.nonce,
                )
            )
            eds2 = s.recv()
            assert [
                endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name for r in eds2.resources
            ] == ["b"]
        finally:
            s.close()


def test_stream_is_bound_to_the_certificate_identity(ca: TestCa) -> None:
    """The callback maps the certificate's identity to a key; a node id claiming another proxy gains nothing."""

    def by_identity(identity: SpiffeId, _serial: int, nd: base_pb2.Node) -> str:
        return f"{identity.namespace}/{identity.service_account}"

    h = start_ads(ca, on_connected=by_identity)
    try:
        h.cache.set("demo/web", snapshot({"web-only": 1}))
        h.cache.set("demo/api", snapshot({"api-only": 2}))
        with client_channel(ca, h.port, ca.workload("demo", "web")) as ch:
            s = RawStream(ch, delta=False)
            try:
                s.send(discovery_pb2.DiscoveryRequest(node=node("api"), type_url=CLUSTER))
                cds = s.recv()
                assert [cluster_pb2.Cluster.FromString(r.value).name for r in cds.resources] == ["web-only"]
                h.cache.set("demo/api", snapshot({"api-only": 3, "more": 4}))
                assert s.nothing_within(0.3)
                assert h.ads.status()[0]["identity"] == "spiffe://cluster.local/ns/demo/sa/web"
            finally:
                s.close()
        wait_for(lambda: h.disconnected == ["demo/web"], TIMEOUT, what="disconnect callback")
        wait_for(lambda: h.ads.status() == [], TIMEOUT, what="stream gone from status")
    finally:
        h.runner.stop()


def _first_error(ca: TestCa, port: int, client: Issued | None, delta: bool = False) -> grpc.RpcError:
    with client_channel(ca, port, client) as ch:
        s = RawStream(ch, delta=delta)
        try:
            req: Any = (discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest)(
                node=node("web-1"), type_url=CLUSTER
            )
            s.send(req)
            with pytest.raises(grpc.RpcError) as info:
                s.recv(timeout=10)
            return info.value
        finally:
            s.close()


@pytest.mark.parametrize("delta", [False, True])
def test_no_client_certificate_is_unauthenticated(ca: TestCa, delta: bool) -> None:
    # A port that also serves certificate requests authenticated by join tokens cannot demand a client
    # certificate in the handshake; the ADS service itself then refuses streams without one.
    h = start_ads(ca, require_client_auth=False)
    try:
        err = _first_error(ca, h.port, None, delta)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate" in (err.details() or "")
        assert h.connected == []
    finally:
        h.runner.stop()


def test_mtls_port_rejects_a_client_without_certificate_in_the_handshake(ca: TestCa, ads: AdsHarness) -> None:
    err = _first_error(ca, ads.port, None)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert ads.connected == []


def test_refusing_callback_is_permission_denied(ca: TestCa, web: Issued) -> None:
    def refuse(identity: SpiffeId, _serial: int, nd: base_pb2.Node) -> str:
        raise PermissionError(f"no WorkloadEntry for {identity} with node {nd.id}")

    h = start_ads(ca, on_connected=refuse)
    try:
        err = _first_error(ca, h.port, web, delta=True)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == "no WorkloadEntry for spiffe://cluster.local/ns/demo/sa/web with node web-1"
        assert h.ads.status() == []
    finally:
        h.runner.stop()


def test_revoked_certificate_is_permission_denied(ca: TestCa, web: Issued) -> None:
    seen: list[tuple[str, int]] = []

    def revoked(identity: SpiffeId, serial: int) -> bool:
        seen.append((identity.uri, serial))
        return serial == web.serial

    h = start_ads(ca, is_revoked=revoked)
    try:
        err = _first_error(ca, h.port, web)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (err.details() or "")
        assert seen == [("spiffe://cluster.local/ns/demo/sa/web", web.serial)]
        assert h.connected == []
        # Another workload's certificate is still served.
        with client_channel(ca, h.port, ca.workload("demo", "api")) as ch:
            s = RawStream(ch, delta=False)
            try:
                h.cache.set("web-1", snapshot({}))
                s.send(discovery_pb2.DiscoveryRequest(node=node("web-1"), type_url=CLUSTER))
                assert s.recv().type_url == CLUSTER
            finally:
                s.close()
    finally:
        h.runner.stop()


def test_disconnect_ends_a_live_stream_with_permission_denied(
    ca: TestCa, web: Issued, ads: AdsHarness
) -> None:
    ads.cache.set("web-1", snapshot({"a": 1}))
    with client_channel(ca, ads.port, web) as ch:
        s = RawStream(ch, delta=False)
        try:
            s.send(discovery_pb2.DiscoveryRequest(node=node("web-1"), type_url=CLUSTER))
            assert s.recv().type_url == CLUSTER
            assert ads.ads.disconnect("other", "not this one") == 0
            assert (
                ads.ads.disconnect("web-1", "workload spiffe://cluster.local/ns/demo/sa/web was revoked") == 1
            )
            with pytest.raises(grpc.RpcError) as info:
                s.recv()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "workload spiffe://cluster.local/ns/demo/sa/web was revoked"
        finally:
            s.close()
    wait_for(lambda: ads.disconnected == ["web-1"], TIMEOUT, what="disconnect callback")


def test_sync_servicers_share_the_aio_server(ca: TestCa, web: Issued) -> None:
    """The CA/registration services (plain gRPC servicers) can be served on the ADS port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from vmagent.controlplane.xds.runner import AioServerThread

    srv = ca.server()
    creds = grpc.ssl_server_credentials([(srv.key_pem, srv.cert_pem)], ca.root_pem, require_client_auth=True)
    checker = health.HealthServicer()  # a servicer with plain (non-async) methods
    checker.set("vmagent", health_pb2.HealthCheckResponse.SERVING)
    runner = AioServerThread(
        "127.0.0.1:0", creds, lambda s: health_pb2_grpc.add_HealthServicer_to_server(checker, s)
    )
    port = runner.start()
    try:
        with client_channel(ca, port, web) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="vmagent"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        runner.stop()
