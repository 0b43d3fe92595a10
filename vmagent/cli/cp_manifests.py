"""`vmagent-cp manifests crds|rbac`: print the Kubernetes manifests generated from the product's own schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "manifests",
        help="print generated Kubernetes manifests",
        description="Print Kubernetes manifests generated from the control plane's own schema. "
        "`crds`: the CustomResourceDefinitions of the Istio kinds it serves (deploy/kubernetes/base/crds.yaml "
        "is this output); `rbac`: the ClusterRole, Role and bindings of exactly the permissions it needs "
        "(deploy/kubernetes/base/rbac.yaml).",
    )
    p.add_argument("what", choices=["crds", "rbac"], help="which manifests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "rbac":
        from vmagent.controlplane.kube.permissions import rbac_yaml

        sys.stdout.write(rbac_yaml())
        return 0
    from vmagent.controlplane.kube.crds import crds_yaml

    sys.stdout.write(crds_yaml())
    return 0
