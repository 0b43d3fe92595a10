"""A skeleton OpenAPI v3 document: each group version's PATCH operations with their query parameters.

kubectl (validate=strict, the default) asks /openapi/v3 whether PATCH of a kind takes the
``fieldValidation`` parameter; when it does, kubectl leaves validation to the server instead of downloading
schemas. No component schemas are served: kubectl's client-side apply then computes strategic merge
patches from its compiled-in types (built-in kinds) or sends merge patches (custom resources).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.kubeapi.resources import Registry, ResourceType

Doc = dict[str, Any]
_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _prefix(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def gv_doc(registry: Registry, group: str, version: str) -> Doc | None:
    types: list[ResourceType] = [t for t in registry.all() if t.group == group and t.version == version]
    if not types:
        return None
    paths: Doc = {}
    for t in types:
        if "patch" not in t.verbs:
            continue
        base = f"/{_prefix(group, version)}/" + ("namespaces/{namespace}/" if t.namespaced else "")
        op = {
            "operationId": f"patch{t.kind}",
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in _PARAMS],
            "responses": {"200": {"description": "OK"}},
        }
        paths[base + t.resource + "/{name}"] = {"patch": op}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root(registry: Registry) -> Doc:
    out: Doc = {}
    gvs = sorted({(t.group, t.version) for t in registry.all()})
    for group, version in gvs:
        doc = gv_doc(registry, group, version)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        out[_prefix(group, version)] = {
            "serverRelativeURL": f"/openapi/v3/{_prefix(group, version)}?hash={digest}"
        }
    return {"paths": out}
