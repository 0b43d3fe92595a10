"""CustomResourceDefinitions of the Istio kinds vmagent serves, generated from the validator's schema.

The OpenAPI schema of each ``spec`` is derived from the same ``Msg`` tree that ``vmagent-cp validate``
checks, so the CRDs and the validator cannot drift apart: a field the validator knows is a property
of the CRD (with its type, enum values and numeric bounds), and the API server prunes nothing vmagent
reads. Semantic rules (oneofs, host syntax, RE2) stay in the validator: the control plane refuses such
objects and says why in ``status.validationMessages``.

Every accepted version is served (``v1`` stored), with the ``status`` subresource, the
``istio-io``/``networking-istio-io`` categories and Istio's short names, so ``kubectl get vs`` works as
with Istio's own CRDs.
"""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config import types as t
from vmagent.controlplane.config.kinds import KINDS, KindInfo
from vmagent.controlplane.kube.istio_source import plural as plural_of

JsonObj = dict[str, Any]
# Recursive messages (a VirtualService's delegate, nested JSON values) stop here.
MAX_DEPTH = 12
EXACT_FLOAT_INT = 2**53  # the largest integer a float64 (a CRD schema's bound) holds exactly
SHORT_NAMES = {
    "VirtualService": ["vs"],
    "DestinationRule": ["dr"],
    "ServiceEntry": ["se"],
    "Gateway": ["gw"],
    "WorkloadEntry": ["we"],
    "WorkloadGroup": ["wg"],
    "PeerAuthentication": ["pa"],
    "RequestAuthentication": ["ra"],
    "AuthorizationPolicy": ["ap"],
}
_OPEN = {"x-kubernetes-preserve-unknown-fields": True}


def openapi(node: t.Type, depth: int = 0) -> JsonObj:
    """The structural OpenAPI v3 schema of one validator type."""
    if depth > MAX_DEPTH:
        return {"type": "object", **_OPEN}
    if isinstance(node, t.Msg):
        props = {name: openapi(f.resolve(), depth + 1) for name, f in node.fields.items()}
        out: JsonObj = {"type": "object", "properties": props}
        required = sorted(name for name, f in node.fields.items() if f.required)
        if required:
            out["required"] = required
        return out
    if isinstance(node, t.ListOf):
        return {"type": "array", "items": openapi(node.elem, depth + 1)}
    if isinstance(node, t.MapOf):
        return {"type": "object", "additionalProperties": openapi(node.value, depth + 1)}
    if isinstance(node, t.Bool):
        return {"type": "boolean"}
    if isinstance(node, t.Int):
        out = {"type": "integer"}
        # The API server keeps schema bounds as float64: a bound past 2**53 (a uint64's maximum) would be
        # stored rounded, so it is left to the validator.
        if node.lo is not None and abs(node.lo) <= EXACT_FLOAT_INT:
            out["minimum"] = node.lo
        if node.hi is not None and abs(node.hi) <= EXACT_FLOAT_INT:
            out["maximum"] = node.hi
        return out
    if isinstance(node, t.Float):
        out = {"type": "number", "minimum": node.lo}
        if node.hi != float("inf"):
            out["maximum"] = node.hi
        return out
    if isinstance(node, t.Enum):
        return {"type": "string"} if node.ignore_case else {"type": "string", "enum": list(node.values)}
    if isinstance(node, t.Str | t.Duration | t.Host | t.IpOrCidr | t.Regex):
        return {"type": "string"}
    # A type with its own check (e.g. a port number given as a string or an int): the validator decides.
    return dict(_OPEN)


def crd(info: KindInfo) -> JsonObj:
    """The CRD of one kind (all accepted versions served, ``v1`` stored)."""
    plural = plural_of(info.kind)
    schema = {
        "type": "object",
        "properties": {
            "spec": openapi(info.spec),
            "status": {"type": "object", **_OPEN},
        },
    }
    storage = "v1" if "v1" in info.versions else info.versions[-1]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{info.group}",
            "labels": {"app.kubernetes.io/part-of": "vmagent"},
        },
        "spec": {
            "group": info.group,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": plural,
                "singular": info.kind.lower(),
                "shortNames": SHORT_NAMES.get(info.kind, []),
                "categories": ["istio-io", f"{info.group.split('.')[0]}-istio-io"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == storage,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
                for v in info.versions
            ],
        },
    }


def all_crds() -> list[JsonObj]:
    return [crd(KINDS[k]) for k in sorted(KINDS)]


def crds_yaml() -> str:
    """All CRDs as one multi-document YAML stream (what deploy/kubernetes/base/crds.yaml holds)."""
    import yaml

    header = "# Generated by `vmagent-cp manifests crds` from the validator's schema: do not edit.\n"
    return header + yaml.safe_dump_all(all_crds(), sort_keys=True, default_flow_style=False, width=120)
