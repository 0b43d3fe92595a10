"""The CRDs and RBAC shipped in deploy/kubernetes are the ones generated from the validator's schema and
from the permissions table."""

from __future__ import annotations

from pathlib import Path

from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.kube.crds import crds_yaml
from vmagent.controlplane.kube.permissions import rbac_yaml

BASE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base"
CRDS = BASE / "crds.yaml"


def test_committed_crds_match_the_generator() -> None:
    assert CRDS.read_text() == crds_yaml(), (
        "deploy/kubernetes/base/crds.yaml is stale: run vmagent-cp manifests crds > deploy/kubernetes/base/crds.yaml"
    )


def test_every_supported_kind_has_a_crd() -> None:
    text = CRDS.read_text()
    for kind in KINDS:
        assert f"kind: {kind}\n" in text, kind


def test_committed_rbac_matches_the_permissions_table() -> None:
    assert (BASE / "rbac.yaml").read_text() == rbac_yaml(), (
        "deploy/kubernetes/base/rbac.yaml is stale: run vmagent-cp manifests rbac > deploy/kubernetes/base/rbac.yaml"
    )
