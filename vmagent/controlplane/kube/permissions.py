"""The Kubernetes API permissions the control plane needs: one table for RBAC, docs and tests.

``deploy/kubernetes/base/rbac.yaml`` grants exactly these rules (a unit test compares them), and a unit
test checks that every resource the kube modules talk to is listed here, so the ClusterRole cannot drift
from the code. Discovery (``/apis/GROUP``) is a non-resource URL every authenticated user may read.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.kube.istio_source import plural


@dataclass(frozen=True)
class Permission:
    group: str  # "" is the core group
    resource: str  # a plural, or PLURAL/SUBRESOURCE
    verbs: tuple[str, ...]
    why: str
    namespaced_to_own: bool = False  # granted only in the control plane's namespace (a Role)


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
            "coordination.k8s.io",
            "leases",
            ("get", "create", "update"),
            "the Lease that picks the replica writing status",
            namespaced_to_own=True,
        ),
        Permission(
            "authentication.k8s.io",
            "tokenreviews",
            ("create",),
            "pods' ServiceAccount tokens at the CA (the next step: sidecars in pods)",
        ),
    ]
    return out


def merged() -> dict[tuple[str, str, bool], set[str]]:
    """(group, resource, own-namespace-only) -> verbs, with the rows of one resource merged."""
    out: dict[tuple[str, str, bool], set[str]] = {}
    for p in permissions():
        out.setdefault((p.group, p.resource, p.namespaced_to_own), set()).update(p.verbs)
    return out
