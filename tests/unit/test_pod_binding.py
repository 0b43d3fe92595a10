"""The xDS server knows a pod's sidecar from the cluster: the Pod at the node id's address must run as
the caller's service account, and the proxy gets the Pod's labels (no WorkloadEntry, no registration)."""

from __future__ import annotations

import pytest

from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.config.snapshot import ConfigSnapshot
from vmagent.controlplane.kube.services import PodView
from vmagent.controlplane.proxies import ProxyBinder
from vmagent.controlplane.xds.server import Refused

WEB = SpiffeId("cluster.local", "default", "web")
PODS = {("default", "10.0.0.5"): [PodView("default", "web-1", {"app": "web", "version": "v1"}, "web")]}


def _binder() -> ProxyBinder:
    return ProxyBinder(
        "cluster.local",
        lambda ns, ip: [],
        lambda: ConfigSnapshot({}),
        pods_at=lambda ns, ip: PODS.get((ns, ip), []),
    )


def test_a_pod_sidecar_gets_its_pods_labels() -> None:
    proxy = _binder().bind_id(WEB, 1, "sidecar~10.0.0.5~web-1.default~default.svc.cluster.local", {})
    assert proxy.labels == {"app": "web", "version": "v1"}
    assert proxy.ip == "10.0.0.5"


def test_another_service_account_may_not_act_for_the_pod() -> None:
    other = SpiffeId("cluster.local", "default", "api")
    with pytest.raises(Refused, match="is pod default/web-1 of service account 'web'"):
        _binder().bind_id(other, 1, "sidecar~10.0.0.5~x.default~default.svc.cluster.local", {})


def test_no_pod_at_the_address_gives_no_labels() -> None:
    proxy = _binder().bind_id(WEB, 1, "sidecar~10.0.0.6~web-2.default~default.svc.cluster.local", {})
    assert proxy.labels == {}
