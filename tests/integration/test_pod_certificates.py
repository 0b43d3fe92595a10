"""A pod's first certificate for its Kubernetes ServiceAccount token, over real gRPC and TLS.

A real ``vmagent-cp serve --kubeconfig`` against the test API server (tests/kubeapi, a FAKE standing in
for kube-apiserver, which cannot be installed here): it mints bound ServiceAccount tokens and answers
TokenReview as kube-apiserver does (signature, expiry, audience, bound pod and service account still there).
The identity comes from the review, never from the CSR; a refused token leaves no certificate record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cp_harness import ControlPlaneProcess
from tests.kube_lab import pod
from tests.kubeapi.server import KubeApiServer
from vmagent.agent.join import secure_channel
from vmagent.api import bootstrap_pb2, bootstrap_pb2_grpc, istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import load_chain, spiffe_ids
from vmagent.controlplane.kube.crds import all_crds

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
AUD = "istio-ca"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(tmp_path / "kubeapi") as api:
        for crd in all_crds():
            api.create(crd)
        api.create(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "web", "namespace": "default"},
            }
        )
        web = pod("web-1", {"app": "web"}, "10.0.0.5")
        web["spec"]["serviceAccountName"] = "web"
        api.create(web)
        yield api


@pytest.fixture
def cp(tmp_path: Path, cluster: KubeApiServer) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(
        tmp_path,
        extra_args=["--kubeconfig", str(cluster.kubeconfig()), "--lease-namespace", "default"],
    )
    cp.add_group("demo", "web")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def channel(cp: ControlPlaneProcess) -> Iterator[grpc.Channel]:
    root = (cp.state_dir / "mesh-root.pem").read_bytes()
    ch = secure_channel(cp.join_address, root, CP_SERVER_NAME)
    yield ch
    ch.close()


def _csr(uri: str = "spiffe://cluster.local/ns/istio-system/sa/admin") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pod")])
    )
    b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _create(channel: grpc.Channel, token: str, kind: str | None = None) -> list[x509.Certificate]:
    md = [("authorization", f"Bearer {token}")]
    if kind is not None:
        md.append(("x-vmagent-credential", kind))
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
    resp = stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr=_csr()), metadata=md, timeout=20)
    return load_chain("".join(resp.cert_chain).encode())


def _refused(channel: grpc.Channel, token: str, kind: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _create(channel, token, kind)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    return err


def _records(cp: ControlPlaneProcess) -> list[dict[str, Any]]:
    with urllib.request.urlopen(cp.http_url + "/api/v1/certificates", timeout=5) as resp:  # noqa: S310
        out: list[dict[str, Any]] = json.loads(resp.read())
    return out


def test_a_pods_serviceaccount_token_gets_a_certificate_for_its_serviceaccount(
    cluster: KubeApiServer, cp: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    token = cluster.token("default", "web", [AUD], pod="web-1")
    chain = _create(channel, token)
    assert spiffe_ids(chain[0]) == [WEB_ID]  # from the review, not the CSR's istio-system/admin
    # The same token declared as what it is works too (vmagent's agent in pod mode declares it).
    assert spiffe_ids(_create(channel, token, "kubernetes")[0]) == [WEB_ID]
    recs = [r for r in _records(cp) if r["via"] == "kubernetes"]
    assert len(recs) == 2
    assert all(r["identity"] == WEB_ID and r["hostname"] == "default/web-1" for r in recs)


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("wrong_audience", "is invalid for the target audiences ['istio-ca']"),
        ("api_server_audience", "is invalid for the target audiences ['istio-ca']"),
        ("expired", "service account token has expired"),
        ("pod_deleted", "pod default/web-1 has been deleted"),
        ("not_a_token", "ServiceAccount token refused by the Kubernetes API server"),
    ],
)
def test_refused_serviceaccount_tokens_get_unauthenticated_and_nothing_is_issued(
    cluster: KubeApiServer, cp: ControlPlaneProcess, channel: grpc.Channel, case: str, detail: str
) -> None:
    if case == "wrong_audience":
        token = cluster.token("default", "web", ["some-other-service"], pod="web-1")
    elif case == "api_server_audience":
        token = cluster.token("default", "web", None, pod="web-1")  # the API server's own audience
    elif case == "expired":
        token = cluster.token("default", "web", [AUD], expires_in=-120, pod="web-1")
    elif case == "pod_deleted":
        token = cluster.token("default", "web", [AUD], pod="web-1")
        cluster.delete("v1", "Pod", "web-1", "default")
    else:
        token = "not-a-jwt-at-all"  # garbage, declared as a ServiceAccount token
    err = _refused(channel, token, "kubernetes" if case == "not_a_token" else None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert detail in (err.details() or "")
    assert token not in (err.details() or "")
    assert _records(cp) == []


def test_a_join_token_presented_as_a_serviceaccount_token_is_refused_and_keeps_its_use(
    cp: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    join = cp.token("demo/web")["token"]
    err = _refused(channel, join, "kubernetes")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "a join token was presented as a Kubernetes ServiceAccount token" in (err.details() or "")
    assert _records(cp) == []
    # Its one use is still there: the same token joins as what it is.
    chain = _create(channel, join, "join")
    assert spiffe_ids(chain[0]) == ["spiffe://cluster.local/ns/demo/sa/web"]
    assert [r["via"] for r in _records(cp)] == ["join"]


def test_a_serviceaccount_token_presented_as_a_join_token_is_refused(
    cluster: KubeApiServer, cp: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    token = cluster.token("default", "web", [AUD], pod="web-1")
    err = _refused(channel, token, "join")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "a Kubernetes ServiceAccount token was presented as a join token" in (err.details() or "")
    # The Join RPC (a VM's first certificate and configuration) takes join tokens only.
    stub = bootstrap_pb2_grpc.BootstrapStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Join(
            bootstrap_pb2.JoinRequest(csr=_csr(), hostname="pod"),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=20,
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "is not a join token" in (info.value.details() or "")
    assert _records(cp) == []


def test_a_failing_tokenreview_is_unavailable_and_the_ca_keeps_serving(
    cluster: KubeApiServer, cp: ControlPlaneProcess, channel: grpc.Channel
) -> None:
    token = cluster.token("default", "web", [AUD], pod="web-1")
    cluster.fail_token_reviews(500)
    err = _refused(channel, token)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "the Kubernetes TokenReview failed (500 InternalError)" in (err.details() or "")
    assert _records(cp) == []
    # Joins do not depend on the cluster; once the API server answers again, pods get certificates.
    assert spiffe_ids(_create(channel, cp.token("demo/web")["token"])[0]) == [
        "spiffe://cluster.local/ns/demo/sa/web"
    ]
    cluster.fail_token_reviews(None)
    assert spiffe_ids(_create(channel, token)[0]) == [WEB_ID]
    log = cp.log_path.read_text()
    assert "TokenReview failed" in log and token not in log
    # Forbidden (RBAC without tokenreviews create): the message says what to grant.
    cluster.fail_token_reviews(403, "tokenreviews.authentication.k8s.io is forbidden")
    err = _refused(channel, token)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "403 Forbidden" in (err.details() or "") and "tokenreviews create" in (err.details() or "")


def test_without_a_cluster_serviceaccount_tokens_are_refused(
    tmp_path: Path, control_plane: ControlPlaneProcess
) -> None:
    with KubeApiServer(tmp_path / "other") as api:
        token = api.token("default", "default", [AUD])
    root = (control_plane.state_dir / "mesh-root.pem").read_bytes()
    ch = secure_channel(control_plane.join_address, root, CP_SERVER_NAME)
    try:
        err = _refused(ch, token)
    finally:
        ch.close()
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "this control plane has no cluster" in (err.details() or "")


def test_ca_workers_accept_serviceaccount_tokens_too(tmp_path: Path, cluster: KubeApiServer) -> None:
    """With ``--ca-workers`` the kernel spreads join-port connections over the main process and the
    workers: each of them reviews ServiceAccount tokens with the cluster."""
    from tests.integration.test_ca_workers import _channel, _worker_procs, _workers
    from vmagent.lab.wait import wait_for

    cp = ControlPlaneProcess(
        tmp_path / "cp",
        extra_args=[
            "--kubeconfig", str(cluster.kubeconfig()), "--lease-namespace", "default", "--ca-workers", "2",
        ],
    )  # fmt: skip
    cp.start()
    pids: list[int] = []
    try:
        wait_for(lambda: len(_workers(cp)) == 2, timeout=30, what="2 CA workers to listen")
        pids = [p.pid for p in _worker_procs(cp)]
        token = cluster.token("default", "web", [AUD], pod="web-1")
        for i in range(20):  # a TCP connection of its own each time
            ch = _channel(cp, i)
            try:
                assert spiffe_ids(_create(ch, token)[0]) == [WEB_ID]
            finally:
                ch.close()
    finally:
        cp.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
