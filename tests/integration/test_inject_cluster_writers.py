"""What the injection side writes into the cluster, against the test API server (tests/kubeapi, a stand-in
for kube-apiserver): the mesh root as the webhook configuration's caBundle and as the namespaces'
``istio-ca-root-cert`` ConfigMap, written only by the Lease holder, idempotent, restored when changed."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import wait_for
from tests.kubeapi import KubeApiServer
from tests.kubeapi.errors import ApiError
from vmagent.controlplane.inject.cabundle import CaBundlePatcher
from vmagent.controlplane.inject.leader_loop import LeaderLoop
from vmagent.controlplane.inject.rootcert import RootCertPublisher
from vmagent.controlplane.kube.client import KubeClient

WEBHOOK_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "webhook.yaml"
ROOT = b"-----BEGIN CERTIFICATE-----\nMIIB...mesh root...\n-----END CERTIFICATE-----\n"
MWC = ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "vmagent-sidecar-injector")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeApiServer, KubeClient]]:
    with KubeApiServer(tmp_path / "kubeapi") as api:
        client = KubeClient.from_config(api.kubeconfig(), False)
        try:
            yield api, client
        finally:
            client.close()


def bundles(api: KubeApiServer) -> list[Any]:
    return [h["clientConfig"].get("caBundle") for h in api.get(*MWC)["webhooks"]]


def test_the_lease_holder_writes_the_ca_bundle_once_and_restores_it(
    cluster: tuple[KubeApiServer, KubeClient],
) -> None:
    api, client = cluster
    patcher = CaBundlePatcher(client, ROOT, is_leader=lambda: True)
    assert patcher.sync_once() is False
    assert "MutatingWebhookConfiguration vmagent-sidecar-injector is not installed" in patcher.last_error
    api.create(yaml.safe_load(WEBHOOK_CONFIG.read_text()))
    assert patcher.sync_once() is True and patcher.last_error == ""
    assert bundles(api) == [base64.b64encode(ROOT).decode()] * 2
    revision = api.revision
    assert patcher.sync_once() is True and patcher.writes == 1
    assert api.revision == revision  # nothing to change, nothing written
    # Something else rewrote it (a re-install with a bundle, another CA): the next round restores it.
    config = api.get(*MWC)
    config["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(b"other").decode()
    api.update(config)
    assert patcher.sync_once() is True and patcher.writes == 2
    assert bundles(api) == [base64.b64encode(ROOT).decode()] * 2


def test_a_replica_that_does_not_hold_the_lease_writes_nothing() -> None:
    asked = threading.Semaphore(0)
    rounds: list[int] = []

    def is_leader() -> bool:
        asked.release()
        return False

    loop = LeaderLoop("test", lambda: rounds.append(1), is_leader, period=0.01)
    loop.start()
    try:
        for _ in range(20):  # twenty rounds decided, none run
            assert asked.acquire(timeout=30)
    finally:
        loop.stop()
    assert rounds == []


def test_the_root_goes_to_injected_namespaces_only(cluster: tuple[KubeApiServer, KubeClient]) -> None:
    api, client = cluster
    for name, labels in (("apps", {"istio-injection": "enabled"}), ("plain", {}), ("optin", {})):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "one", "namespace": "optin", "labels": {"sidecar.istio.io/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }
    )
    publisher = RootCertPublisher(client, ROOT, is_leader=lambda: True)
    assert publisher.namespaces() == {"apps", "optin"}
    assert publisher.sync_once() is True and publisher.writes == 2
    for ns in ("apps", "optin"):
        cm = api.get("v1", "ConfigMap", "istio-ca-root-cert", ns)
        assert cm["data"] == {"root-cert.pem": ROOT.decode()}
    with pytest.raises(ApiError) as missing:
        api.get("v1", "ConfigMap", "istio-ca-root-cert", "plain")
    assert missing.value.code == 404
    revision = api.revision
    assert publisher.sync_once() is True and api.revision == revision
    cm = api.get("v1", "ConfigMap", "istio-ca-root-cert", "apps")
    cm["data"]["root-cert.pem"] = "stale"
    api.update(cm)
    publisher.start()
    try:
        publisher.trigger()
        wait_for(
            lambda: (
                api.get("v1", "ConfigMap", "istio-ca-root-cert", "apps")["data"]["root-cert.pem"]
                == ROOT.decode()
            ),
            timeout=60,
            what="the stale root replaced",
        )
    finally:
        publisher.stop()
