"""Validation of one parsed YAML document into a ``ConfigObject``.

The envelope (apiVersion, kind, metadata) is checked here; the spec by the kind's schema. All problems
are collected; an object is produced only when there is no error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmagent.controlplane.config.issues import Issue, object_label
from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.config.types import (
    Ctx,
    MapOf,
    Str,
    is_dns1123_label,
    is_dns1123_subdomain,
    key_path,
    show,
)
from vmagent.controlplane.model import ConfigObject

DEFAULT_NAMESPACE = "default"
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")
# Metadata fields Kubernetes adds (kubectl get -o yaml output); accepted and ignored.
_IGNORED_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
)
_STRING_MAP = MapOf(Str())
# Istio kinds vmagent does not support (reported as such by --istio-compat).
ISTIO_KINDS = frozenset(("Sidecar", "EnvoyFilter", "WasmPlugin", "Telemetry", "ProxyConfig")) - set(KINDS)
# Why an Istio kind is refused, appended to the "unsupported kind" error.
_KIND_REASONS = {
    "ProxyConfig": "proxy settings come from the agent's configuration file",
}


@dataclass
class DocResult:
    """The object (None when invalid) and every error and warning found in one document."""

    obj: ConfigObject | None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def validate_document(doc: Any, file: str, index: int) -> DocResult:
    """Check one YAML document (``index`` counts from 1 in the file) and build its ``ConfigObject``."""
    fallback = f"document {index}"
    if not isinstance(doc, dict):
        return DocResult(
            None, [Issue(file, fallback, "", f"expected a mapping (an Istio object), got {show(doc)}")]
        )
    ctx = Ctx()
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    kind = doc.get("kind")
    name = meta.get("name")
    namespace = meta.get("namespace")
    if namespace is None:
        namespace = DEFAULT_NAMESPACE
    label = fallback
    if isinstance(kind, str) and kind and isinstance(name, str) and name and isinstance(namespace, str):
        label = object_label(kind, namespace, name)
    elif isinstance(kind, str) and kind:
        label = f"{kind} ({fallback})"

    for key in doc:
        if key not in _TOP_LEVEL:
            ctx.error(str(key), f"unknown top-level field {str(key)!r}")
    info = None
    if kind is None:
        ctx.error("kind", "required field is missing")
    elif not isinstance(kind, str) or kind not in KINDS:
        ctx.error(
            "kind",
            f"unsupported kind {show(kind)}"
            + (f" ({_KIND_REASONS[kind]})" if isinstance(kind, str) and kind in _KIND_REASONS else "")
            + f", expected one of: {', '.join(KINDS)}",
            compat="kind" if kind in ISTIO_KINDS else "",
        )
    else:
        info = KINDS[kind]
    api_version = doc.get("apiVersion")
    if api_version is None:
        ctx.error("apiVersion", "required field is missing")
    elif info is not None and api_version not in info.api_versions:
        ctx.error(
            "apiVersion",
            f"unsupported apiVersion {show(api_version)} for {kind}, expected one of: {', '.join(info.api_versions)}",
        )
    _check_metadata(doc.get("metadata"), ctx)
    spec = doc.get("spec")
    if spec is None:
        spec = {}
    if info is not None:
        info.spec.check(spec, "spec", ctx)

    errors = [Issue(file, label, p, m, ctx.compat.get((p, m), "")) for p, m in ctx.errors]
    warnings = [Issue(file, label, p, m, ctx.compat.get((p, m), "")) for p, m in ctx.warnings]
    if errors or info is None:
        return DocResult(None, errors, warnings)
    obj = ConfigObject(
        kind=info.kind,
        api_version=str(api_version),
        namespace=str(namespace),
        name=str(name),
        spec=spec,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        source=file,
    )
    return DocResult(obj, errors, warnings)


def _check_metadata(meta: Any, ctx: Ctx) -> None:
    if meta is None:
        ctx.error("metadata", "required field is missing")
        return
    if not isinstance(meta, dict):
        ctx.error("metadata", f"expected a mapping, got {show(meta)}")
        return
    for key, value in meta.items():
        path = key_path("metadata", key)
        if key == "name":
            if not isinstance(value, str):
                ctx.error(path, f"expected a string, got {show(value)}")
            elif not is_dns1123_subdomain(value):
                ctx.error(
                    path,
                    f"invalid name {value!r}, expected a DNS-1123 subdomain (lower case, digits, '-', '.')",
                )
        elif key == "namespace":
            if not isinstance(value, str):
                ctx.error(path, f"expected a string, got {show(value)}")
            elif not is_dns1123_label(value):
                ctx.error(
                    path, f"invalid namespace {value!r}, expected a DNS-1123 label (lower case, digits, '-')"
                )
        elif key in ("labels", "annotations"):
            if value is not None:
                _STRING_MAP.check(value, path, ctx)
        elif key not in _IGNORED_METADATA:
            ctx.error(path, f"unknown field {str(key)!r} in metadata")
    if meta.get("name") is None:
        ctx.error("metadata.name", "required field is missing")
