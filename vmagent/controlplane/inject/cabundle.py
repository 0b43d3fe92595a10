"""The mesh root as ``caBundle`` of the MutatingWebhookConfiguration, written by the Lease holder.

The API server verifies the webhook's serving certificate (issued by the mesh CA) against the
``caBundle`` of each webhook in the configuration. The manifests ship without one; the replica holding the
Lease writes the mesh root into every webhook of ``vmagent-sidecar-injector`` that calls the control plane's
Service, when it takes the Lease and every ``period`` seconds after (an operator's ``kubectl apply`` of
the manifests keeps it: client-side apply leaves fields it never set). Writes carry the resourceVersion; a
``409 Conflict`` is retried on the next round. A configuration that is not installed is logged once.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from vmagent.controlplane.inject.leader_loop import LeaderLoop
from vmagent.controlplane.kube.client import KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

WEBHOOK_CONFIG_NAME = "vmagent-sidecar-injector"
MUTATING_WEBHOOKS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)


def with_ca_bundle(config: dict[str, Any], bundle: str) -> dict[str, Any] | None:
    """``config`` with ``bundle`` in every webhook that calls a Service; None when nothing changes."""
    changed = False
    hooks = []
    for hook in config.get("webhooks") or []:
        client = dict(hook.get("clientConfig") or {})
        if "service" in client and client.get("caBundle") != bundle:
            client["caBundle"] = bundle
            hook = {**hook, "clientConfig": client}
            changed = True
        hooks.append(hook)
    return {**config, "webhooks": hooks} if changed else None


class CaBundlePatcher:
    """Keeps the configuration's caBundle equal to ``root_pem`` while ``is_leader()`` holds."""

    def __init__(
        self,
        client: KubeClient,
        root_pem: bytes,
        is_leader: Callable[[], bool],
        name: str = WEBHOOK_CONFIG_NAME,
        period: float = 10.0,
    ) -> None:
        self.client = client
        self.bundle = base64.b64encode(root_pem).decode()
        self.name = name
        self.writes = 0
        self.last_error = ""
        self.loop = LeaderLoop("webhook-cabundle", self.sync_once, is_leader, period)
        self.start, self.stop, self.trigger = self.loop.start, self.loop.stop, self.loop.trigger

    def sync_once(self) -> bool:
        """One round; True when the configuration carries the bundle afterwards."""
        path = MUTATING_WEBHOOKS.object_path("", self.name)
        try:
            current = self.client.get(path)
            updated = with_ca_bundle(current, self.bundle)
            if updated is not None:
                self.client.request("PUT", path, body=updated)  # carries the read resourceVersion
                self.writes += 1
                log.info("wrote the mesh root into MutatingWebhookConfiguration %s", self.name)
        except KubeError as exc:
            message = (
                f"MutatingWebhookConfiguration {self.name} is not installed; no sidecar injection until it is"
                if exc.status == 404
                else f"MutatingWebhookConfiguration {self.name}: caBundle not written: {exc}"
            )
            if message != self.last_error:
                (log.info if exc.status in (404, 409) else log.warning)("%s", message)
            self.last_error = message
            return False
        self.last_error = ""
        return True
