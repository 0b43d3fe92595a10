"""`vmagent-cp manifests crds`: print the Kubernetes manifests generated from the product's own schema."""

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
        "is this output).",
    )
    p.add_argument("what", choices=["crds"], help="which manifests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmagent.controlplane.kube.crds import crds_yaml

    sys.stdout.write(crds_yaml())
    return 0
