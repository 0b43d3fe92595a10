"""The ``meta.k8s.io/v1`` Table form that ``kubectl get`` asks for (Accept: ...;as=Table;g=meta.k8s.io;v=v1)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.kubeapi.resources import ResourceType

Obj = dict[str, Any]


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    created = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    secs = int((dt.datetime.now(dt.UTC) - created).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple ``.a.b`` paths of additionalPrinterColumns (and ``.a[0].b``)."""
    cur = obj
    for part in path.strip().lstrip(".").split("."):
        if not part:
            continue
        idx = None
        if part.endswith("]") and "[" in part:
            part, _, rest = part.partition("[")
            idx = int(rest[:-1]) if rest[:-1].isdigit() else None
        cur = cur.get(part) if isinstance(cur, dict) else None
        if idx is not None:
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
    return cur


def columns(t: ResourceType) -> list[Obj]:
    cols = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name of the object",
            "priority": 0,
        }
    ]
    for name, typ, _ in t.columns:
        cols.append({"name": name, "type": typ, "format": "", "description": "", "priority": 0})
    if not any(c[0] == "Age" for c in t.columns):
        cols.append(
            {"name": "Age", "type": "string", "format": "", "description": "Age of the object", "priority": 0}
        )
    return cols


def row(t: ResourceType, obj: Obj, include: str) -> Obj:
    meta = obj.get("metadata", {})
    cells: list[Any] = [meta.get("name", "")]
    for _name, typ, path in t.columns:
        value = _jsonpath(obj, path)
        if typ == "date":
            value = _age(value) if isinstance(value, str) else "<unknown>"
        cells.append("<none>" if value is None else value)
    if not any(c[0] == "Age" for c in t.columns):
        cells.append(_age(meta.get("creationTimestamp")))
    out: Obj = {"cells": cells}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    return out


def table(t: ResourceType, objs: list[Obj], resource_version: str, include: str, cont: str = "") -> Obj:
    meta: Obj = {"resourceVersion": resource_version}
    if cont:
        meta["continue"] = cont
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(t),
        "rows": [row(t, o, include) for o in objs],
    }
