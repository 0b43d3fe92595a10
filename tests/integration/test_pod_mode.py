"""Pod mode against a real control plane (``vmagent-cp serve --kubeconfig``) and the test API server
(tests/kubeapi, a FAKE standing in for kube-apiserver, which cannot be installed here): the first
certificate from the pod's ServiceAccount token (re-read at each use), no registration, and xDS for the
pod's proxy whose inbound side comes from the cluster (the Pod and the Service selecting it), not from a
WorkloadEntry."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.cp_harness import ControlPlaneProcess
from tests.integration.test_ads_grpc import RawStream
from tests.kube_lab import endpoint_slice, pod, service
from tests.kubeapi.server import KubeApiServer
from vmagent.agent.config import AgentConfig
from vmagent.agent.join import secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.agent.pod import PodIdentityError, PodSettings, TokenIssuer, prepare
from vmagent.agent.rotation import Rotator
from vmagent.common import wire
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.controlplane.kube.crds import all_crds
from vmagent.lab.wait import wait_for

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
NODE = "sidecar~10.0.0.5~web-1.default~default.svc.cluster.local"


def _sa(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "default"}}


def _pod(name: str, ip: str, sa: str) -> dict[str, Any]:
    obj = pod(name, {"app": name.split("-")[0], "security.istio.io/tlsMode": "istio"}, ip)
    obj["spec"]["serviceAccountName"] = sa
    return obj


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(tmp_path / "kubeapi", bookmark_interval=0.5) as api:
        for crd in all_crds():
            api.create(crd)
        api.create(_sa("web"))
        api.create(_sa("api"))
        api.create(_pod("web-1", "10.0.0.5", "web"))
        api.create(_pod("api-1", "10.0.0.6", "api"))
        api.create(service("web", "10.96.0.20", 80, 8080, {"app": "web"}))
        api.create(endpoint_slice("web", 8080, {"web-1": "10.0.0.5"}))
        yield api


@pytest.fixture
def cp(tmp_path: Path, cluster: KubeApiServer) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(
        tmp_path, extra_args=["--kubeconfig", str(cluster.kubeconfig()), "--lease-namespace", "default"]
    )
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _settings(tmp_path: Path, cluster: KubeApiServer, cp: ControlPlaneProcess) -> PodSettings:
    token = tmp_path / "istio-token"
    token.write_text(cluster.token("default", "web", ["istio-ca"], pod="web-1"))
    return PodSettings(
        cp_address=cp.join_address,
        cp_mtls_address=f"127.0.0.1:{cp.mtls_port}",
        trust_domain="cluster.local",
        namespace="default",
        pod_name="web-1",
        service_account="web",
        pod_ip="10.0.0.5",
        token_file=token,
        ca_file=cp.state_dir / "mesh-root.pem",
    )


def _lds(paths: AgentPaths, cp: ControlPlaneProcess, node_id: str) -> listener_pb2.Listener | grpc.RpcError:
    store_key = paths.key_file.read_bytes()
    chain = paths.chain_file.read_bytes()
    root = paths.root_file.read_bytes()
    ch = secure_channel(f"127.0.0.1:{cp.mtls_port}", root, CP_SERVER_NAME, (store_key, chain))
    stream = RawStream(ch, delta=False)
    try:
        node = discovery_pb2.DiscoveryRequest().node.__class__(id=node_id, cluster="test")
        stream.send(discovery_pb2.DiscoveryRequest(node=node, type_url=wire.LISTENER))
        try:
            resp = stream.recv(timeout=30)
        except grpc.RpcError as exc:
            return exc
        for any_msg in resp.resources:
            listener = listener_pb2.Listener()
            any_msg.Unpack(listener)
            if listener.name == "virtualInbound":
                return listener
        raise AssertionError(f"no virtualInbound in {[r.type_url for r in resp.resources]}")
    finally:
        stream.close()
        ch.close()


def _inbound(paths: AgentPaths, cp: ControlPlaneProcess) -> listener_pb2.Listener | None:
    found = _lds(paths, cp, NODE)
    return found if isinstance(found, listener_pb2.Listener) else None


def test_pod_gets_its_identity_from_the_token_and_its_inbound_side_from_the_cluster(
    tmp_path: Path, cluster: KubeApiServer, cp: ControlPlaneProcess
) -> None:
    paths = AgentPaths(tmp_path / "etc", tmp_path / "state", tmp_path / "run")
    store = prepare(_settings(tmp_path, cluster, cp), paths, wait=30)
    assert store.current().spiffe_id.uri == WEB_ID
    config = AgentConfig.load(paths.config_file)
    assert config.sections["registration"] == {"enabled": False}
    assert config.sections["capture"]["enabled"] is False  # the init step applies capture
    assert (config.namespace, config.group, config.address) == ("default", "web-1", "10.0.0.5")
    with urllib.request.urlopen(cp.http_url + "/api/v1/workloads", timeout=5) as resp:  # noqa: S310
        assert json.loads(resp.read()) == []  # no registration, no WorkloadEntry
    # Inbound: port 8080 of Service web, whose endpoint is this pod's address.
    listener = wait_for(
        lambda: _inbound(paths, cp),
        timeout=30,
        what="LDS for the pod's proxy",
    )
    ports = {c.filter_chain_match.destination_port.value for c in listener.filter_chains}
    assert 8080 in ports
    # The pod's certificate may not act for the api pod's address.
    err = _lds(paths, cp, "sidecar~10.0.0.6~api-1.default~default.svc.cluster.local")
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is pod default/api-1 of service account 'api'" in (err.details() or "")


def test_the_token_file_is_read_at_each_use(
    tmp_path: Path, cluster: KubeApiServer, cp: ControlPlaneProcess
) -> None:
    settings = _settings(tmp_path, cluster, cp)
    issuer = TokenIssuer(settings)
    assert issuer.issue().spiffe_id.uri == WEB_ID
    settings.token_file.write_text(
        cluster.token("default", "web", ["istio-ca"], expires_in=-120, pod="web-1")
    )
    with pytest.raises(
        PodIdentityError, match=r"refused this pod's ServiceAccount token: UNAUTHENTICATED.*expired"
    ):
        issuer.issue()
    # The kubelet rotates the token: the next use reads the new one.
    settings.token_file.write_text(cluster.token("default", "web", ["istio-ca"], pod="web-1"))
    assert issuer.issue().spiffe_id.uri == WEB_ID


def test_an_expired_certificate_is_replaced_with_the_token(tmp_path: Path, cluster: KubeApiServer) -> None:
    """A pod whose certificate expired (a node that slept) cannot renew over mTLS: the rotation gets a
    new certificate with the ServiceAccount token instead (a VM would need a new join)."""
    cp = ControlPlaneProcess(
        tmp_path / "cp",
        cert_ttl="3s",
        extra_args=["--kubeconfig", str(cluster.kubeconfig()), "--lease-namespace", "default"],
    )
    cp.start()
    try:
        settings = _settings(tmp_path, cluster, cp)
        paths = AgentPaths(tmp_path / "etc", tmp_path / "state", tmp_path / "run")
        store = prepare(settings, paths, wait=30)
        first = store.current()
        wait_for(first.expired, timeout=30, what="the 3 s certificate to expire")
        rotator = Rotator(store, lambda: pytest.fail("no mTLS renewal with an expired certificate"),
                          reissue=TokenIssuer(settings).issue)  # fmt: skip
        new = rotator.renew_once()
        assert new.spiffe_id.uri == WEB_ID and new.serial != first.serial
        assert store.load().serial == new.serial  # saved
    finally:
        cp.stop()
