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


def _label_test(key: str, op: str, values: frozenset[str]) -> Match:
    def test(obj: Obj) -> bool:
        labels = _labels(obj)
        if op == "in":
            return labels.get(key) in values
        if op == "notin":
            return labels.get(key) not in values
        if op == "!=":
            return labels.get(key) not in values
        if op == "=":
            return labels.get(key) in values
        if op == "exists":
            return key in labels
        return key not in labels

    return test


def label_selector(text: str) -> Match:
    tests: list[Match] = []
    for part in _split_top(text):
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            tests.append(_label_test(m.group(1), m.group(2), values))
        elif m := _CMP.match(part):
            key, op, value = m.groups()
            tests.append(_label_test(key, "!=" if op == "!=" else "=", frozenset([value])))
        elif m := _EXISTS.match(part):
            neg, key = m.groups()
            tests.append(_label_test(key, "absent" if neg else "exists", frozenset()))
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


def _field_test(path: str, negate: bool, value: str) -> Match:
    def test(obj: Obj) -> bool:
        return (_field(obj, path) == value) != negate

    return test


def field_selector(text: str, kind: str) -> Match:
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_LABELS.get(kind, set())
    tests: list[Match] = []
    for part in _split_top(text):
        m = _CMP.match(part)
        if not m:
            raise SelectorError(f"invalid selector: {part!r}; can't understand it")
        path, op, value = m.groups()
        if path not in allowed:
            raise SelectorError(f"field label not supported: {path}")
        tests.append(_field_test(path, op == "!=", value))
    return lambda o: all(t(o) for t in tests)
