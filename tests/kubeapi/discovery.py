"""Discovery documents: /version, /api, /apis, /apis/GROUP and the resource lists of each group version.

Only the classic ("legacy") discovery is served. kubectl 1.32 first asks /api and /apis for the
aggregated form (Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList, ...);
a server that answers plain ``application/json`` APIVersions/APIGroupList is read the classic way,
which is what kubectl and client-go do against any server without aggregated discovery.
"""

from __future__ import annotations

from typing import Any

from tests.kubeapi.resources import Registry, ResourceType

Doc = dict[str, Any]

VERSION_INFO: Doc = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-vmagent-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions() -> Doc:
    return {
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group(registry: Registry, group: str) -> Doc:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in registry.versions(group)]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    }


def api_group_list(registry: Registry) -> Doc:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(registry, g) for g in registry.groups()],
    }


def api_group(registry: Registry, group: str) -> Doc | None:
    return _group(registry, group) if registry.versions(group) else None


def _entries(t: ResourceType) -> list[Doc]:
    main: Doc = {
        "name": t.resource,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": list(t.verbs),
    }
    if t.short_names:
        main["shortNames"] = list(t.short_names)
    if t.categories:
        main["categories"] = list(t.categories)
    out = [main]
    if t.status:
        out.append(
            {
                "name": f"{t.resource}/status",
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    if t.group == "" and t.resource == "serviceaccounts":
        out.append(
            {
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": True,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }
        )
    return out


def resource_list(registry: Registry, group: str, version: str) -> Doc | None:
    types = [t for t in registry.all() if t.group == group and t.version == version]
    if not types:
        return None
    gv = f"{group}/{version}" if group else version
    resources = [e for t in types for e in _entries(t)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
