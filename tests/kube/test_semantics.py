"""API semantics beyond plain CRUD: finalizers, sendInitialEvents, selector transitions in watches,
server-side apply, strategic merge directives."""

from __future__ import annotations

import json
from typing import Any

import requests
from kubernetes import client

from tests.kubeapi import KubeApiServer


def _session(kube_api: KubeApiServer) -> tuple[requests.Session, str]:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {kube_api.admin_token}"
    s.verify = str(kube_api.ca_path)
    s.trust_env = False  # else REQUESTS_CA_BUNDLE-style settings from the environment override verify
    return s, f"{kube_api.url}/api/v1/namespaces/default/configmaps"


def _events(s: requests.Session, url: str, params: dict[str, str], count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with s.get(url, params=params, stream=True, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            out.append(json.loads(line))
            if len(out) == count:
                break
    return out


def test_finalizers_hold_deletion(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "held", "finalizers": ["example.com/x"]}}
    )
    core.delete_namespaced_config_map("held", "default")
    held = core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == []


def test_send_initial_events_and_selector_transitions(kube_api: KubeApiServer) -> None:
    s, url = _session(kube_api)
    s.post(url, json={"metadata": {"name": "a", "labels": {"app": "x"}}}, timeout=30).raise_for_status()
    params = {
        "watch": "1",
        "sendInitialEvents": "true",
        "allowWatchBookmarks": "true",
        "resourceVersionMatch": "NotOlderThan",
        "labelSelector": "app=x",
        "timeoutSeconds": "30",
    }
    first = _events(s, url, params, 2)
    assert [e["type"] for e in first] == ["ADDED", "BOOKMARK"]
    assert first[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    rv = first[1]["object"]["metadata"]["resourceVersion"]
    # Relabelling moves the object out of the selector, then back in.
    s.patch(
        f"{url}/a",
        data=json.dumps({"metadata": {"labels": {"app": "y"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=30,
    ).raise_for_status()
    s.patch(
        f"{url}/a",
        data=json.dumps({"metadata": {"labels": {"app": "x"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=30,
    ).raise_for_status()
    later = _events(
        s, url, {"watch": "1", "resourceVersion": rv, "labelSelector": "app=x", "timeoutSeconds": "30"}, 2
    )
    assert [e["type"] for e in later] == ["DELETED", "ADDED"]


def test_server_side_apply_and_strategic_directives(kube_api: KubeApiServer) -> None:
    s, _ = _session(kube_api)
    url = f"{kube_api.url}/api/v1/namespaces/default/services/web"
    applied = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]},
    }
    yaml_ct = {"Content-Type": "application/apply-patch+yaml"}
    r = s.patch(url, data=json.dumps(applied), headers=yaml_ct, timeout=30)
    assert r.status_code == 400  # fieldManager is required for apply
    r = s.patch(url, params={"fieldManager": "test"}, data=json.dumps(applied), headers=yaml_ct, timeout=30)
    assert r.status_code in (200, 201) and r.json()["spec"]["clusterIP"]
    smp = {"spec": {"ports": [{"port": 81, "$patch": "delete"}, {"port": 80, "name": "http"}]}}
    r = s.patch(
        url,
        data=json.dumps(smp),
        headers={"Content-Type": "application/strategic-merge-patch+json"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.json()["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]
