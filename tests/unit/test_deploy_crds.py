"""The CRDs shipped in deploy/kubernetes are the ones generated from the validator's schema."""

from __future__ import annotations

from pathlib import Path

from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.kube.crds import crds_yaml

CRDS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "crds.yaml"


def test_committed_crds_match_the_generator() -> None:
    assert CRDS.read_text() == crds_yaml(), (
        "deploy/kubernetes/base/crds.yaml is stale: run vmagent-cp manifests crds > deploy/kubernetes/base/crds.yaml"
    )


def test_every_supported_kind_has_a_crd() -> None:
    text = CRDS.read_text()
    for kind in KINDS:
        assert f"kind: {kind}\n" in text, kind
