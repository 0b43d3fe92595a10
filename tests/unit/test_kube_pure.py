"""The pure parts of the Kubernetes integration: protocol selection, the published WorkloadEntry, and
the kubeconfig errors an operator sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmagent.controlplane.kube.client import KubeConfigError, Resource, load_api_client
from vmagent.controlplane.kube.publisher import (
    AUTO_REGISTRATION_ANNOTATION,
    CONNECTED_AT,
    CONTROLLER,
    DISCONNECTED_AT,
    desired_object,
    desired_status,
    published_by,
)
from vmagent.controlplane.kube.services import port_protocol
from vmagent.controlplane.registry.workload_store import WorkloadRecord


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"name": "http", "port": 80}, "HTTP"),
        ({"name": "http-web", "port": 80}, "HTTP"),
        ({"name": "grpc-api", "port": 80}, "GRPC"),
        ({"name": "web", "port": 80, "appProtocol": "http2"}, "HTTP2"),
        ({"name": "http", "port": 80, "appProtocol": "tcp"}, "TCP"),  # appProtocol wins over the name
        ({"name": "tls-x", "port": 443}, "TLS"),
        ({"name": "metrics", "port": 9090}, "TCP"),
        ({"port": 53, "protocol": "UDP"}, "UDP"),
        ({"name": "h", "port": 1, "appProtocol": "kubernetes.io/h2c"}, "HTTP2"),
    ],
)
def test_service_port_protocol_follows_istio_selection(port: dict[str, object], protocol: str) -> None:
    assert port_protocol(port) == protocol


def test_resource_paths() -> None:
    pods = Resource("", "v1", "pods", "Pod")
    we = Resource("networking.istio.io", "v1", "workloadentries", "WorkloadEntry")
    ns = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
    assert pods.collection_path() == "/api/v1/pods"
    assert pods.collection_path("demo") == "/api/v1/namespaces/demo/pods"
    assert we.object_path("demo", "web-10.0.0.1", "status") == (
        "/apis/networking.istio.io/v1/namespaces/demo/workloadentries/web-10.0.0.1/status"
    )
    assert ns.object_path("", "demo") == "/api/v1/namespaces/demo"


def _record(**kw: object) -> WorkloadRecord:
    base: dict[str, object] = dict(
        namespace="demo", name="web-10.0.0.1", group="web", address="10.0.0.1",
        spec={"address": "10.0.0.1", "labels": {"app": "web"}, "serviceAccount": "web"},
        labels={"app": "web"}, annotations={AUTO_REGISTRATION_ANNOTATION: "web"}, has_probe=True,
        healthy=False, health_message="HTTP 500", health_changed_at=1_700_000_100.0,
        health_reported_at=1_700_000_200.0, connected=True, connected_at=1_700_000_000.0,
        disconnected_at=None, last_heartbeat=1_700_000_200.0, expired=False, session="s1",
        hostname="web1", spiffe_id="spiffe://cluster.local/ns/demo/sa/web", cert_serial="01",
        cert_expiry=None, registered_at=1_700_000_000.0,
    )  # fmt: skip
    base.update(kw)
    return WorkloadRecord(**base)  # type: ignore[arg-type]


def test_published_entry_is_named_and_annotated_as_istio_does() -> None:
    group = {"apiVersion": "networking.istio.io/v1", "metadata": {"name": "web", "uid": "u-1"}}
    obj = desired_object(_record(), "cp-0", group)
    meta = obj["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web-10.0.0.1", "demo")
    assert meta["annotations"][AUTO_REGISTRATION_ANNOTATION] == "web"
    assert meta["annotations"][CONTROLLER] == "cp-0"
    assert meta["annotations"][CONNECTED_AT] == "2023-11-14T22:13:20.000000Z"
    assert DISCONNECTED_AT not in meta["annotations"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup", "name": "web", "uid": "u-1",
            "controller": True, "blockOwnerDeletion": False,
        }
    ]  # fmt: skip
    assert obj["spec"]["address"] == "10.0.0.1"
    assert published_by(obj, "cp-0") and not published_by(obj, "cp-1")


def test_disconnected_entry_carries_disconnected_at_and_no_owner_without_a_cluster_group() -> None:
    obj = desired_object(_record(connected=False, disconnected_at=1_700_000_300.0), "cp-0", None)
    ann = obj["metadata"]["annotations"]
    assert ann[DISCONNECTED_AT] == "2023-11-14T22:18:20.000000Z" and CONNECTED_AT not in ann
    assert "ownerReferences" not in obj["metadata"]


def test_healthy_condition_follows_the_probe() -> None:
    cond = desired_status(_record())["conditions"][0]
    assert (cond["type"], cond["status"], cond["message"]) == ("Healthy", "False", "HTTP 500")
    assert desired_status(_record(healthy=True))["conditions"][0]["status"] == "True"
    assert desired_status(_record(has_probe=False)) == {}


def test_kubeconfig_that_does_not_parse_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeConfigError, match=str(bad)):
        load_api_client(bad, in_cluster=False)
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_api_client(tmp_path / "missing", in_cluster=False)


def test_in_cluster_outside_a_pod_says_so() -> None:
    with pytest.raises(KubeConfigError, match="in-cluster"):
        load_api_client(None, in_cluster=True)
