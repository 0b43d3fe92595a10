"""The kinds the test API server serves: built-ins, plus those of each CustomResourceDefinition once created."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    resource: str  # plural, lower case: "endpointslices"
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status: bool = False  # has the status subresource
    verbs: tuple[str, ...] = tuple(ALL_VERBS)
    categories: tuple[str, ...] = ()
    # extra columns of `kubectl get` (CRD additionalPrinterColumns): (name, type, jsonPath)
    columns: tuple[tuple[str, str, str], ...] = ()
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)  # CRD openAPIV3Schema
    crd: str = ""  # the name of the CRD that defines it, "" for built-ins

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


def _t(group: str, version: str, resource: str, kind: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType(group, version, resource, kind, namespaced, **kw)


BUILTINS: tuple[ResourceType, ...] = (
    _t(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        status=True,
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _t("", "v1", "services", "Service", True, short_names=("svc",), status=True, categories=("all",)),
    _t("", "v1", "endpoints", "Endpoints", True, short_names=("ep",)),
    _t("", "v1", "pods", "Pod", True, short_names=("po",), status=True, categories=("all",)),
    _t("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    _t("", "v1", "secrets", "Secret", True),
    _t("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    _t("", "v1", "nodes", "Node", False, short_names=("no",), status=True),
    _t("", "v1", "events", "Event", True, short_names=("ev",)),
    _t("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _t("coordination.k8s.io", "v1", "leases", "Lease", True),
    _t(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        status=True,
    ),
    _t("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=("create",)),
    _t(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    _t(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    _t(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        short_names=("deploy",),
        status=True,
        categories=("all",),
    ),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
)

# Kinds the server accepts only through create and never stores.
VIRTUAL = {("authentication.k8s.io", "tokenreviews")}

# Preferred version of every group, in the order /apis lists them.
GROUP_ORDER = (
    "apps",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
    "authentication.k8s.io",
    "admissionregistration.k8s.io",
    "rbac.authorization.k8s.io",
)


class Registry:
    """Which (group, version, resource) the server serves now; CRDs add and remove entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: list[ResourceType] = list(BUILTINS)

    def all(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types)

    def find(self, group: str, version: str, resource: str) -> ResourceType | None:
        with self._lock:
            for t in self._types:
                if t.group == group and t.version == version and t.resource == resource:
                    return t
            return None

    def versions(self, group: str) -> list[str]:
        """The group's served versions, preferred (first listed) first."""
        with self._lock:
            out: list[str] = []
            for t in self._types:
                if t.group == group and t.version not in out:
                    out.append(t.version)
            return out

    def groups(self) -> list[str]:
        with self._lock:
            groups = [g for g in GROUP_ORDER if any(t.group == g for t in self._types)]
            for t in self._types:
                if t.group and t.group not in groups:
                    groups.append(t.group)
            return groups

    def set_crd(self, crd_name: str, types: list[ResourceType]) -> None:
        """Serve exactly ``types`` for the CRD ``crd_name`` (an empty list stops serving it)."""
        with self._lock:
            self._types = [t for t in self._types if t.crd != crd_name] + types


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition (apiextensions.k8s.io/v1) defines, one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for v in spec.get("versions", []):
        if not v.get("served", True):
            continue
        cols = tuple(
            (c["name"], c.get("type", "string"), c["jsonPath"]) for c in v.get("additionalPrinterColumns", [])
        )
        out.append(
            ResourceType(
                group=spec["group"],
                version=v["name"],
                resource=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames", [])),
                status="status" in (v.get("subresources") or {}),
                categories=tuple(names.get("categories", [])),
                columns=cols,
                schema=(v.get("schema") or {}).get("openAPIV3Schema"),
                crd=crd["metadata"]["name"],
            )
        )
    return out
