"""The Kubernetes API permissions the control plane needs: one table for RBAC, docs and tests.

``deploy/kubernetes/base/rbac.yaml`` is generated from this table (``vmagent-cp manifests rbac``), and
tests/integration/test_deploy_kubernetes.py checks that the rendered ClusterRole and Role grant exactly these
rules. Discovery (``/apis/GROUP``) is a non-resource URL every authenticated user may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmagent.common.wire import ROOT_CERT_CONFIGMAP
from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.inject.cabundle import WEBHOOK_CONFIG_NAME
from vmagent.controlplane.kube.istio_source import plural


@dataclass(frozen=True)
class Permission:
    group: str  # "" is the core group
    resource: str  # a plural, or PLURAL/SUBRESOURCE
    verbs: tuple[str, ...]
    why: str
    namespaced_to_own: bool = False  # granted only in the control plane's namespace (a Role)
    names: tuple[str, ...] = ()  # only these objects (RBAC resourceNames); () is every object


READ = ("list", "watch")


def permissions() -> list[Permission]:
    """Every (group, resource, verbs) the control plane requests, with the reason."""
    out = [
        Permission("", "services", READ, "service registry (NAME.NS.svc.DOMAIN)"),
        Permission("discovery.k8s.io", "endpointslices", READ, "endpoints of Services"),
        Permission("", "pods", READ, "pod labels, service accounts and readiness behind endpoints"),
    ]
    for kind in sorted(KINDS):
        info = KINDS[kind]
        out.append(Permission(info.group, plural(kind), READ, f"{kind} objects as a config source"))
        out.append(Permission(info.group, f"{plural(kind)}/status", ("patch",), "validationMessages"))
    out += [
        Permission(
            "networking.istio.io",
            "workloadentries",
            ("get", "create", "update", "delete"),
            "VMs published as WorkloadEntry objects (resourceVersion-checked writes)",
        ),
        Permission(
            "authentication.k8s.io",
            "tokenreviews",
            ("create",),
            "pods' ServiceAccount tokens checked before their certificates are issued",
        ),
        Permission(
            "", "namespaces", ("get", "list"), "namespace labels for sidecar injection (istio-injection)"
        ),
        Permission(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            ("get", "update"),
            "the mesh root as caBundle of the sidecar injection webhook",
            names=(WEBHOOK_CONFIG_NAME,),
        ),
        Permission(
            "",
            "configmaps",
            ("create",),
            f"the mesh root as ConfigMap {ROOT_CERT_CONFIGMAP} where sidecars are injected (create cannot be "
            "limited by name)",
        ),
        Permission(
            "",
            "configmaps",
            ("get", "update"),
            f"keep {ROOT_CERT_CONFIGMAP} equal to the mesh root",
            names=(ROOT_CERT_CONFIGMAP,),
        ),
        Permission(
            "coordination.k8s.io",
            "leases",
            ("get", "create", "update"),
            "the Lease that picks the replica writing status",
            namespaced_to_own=True,
        ),
    ]
    return out


def merged() -> dict[tuple[str, str, bool, tuple[str, ...]], set[str]]:
    """(group, resource, own-namespace-only, resource names) -> verbs, with the rows of one key merged."""
    out: dict[tuple[str, str, bool, tuple[str, ...]], set[str]] = {}
    for p in permissions():
        out.setdefault((p.group, p.resource, p.namespaced_to_own, p.names), set()).update(p.verbs)
    return out


NAME = "vmagent-cp"  # the ServiceAccount, roles and bindings of deploy/kubernetes/base
NAMESPACE = "vmagent-system"


def _rules(own_namespace: bool) -> list[dict[str, list[str]]]:
    """RBAC rules: one per (group, verbs, names), its resources sorted, the rules in a stable order."""
    by_verbs: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for (group, resource, own, names), verb_set in merged().items():
        if own == own_namespace:
            by_verbs.setdefault((group, tuple(sorted(verb_set)), names), []).append(resource)
    rules: list[dict[str, list[str]]] = []
    for (group, verbs, names), resources in sorted(
        by_verbs.items(), key=lambda kv: (kv[0][0], sorted(kv[1]), kv[0][2])
    ):
        rule = {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        if names:
            rule["resourceNames"] = sorted(names)
        rules.append(rule)
    return rules


def rbac_objects() -> list[dict[str, Any]]:
    """The ClusterRole, Role and their bindings to the ServiceAccount ``vmagent-cp``."""
    subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    group = "rbac.authorization.k8s.io"

    def role(kind: str, own: bool) -> dict[str, Any]:
        return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": NAME}, "rules": _rules(own)}

    def binding(kind: str, role_kind: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{group}/v1",
            "kind": kind,
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": group, "kind": role_kind, "name": NAME},
            "subjects": subject,
        }

    return [
        role("ClusterRole", False),
        binding("ClusterRoleBinding", "ClusterRole"),
        role("Role", True),
        binding("RoleBinding", "Role"),
    ]


def rbac_yaml() -> str:
    """What deploy/kubernetes/base/rbac.yaml holds (the Role's namespace comes from the kustomization)."""
    import yaml

    header = (
        "# Generated by `vmagent-cp manifests rbac` from vmagent/controlplane/kube/permissions.py: do not edit.\n"
        "# Least privilege. Cluster-wide (ClusterRole): read the sources, write WorkloadEntries and validation\n"
        "# status; for sidecar injection, read namespace labels and write the mesh root (the webhook's caBundle,\n"
        "# ConfigMap istio-ca-root-cert). In its own namespace only (Role): the Lease that picks the replica\n"
        "# writing status.\n"
    )
    return header + yaml.safe_dump_all(rbac_objects(), sort_keys=False, default_flow_style=False, width=120)
