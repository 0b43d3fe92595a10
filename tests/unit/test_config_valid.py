"""Valid Istio YAML (one fixture object per kind) parses into the expected ConfigObjects."""

from __future__ import annotations

from pathlib import Path

from vmagent.controlplane.config.loader import load_paths, load_text
from vmagent.controlplane.model import ConfigObject

DATA = Path(__file__).resolve().parent.parent / "testdata" / "config" / "valid"


def test_every_kind_in_fixtures_parses_without_errors_or_warnings() -> None:
    result = load_paths([DATA])
    assert [str(e) for e in result.errors] == []
    assert [str(w) for w in result.warnings] == []
    assert sorted((o.kind, o.namespace, o.name) for o in result.objects) == [
        ("AuthorizationPolicy", "default", "deny-all"),
        ("AuthorizationPolicy", "demo", "orders"),
        ("DestinationRule", "demo", "api"),
        ("Gateway", "demo", "ingress"),
        ("PeerAuthentication", "demo", "api-ports"),
        ("PeerAuthentication", "demo", "default"),
        ("RequestAuthentication", "demo", "jwt"),
        ("ServiceEntry", "demo", "api"),
        ("VirtualService", "demo", "api"),
        ("WorkloadEntry", "demo", "api-10.0.0.2"),
        ("WorkloadGroup", "demo", "api"),
    ]


def test_spec_keeps_istio_structure_and_metadata() -> None:
    objs = {o.key: o for o in load_paths([DATA]).objects}
    vs = objs[("VirtualService", "demo", "api")]
    assert vs.api_version == "networking.istio.io/v1beta1"
    assert vs.labels == {"team": "payments"}
    assert vs.source == str(DATA / "networking.yaml")
    route = vs.spec["http"][1]
    assert route["route"][0]["destination"] == {
        "host": "api.demo.svc.cluster.local",
        "subset": "v1",
        "port": {"number": 8080},
    }
    assert route["mirrorPercentage"] == {"value": 50.0}
    assert route["timeout"] == "1.5s"
    pa = objs[("PeerAuthentication", "demo", "api-ports")]
    assert pa.spec["portLevelMtls"] == {8081: {"mode": "PERMISSIVE"}}


def test_exact_object_and_default_namespace() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vm1
  annotations: {owner: ops}
spec:
  address: 10.1.2.3
  labels: {app: web}
"""
    result = load_text(text, "we.yaml")
    assert result.errors == []
    assert result.objects == [
        ConfigObject(
            kind="WorkloadEntry",
            api_version="networking.istio.io/v1",
            namespace="default",
            name="vm1",
            spec={"address": "10.1.2.3", "labels": {"app": "web"}},
            labels={},
            annotations={"owner": "ops"},
            source="we.yaml",
        )
    ]


def test_kubectl_output_metadata_and_status_are_accepted() -> None:
    text = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
  uid: 6d3c1f5e-0000-0000-0000-000000000000
  resourceVersion: "1234"
  generation: 2
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  mtls: {mode: PERMISSIVE}
status: {}
---
---
"""
    result = load_text(text, "pa.yaml")
    assert result.errors == []
    assert [o.key for o in result.objects] == [("PeerAuthentication", "istio-system", "default")]


def test_all_api_versions_are_accepted() -> None:
    for version in ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"):
        text = f"apiVersion: {version}\nkind: WorkloadEntry\nmetadata: {{name: a}}\nspec: {{address: 10.0.0.1}}\n"
        assert load_text(text, "x.yaml").errors == [], version
    for version in ("security.istio.io/v1beta1", "security.istio.io/v1"):
        text = f"apiVersion: {version}\nkind: AuthorizationPolicy\nmetadata: {{name: a}}\nspec: {{}}\n"
        assert load_text(text, "x.yaml").errors == [], version
