"""A minimal WorkloadEntry CRD (networking.istio.io) for the tests: two versions, status subresource."""

from __future__ import annotations

from typing import Any

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["address"],
            "properties": {
                "address": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "ports": {"type": "object", "additionalProperties": {"type": "integer", "maximum": 65535}},
                "serviceAccount": {"type": "string"},
                "weight": {"type": "integer", "minimum": 0},
            },
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}


def _version(name: str, storage: bool) -> dict[str, Any]:
    return {
        "name": name,
        "served": True,
        "storage": storage,
        "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": _SCHEMA},
        "additionalPrinterColumns": [{"name": "Address", "type": "string", "jsonPath": ".spec.address"}],
    }


WORKLOADENTRY_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloadentries.networking.istio.io"},
    "spec": {
        "group": "networking.istio.io",
        "names": {
            "kind": "WorkloadEntry",
            "plural": "workloadentries",
            "singular": "workloadentry",
            "listKind": "WorkloadEntryList",
            "shortNames": ["we"],
            "categories": ["istio-io"],
        },
        "scope": "Namespaced",
        "versions": [_version("v1", True), _version("v1beta1", False)],
    },
}
