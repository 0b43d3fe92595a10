"""The official Python client against the test API server: CRUD rules, status, selectors, watch, tokens."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube.workloadentry_crd import WORKLOADENTRY_CRD
from tests.kubeapi import KubeApiServer


def _cm(
    name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data or {},
    }


def test_stale_update_is_409_and_versions_move(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    created = core.create_namespaced_config_map("default", _cm("a", data={"k": "1"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    stale = created.metadata.resource_version
    created.data = {"k": "2"}
    updated = core.replace_namespaced_config_map("a", "default", created)
    assert int(updated.metadata.resource_version) > int(stale)
    created.metadata.resource_version = stale
    created.data = {"k": "3"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("a", "default", created)
    assert e.value.status == 409
    assert core.read_namespaced_config_map("a", "default").data == {"k": "2"}
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("missing", "default")
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", _cm("a"))
    assert e.value.status == 409


def test_bad_bodies_are_refused_naming_the_field(
    kube_api: KubeApiServer, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", _cm("Bad_Name"))
    assert e.value.status == 422 and "metadata.name" in e.value.body
    # Bodies the typed client would not send, posted raw.
    url = f"{kube_api.url}/api/v1/namespaces/default/pods"
    headers = {"Authorization": f"Bearer {kube_api.admin_token}", "Content-Type": "application/json"}
    r = requests.post(url, data=b"{not json", headers=headers, verify=kube_api.ca_path, timeout=30)
    assert r.status_code == 400 and r.json()["kind"] == "Status"
    r = requests.post(
        url,
        json={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
        headers=headers,
        verify=kube_api.ca_path,
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "spec.containers"
    r = requests.get(url, verify=kube_api.ca_path, timeout=30)
    assert r.status_code == 401
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("nowhere", _cm("x"))
    assert e.value.status == 404


def test_status_subresource_is_separate_from_spec(
    kube_api: KubeApiServer, kube_client: client.ApiClient
) -> None:
    ext = client.ApiextensionsV1Api(kube_client)
    ext.create_custom_resource_definition(WORKLOADENTRY_CRD)
    co = client.CustomObjectsApi(kube_client)
    args = ("networking.istio.io", "v1", "default", "workloadentries")
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "vm1"},
        "spec": {"address": "10.0.0.1", "unknownField": 1},
        "status": {"ignored": True},
    }
    we = co.create_namespaced_custom_object(*args, body)
    assert "status" not in we and "unknownField" not in we["spec"]  # status dropped on create, unknown pruned
    assert we["metadata"]["generation"] == 1
    we["status"] = {"conditions": [{"type": "Healthy", "status": "True"}]}
    we["spec"]["address"] = "10.0.0.9"
    after = co.replace_namespaced_custom_object_status(*args, "vm1", we)
    assert after["status"]["conditions"][0]["status"] == "True"
    assert after["spec"]["address"] == "10.0.0.1"  # a status write does not change spec
    after["spec"]["address"] = "10.0.0.2"
    after["status"] = {}
    main = co.replace_namespaced_custom_object(*args, "vm1", after)
    assert main["spec"]["address"] == "10.0.0.2" and main["status"]["conditions"][0]["type"] == "Healthy"
    assert main["metadata"]["generation"] == 2
    patched = co.patch_namespaced_custom_object_status(
        *args, "vm1", {"status": {"conditions": [{"type": "Healthy", "status": "False"}]}}
    )
    assert patched["status"]["conditions"][0]["status"] == "False" and patched["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(
            *args,
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "bad"},
                "spec": {"ports": {"http": 70000}},
            },
        )
    assert e.value.status == 422 and "spec.address" in e.value.body and "spec.ports.http" in e.value.body
    # Deleting the CRD removes its objects and stops serving them.
    ext.delete_custom_resource_definition(WORKLOADENTRY_CRD["metadata"]["name"])
    with pytest.raises(ApiException) as e:
        co.list_namespaced_custom_object(*args)
    assert e.value.status == 404


def test_selectors_and_patches(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map("default", _cm("a", {"app": "x", "tier": "web"}))
    core.create_namespaced_config_map("default", _cm("b", {"app": "y"}))
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_config_map("other", _cm("a", {"app": "x"}))

    def names(**kw: Any) -> list[str]:
        return [
            f"{i.metadata.namespace}/{i.metadata.name}"
            for i in core.list_config_map_for_all_namespaces(**kw).items
        ]

    assert names(label_selector="app=x") == ["default/a", "other/a"]
    assert names(label_selector="app in (x,y),!tier") == ["default/b", "other/a"]
    assert names(field_selector="metadata.namespace=other") == ["other/a"]
    assert names(field_selector="metadata.name=b") == ["default/b"]
    with pytest.raises(ApiException) as e:
        core.list_config_map_for_all_namespaces(field_selector="data.x=1")
    assert e.value.status == 400
    merged = core.patch_namespaced_config_map(
        "a", "default", {"metadata": {"labels": {"tier": None}}, "data": {"k": "v"}}
    )
    assert merged.metadata.labels == {"app": "x"} and merged.data == {"k": "v"}
    patched = core.patch_namespaced_config_map(
        "a", "default", [{"op": "replace", "path": "/data/k", "value": "w"}]
    )
    assert patched.data == {"k": "w"}
    page = core.list_namespaced_config_map("default", limit=1)
    assert len(page.items) == 1 and page.metadata._continue
    rest = core.list_namespaced_config_map("default", limit=1, _continue=page.metadata._continue)
    assert [page.items[0].metadata.name, rest.items[0].metadata.name] == ["a", "b"]


def test_watch_resumes_gets_bookmarks_and_410_after_compaction(
    kube_api: KubeApiServer, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map("default", _cm("a", {"app": "x"}))
    listed = core.list_namespaced_config_map("default", label_selector="app=x")
    rv = listed.metadata.resource_version
    core.create_namespaced_config_map("default", _cm("b", {"app": "x"}))
    core.create_namespaced_config_map("default", _cm("ignored", {"app": "z"}))
    core.delete_namespaced_config_map("a", "default")

    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    bookmarks = 0
    for ev in w.stream(
        core.list_namespaced_config_map,
        "default",
        label_selector="app=x",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=30,
    ):
        if ev["type"] == "BOOKMARK":
            bookmarks += 1
            w.stop()
            continue
        seen.append((ev["type"], ev["object"].metadata.name))
    assert seen == [("ADDED", "b"), ("DELETED", "a")]
    assert bookmarks == 1
    resume = w.resource_version  # the bookmark's revision: everything up to it was delivered
    assert int(resume) == kube_api.revision

    # Resuming from the bookmark after a change sees only the change.
    core.patch_namespaced_config_map("b", "default", {"data": {"k": "1"}})
    w2 = watch.Watch()
    for ev in w2.stream(
        core.list_namespaced_config_map, "default", resource_version=resume, timeout_seconds=30
    ):
        assert (ev["type"], ev["object"].metadata.name, ev["object"].data) == ("MODIFIED", "b", {"k": "1"})
        w2.stop()

    # After compaction the old revision is gone: the stream's ERROR event becomes a 410 for the client.
    kube_api.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=resume, timeout_seconds=30
        ):
            pass
    assert e.value.status == 410
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map("default", resource_version=resume, resource_version_match="Exact")
    assert e.value.status == 410


def test_dropped_watch_breaks_the_stream(kube_api: KubeApiServer, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    outcome: list[str] = []
    started = threading.Event()

    def run() -> None:
        try:
            for ev in watch.Watch().stream(
                core.list_namespaced_config_map, "default", resource_version=rv, _request_timeout=60
            ):
                outcome.append(ev["type"])
                started.set()
            outcome.append("ended")
        except Exception as e:
            outcome.append(f"error:{type(e).__name__}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    core.create_namespaced_config_map("default", _cm("trigger"))
    assert started.wait(30)
    kube_api.drop_watches()
    t.join(30)
    assert not t.is_alive()
    assert outcome[0] == "ADDED" and outcome[-1].startswith("error:")


def test_token_request_and_review(kube_api: KubeApiServer, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    auth = client.AuthenticationV1Api(kube_client)
    core.create_namespaced_service_account("default", {"metadata": {"name": "web"}})
    pod = core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "web-1"},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app:1"}]},
        },
    )
    tr = core.create_namespaced_service_account_token(
        "web",
        "default",
        {
            "spec": {
                "audiences": ["istio-ca"],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": "web-1",
                    "uid": pod.metadata.uid,
                },
            }
        },
    )
    token = tr.status.token

    def review(tok: str, audiences: list[str]) -> Any:
        return auth.create_token_review({"spec": {"token": tok, "audiences": audiences}}).status

    ok = review(token, ["istio-ca"])
    assert ok.authenticated and ok.user.username == "system:serviceaccount:default:web"
    assert ok.user.extra["authentication.kubernetes.io/pod-name"] == ["web-1"]
    assert not review(token, ["other"]).authenticated
    short = kube_api.token("default", "web", ["istio-ca"], expires_in=1)
    deadline = time.monotonic() + 30
    while review(short, ["istio-ca"]).authenticated and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "expired" in review(short, ["istio-ca"]).error
    core.delete_namespaced_pod("web-1", "default")
    gone = review(token, ["istio-ca"])
    assert not gone.authenticated and "pod" in gone.error
    # A service account token is also a bearer credential for the API itself.
    api_token = kube_api.token("default", "web")
    tok_client = client.ApiClient(kube_client.configuration)
    tok_client.configuration.api_key = {"authorization": "Bearer " + api_token}
    assert client.CoreV1Api(tok_client).read_namespace("default").metadata.name == "default"


def test_leases_take_over_with_preconditions(kube_client: client.ApiClient) -> None:
    co = client.CoordinationV1Api(kube_client)
    lease = co.create_namespaced_lease(
        "default",
        {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
    )
    lease.spec.holder_identity = "b"
    taken = co.replace_namespaced_lease("leader", "default", lease)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as e:
        co.replace_namespaced_lease("leader", "default", lease)  # stale resourceVersion
    assert e.value.status == 409
    assert (
        co.read_namespaced_lease("leader", "default").spec.holder_identity
        == taken.spec.holder_identity
        == "b"
    )


def test_webhook_configurations_and_namespaces(kube_client: client.ApiClient) -> None:
    adm = client.AdmissionregistrationV1Api(kube_client)
    hook = {
        "metadata": {"name": "vmagent-injector"},
        "webhooks": [
            {
                "name": "inject.vmagent.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {
                    "service": {"name": "vmagent-cp", "namespace": "vmagent", "path": "/inject"}
                },
            }
        ],
    }
    adm.create_mutating_webhook_configuration(hook)
    stored = adm.read_mutating_webhook_configuration("vmagent-injector")
    assert stored.webhooks[0].client_config.service.path == "/inject"
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": "gone"}})
    assert core.read_namespaced_service_account("default", "gone").metadata.uid  # as the SA controller makes
    core.create_namespaced_config_map("gone", _cm("x"))
    core.delete_namespace("gone")
    assert [
        c.metadata.name
        for c in core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=gone").items
    ] == []


def test_product_never_imports_the_test_server() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "vmagent"
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if "tests.kubeapi" in p.read_text() or "tests/kubeapi" in p.read_text()
    ]
    assert offenders == []
