"""The RFC 6902 JSON Patch that injects the sidecar, against the pod exactly as the API server sent it.

Only ``add`` and ``replace`` operations at paths that exist in the sent pod (or whose parent does), so
the patch applies to that pod and to nothing else; fields the webhook does not know are never touched.
A pod whose shape does not allow a safe patch (``spec.containers`` not a list, a volume or container
name the sidecar needs already taken, ...) raises ``UnpatchableError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmagent.common.constants import AGENT_STATUS_PORT
from vmagent.common.wire import INIT_CONTAINER, INJECT_STATUS_ANNOTATION, SIDECAR_CONTAINER
from vmagent.controlplane.inject.probes import UnpatchableError, rewrite_probes
from vmagent.controlplane.inject.template import (
    SidecarSettings,
    init_container,
    sidecar_container,
    status_annotation,
    volumes,
)

Op = dict[str, Any]

TLS_MODE_LABEL = "security.istio.io/tlsMode"
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) from its unescaped parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UnpatchableError(f"{where}{key}: expected an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise UnpatchableError(f"{where}{key}: expected a list, got {type(value).__name__}")
    return value


def _add_entries(
    ops: list[Op], parent: tuple[str, ...], current: Mapping[str, Any] | None, new: dict[str, str]
) -> None:
    """Add the keys of ``new`` not already in ``current`` (an object that may be absent)."""
    missing = {k: v for k, v in new.items() if current is None or k not in current}
    if not missing:
        return
    if current is None:
        ops.append({"op": "add", "path": pointer(*parent), "value": missing})
        return
    for k, v in missing.items():
        ops.append({"op": "add", "path": pointer(*parent, k), "value": v})


def _append(
    ops: list[Op], path: tuple[str, ...], current: list[Any] | None, items: list[dict[str, Any]]
) -> None:
    if current is None:
        ops.append({"op": "add", "path": pointer(*path), "value": items})
        return
    for item in items:
        ops.append({"op": "add", "path": pointer(*path) + "/-", "value": item})


def _names(items: list[Any] | None) -> set[str]:
    return {str(i.get("name")) for i in items or [] if isinstance(i, Mapping) and "name" in i}


def _canonical_name(meta: Mapping[str, Any], labels: Mapping[str, Any] | None) -> str:
    labels = labels or {}
    for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
        if isinstance(labels.get(key), str) and labels[key]:
            return str(labels[key])
    name = str(meta.get("name") or meta.get("generateName") or "")
    return name[:63].rstrip("-_.") or "unknown"  # a label value: at most 63 characters


def injection_patch(pod: Mapping[str, Any], settings: SidecarSettings) -> list[Op]:
    """The operations that add the sidecar to ``pod``; ``UnpatchableError`` when it cannot be done safely."""
    meta = _mapping(pod, "metadata", "") or {}
    spec = _mapping(pod, "spec", "")
    if spec is None:
        raise UnpatchableError("spec: missing")
    containers = _list(spec, "containers", "spec.")
    if not containers:
        raise UnpatchableError("spec.containers: missing or empty")
    init = _list(spec, "initContainers", "spec.")
    vols = _list(spec, "volumes", "spec.")
    taken = (_names(containers) | _names(init)) & {SIDECAR_CONTAINER, INIT_CONTAINER}
    if taken:
        raise UnpatchableError(f"spec.containers: a container is already named {sorted(taken)[0]!r}")
    wanted = volumes()
    clash = _names(vols) & {v["name"] for v in wanted}
    if clash:
        raise UnpatchableError(f"spec.volumes: a volume is already named {sorted(clash)[0]!r}")

    ops: list[Op] = []
    labels = _mapping(meta, "labels", "metadata.")
    annotations = _mapping(meta, "annotations", "metadata.")
    rewritten, probers = rewrite_probes(containers, AGENT_STATUS_PORT)
    for r in rewritten:
        ops.append(
            {
                "op": "replace",
                "path": pointer("spec", "containers", r.container_index, r.field),
                "value": r.probe,
            }
        )
    _append(ops, ("spec", "initContainers"), init, [init_container(settings)])
    _append(ops, ("spec", "containers"), containers, [sidecar_container(settings, probers)])
    _append(ops, ("spec", "volumes"), vols, wanted)
    first_app = next((c.get("name") for c in containers if isinstance(c, Mapping)), None)
    new_annotations = {
        INJECT_STATUS_ANNOTATION: status_annotation(),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(AGENT_STATUS_PORT),
        "prometheus.io/path": "/stats/prometheus",
    }
    if isinstance(first_app, str):
        new_annotations["kubectl.kubernetes.io/default-container"] = first_app
    version = (labels or {}).get("version")
    new_labels = {
        TLS_MODE_LABEL: "istio",
        CANONICAL_NAME_LABEL: _canonical_name(meta, labels),
        CANONICAL_REVISION_LABEL: str(version) if isinstance(version, str) and version else "latest",
    }
    if "metadata" not in pod:
        ops.append(
            {
                "op": "add",
                "path": "/metadata",
                "value": {"labels": new_labels, "annotations": new_annotations},
            }
        )
    else:
        _add_entries(ops, ("metadata", "labels"), labels, new_labels)
        _add_entries(ops, ("metadata", "annotations"), annotations, new_annotations)
    return ops
