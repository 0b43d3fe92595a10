"""The patch formats the API server accepts: JSON Patch, JSON merge patch, strategic merge patch, apply.

Strategic merge patch is the part kubectl's client-side ``apply`` sends for built-in kinds. This one knows
the merge keys of the list fields the project's kinds use (containers by name, ports by port, ...) and the
``$patch``/``$retainKeys``/``$setElementOrder``/``$deleteFromPrimitiveList`` directives; any other list is
replaced whole, as a merge patch would. Server-side apply (``application/apply-patch+yaml``) is served as a
merge of the applied configuration into the live object, without field ownership (managedFields).
"""

from __future__ import annotations

import copy
from typing import Any

Obj = dict[str, Any]


class PatchError(ValueError):
    """A patch that does not apply; the message says where."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} does not start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"path {path!r}: {p!r} not found")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"path {path!r} not found")


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {i}: needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {i} ({kind} {path}): missing 'value'")
        if kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"operation {i}: test of {path!r} failed")
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op.get("from", "")))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": path, "value": value}])
            continue
        parts = _pointer(path)
        if not parts:
            if kind == "remove":
                raise PatchError("cannot remove the whole document")
            doc = copy.deepcopy(op["value"])
            continue
        parent, last = _parent(doc, parts, path), parts[-1]
        if isinstance(parent, dict):
            if kind == "add":
                parent[last] = copy.deepcopy(op["value"])
            elif last not in parent:
                raise PatchError(f"operation {i} ({kind}): path {path!r} not found")
            elif kind == "replace":
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                raise PatchError(f"operation {i}: unknown op {kind!r}")
        elif isinstance(parent, list):
            if last == "-" and kind == "add":
                parent.append(copy.deepcopy(op["value"]))
                continue
            if not last.isdigit():
                raise PatchError(f"operation {i}: {last!r} is not an array index")
            idx = int(last)
            if kind == "add" and idx <= len(parent):
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif idx >= len(parent):
                raise PatchError(f"operation {i} ({kind}): index {idx} out of range in {path!r}")
            elif kind == "replace":
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[idx]
            else:
                raise PatchError(f"operation {i}: unknown op {kind!r}")
        else:
            raise PatchError(f"operation {i}: {path!r} has no container")
    return doc


# Merge keys of list fields (by field name, as the built-in Go types tag them with patchMergeKey).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "webhooks": "name",
    "containerStatuses": "name",
}
# "ports" merges by "port" in a ServiceSpec and by "containerPort" in a Container.
PORT_KEYS = ("containerPort", "port")


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for k in PORT_KEYS:
            if items and all(isinstance(i, dict) and k in i for i in items):
                return k
        return None
    return MERGE_KEYS.get(field)


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(out.get(field), list):
                out[field] = [x for x in out[field] if x not in v]
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = _merge_list(k, out[k], v)
        elif isinstance(v, dict):
            merged = strategic_merge(out.get(k), v)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(field: str, live: list[Any], patch: list[Any]) -> list[Any]:
    key = _merge_key(field, live + patch)
    if key is None:
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and x.get("$patch"))]
    out = copy.deepcopy(live)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            if isinstance(item, dict) and item.get("$patch") == "replace":
                return []
            continue
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out
