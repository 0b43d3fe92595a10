"""Whether a pod gets a sidecar, with the reason (Istio's rules, in this order).

1. Namespaces of the cluster's own machinery (``kube-system``, ``kube-public``, ``kube-node-lease``): never.
2. ``hostNetwork: true``: never (capture would rewrite the node's iptables).
3. Already injected (``sidecar.istio.io/status`` or a container named ``istio-proxy``): nothing to add.
4. The pod's label ``sidecar.istio.io/inject``, else its annotation of that name: ``"true"`` injects,
   ``"false"`` opts out; any other value is ignored (logged).
5. The namespace label ``istio-injection``: ``enabled`` injects; ``disabled`` or absent does not.

A pod's ``"true"`` wins over a namespace without the label (Istio's object selector), but never over
``istio-injection=disabled``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmagent.common.wire import (
    INJECT_LABEL,
    INJECT_STATUS_ANNOTATION,
    NAMESPACE_INJECTION_LABEL,
    SIDECAR_CONTAINER,
)

log = logging.getLogger(__name__)

IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str  # a short slug, used as a metric label: "namespace_enabled", "host_network", ...


def _str_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def already_injected(pod: Mapping[str, Any]) -> bool:
    meta = _str_map(pod.get("metadata"))
    if INJECT_STATUS_ANNOTATION in _str_map(meta.get("annotations")):
        return True
    spec = _str_map(pod.get("spec"))
    containers = spec.get("containers")
    if isinstance(containers, list):
        return any(isinstance(c, Mapping) and c.get("name") == SIDECAR_CONTAINER for c in containers)
    return False


def _pod_choice(meta: Mapping[str, Any]) -> bool | None:
    for where in ("labels", "annotations"):
        value = _str_map(meta.get(where)).get(INJECT_LABEL)
        if value is None:
            continue
        text = str(value).strip().lower()
        if text in ("true", "y", "yes", "enabled"):
            return True
        if text in ("false", "n", "no", "disabled"):
            return False
        log.info("pod %s %s=%r is neither true nor false: ignored", where[:-1], INJECT_LABEL, value)
    return None


def decide(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str]) -> Decision:
    """The decision for ``pod`` (as sent in the AdmissionReview) in ``namespace`` with those labels."""
    if namespace in IGNORED_NAMESPACES:
        return Decision(False, "ignored_namespace")
    spec = _str_map(pod.get("spec"))
    if spec.get("hostNetwork") is True:
        return Decision(False, "host_network")
    if already_injected(pod):
        return Decision(False, "already_injected")
    ns_label = str(namespace_labels.get(NAMESPACE_INJECTION_LABEL, "")).lower()
    if ns_label == "disabled":
        return Decision(False, "namespace_disabled")
    choice = _pod_choice(_str_map(pod.get("metadata")))
    if choice is False:
        return Decision(False, "pod_opt_out")
    if choice is True:
        return Decision(True, "pod_opt_in")
    if ns_label == "enabled":
        return Decision(True, "namespace_enabled")
    return Decision(False, "namespace_not_enabled")
