"""The mesh root as ConfigMap ``istio-ca-root-cert`` (key ``root-cert.pem``), which injected sidecars
mount at ``/var/run/secrets/istio`` to verify the control plane (Istio's name and layout).

The replica holding the Lease writes it every ``period`` seconds (and when it takes the Lease) into each
namespace labelled ``istio-injection=enabled`` and each namespace with a pod labelled
``sidecar.istio.io/inject=true``; an existing one with other contents is updated (resourceVersion-checked).
A pod injected in a namespace that has no ConfigMap yet waits in ContainerCreating (the kubelet retries the
mount) until the next round writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vmagent.common.wire import INJECT_LABEL, NAMESPACE_INJECTION_LABEL, ROOT_CERT_CONFIGMAP
from vmagent.controlplane.inject.leader_loop import LeaderLoop
from vmagent.controlplane.inject.namespaces import NAMESPACES
from vmagent.controlplane.inject.policy import IGNORED_NAMESPACES
from vmagent.controlplane.kube.client import KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PODS = Resource("", "v1", "pods", "Pod")
ROOT_CERT_KEY = "root-cert.pem"


class RootCertPublisher:
    def __init__(
        self, client: KubeClient, root_pem: bytes, is_leader: Callable[[], bool], period: float = 30.0
    ) -> None:
        self.client = client
        self.root = root_pem.decode()
        self.writes = 0
        self.last_error = ""
        self.loop = LeaderLoop("root-cert-publisher", self.sync_once, is_leader, period)
        self.start, self.stop, self.trigger = self.loop.start, self.loop.stop, self.loop.trigger

    def namespaces(self) -> set[str]:
        """Where sidecars may be injected: labelled namespaces and those of opted-in pods."""
        out: set[str] = set()
        labelled = self.client.get(
            NAMESPACES.collection_path(), [("labelSelector", f"{NAMESPACE_INJECTION_LABEL}=enabled")]
        )
        out.update(str((n.get("metadata") or {}).get("name", "")) for n in labelled.get("items") or [])
        pods = self.client.get(PODS.collection_path(), [("labelSelector", f"{INJECT_LABEL}=true")])
        out.update(str((p.get("metadata") or {}).get("namespace", "")) for p in pods.get("items") or [])
        return {n for n in out if n and n not in IGNORED_NAMESPACES}

    def sync_once(self) -> bool:
        """One round; True when every namespace found carries the current root."""
        try:
            namespaces = self.namespaces()
        except KubeError as exc:
            self._error(f"namespaces for {ROOT_CERT_CONFIGMAP} not listed: {exc}")
            return False
        ok = True
        for ns in sorted(namespaces):
            try:
                self.ensure(ns)
            except KubeError as exc:
                ok = False
                self._error(f"ConfigMap {ns}/{ROOT_CERT_CONFIGMAP} not written: {exc}")
        if ok:
            self.last_error = ""
        return ok

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    def ensure(self, namespace: str) -> None:
        path = CONFIGMAPS.object_path(namespace, ROOT_CERT_CONFIGMAP)
        try:
            current = self.client.get(path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": ROOT_CERT_CONFIGMAP,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "vmagent-cp"},
                },
                "data": {ROOT_CERT_KEY: self.root},
            }
            try:
                self.client.request("POST", CONFIGMAPS.collection_path(namespace), body=body)
            except KubeError as create_exc:
                if create_exc.status != 409:  # another replica (or an earlier round) created it
                    raise
                return
            self.writes += 1
            log.info("wrote ConfigMap %s/%s (the mesh root)", namespace, ROOT_CERT_CONFIGMAP)
            return
        if (current.get("data") or {}).get(ROOT_CERT_KEY) == self.root:
            return
        current["data"] = {**(current.get("data") or {}), ROOT_CERT_KEY: self.root}
        self.client.request("PUT", path, body=current)  # carries the read resourceVersion
        self.writes += 1
        log.info("updated ConfigMap %s/%s to the current mesh root", namespace, ROOT_CERT_CONFIGMAP)
