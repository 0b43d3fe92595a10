"""Label selectors and field selectors, as the ``labelSelector``/``fieldSelector`` query parameters spell them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Match = Callable[[Obj], bool]


class SelectorError(ValueError):
    """A selector that does not parse; the message says which part."""


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET = re.compile(r"^([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_CMP = re.compile(r"^([A-Za-z0-9._/-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)$")
_EXISTS = re.compile(r"^(!?)([A-Za-z0-9._/-]+)$")


def label_selector(text: str) -> Match:
    tests: list[Match] = []
    for part in _split_top(text):
        if m := _SET.match(part):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                tests.append(lambda o, k=key, vs=values: _labels(o).get(k) in vs)
            else:
                tests.append(lambda o, k=key, vs=values: _labels(o).get(k) not in vs)
        elif m := _CMP.match(part):
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda o, k=key, v=value: _labels(o).get(k) != v)
            else:
                tests.append(lambda o, k=key, v=value: _labels(o).get(k) == v)
        elif m := _EXISTS.match(part):
            neg, key = m.groups()
            if neg:
                tests.append(lambda o, k=key: k not in _labels(o))
            else:
                tests.append(lambda o, k=key: k in _labels(o))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return lambda o: all(t(o) for t in tests)


def _labels(obj: Obj) -> dict[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


# Field labels each kind supports beyond metadata.name and metadata.namespace (a subset of the real ones).
FIELD_LABELS: dict[str, set[str]] = {
    "Pod": {"spec.nodeName", "spec.serviceAccountName", "status.phase", "status.podIP", "spec.restartPolicy"},
    "Secret": {"type"},
    "Event": {"involvedObject.kind", "involvedObject.name", "involvedObject.namespace", "reason", "type"},
    "Namespace": {"status.phase"},
    "Node": {"spec.unschedulable"},
}


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_selector(text: str, kind: str) -> Match:
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_LABELS.get(kind, set())
    tests: list[Match] = []
    for part in _split_top(text):
        m = _CMP.match(part)
        if not m:
            raise SelectorError(f"invalid selector: {part!r}; can't understand it")
        path, op, value = m.groups()
        if path not in allowed:
            raise SelectorError(f'field label not supported: {path}')  # fmt: skip
        if op == "!=":
            tests.append(lambda o, p=path, v=value: _field(o, p) != v)
        else:
            tests.append(lambda o, p=path, v=value: _field(o, p) == v)
    return lambda o: all(t(o) for t in tests)
