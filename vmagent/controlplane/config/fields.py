"""Walking the schema by field path: which Istio fields vmagent knows, and which it does not implement.

Paths are written as in tests/testdata/istio/api_fields.txt: ``spec.http[].match[].uri.exact`` (``[]`` a
list item, ``{}`` a map value).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.config.types import F, ListOf, MapOf, Msg, Type

_STEP = re.compile(r"\.([A-Za-z0-9_$@-]+)((?:\[\]|\{\})*)")


@dataclass(frozen=True)
class UnsupportedField:
    kind: str
    path: str
    decision: str  # IGNORED or REFUSED
    note: str


def _unwrap(node: Type, suffix: str) -> Type:
    for step in re.findall(r"\[\]|\{\}", suffix):
        if step == "[]" and isinstance(node, ListOf):
            node = node.elem
        elif step == "{}" and isinstance(node, MapOf):
            node = node.value
    return node


def field_at(kind: str, path: str) -> F | None:
    """The field spec at ``path`` of ``kind``'s spec, or None when the schema does not know it."""
    info = KINDS.get(kind)
    if info is None or not path.startswith("spec."):
        return None
    node: Type = info.spec
    spec: F | None = None
    for name, suffix in _STEP.findall(path[len("spec") :]):
        if not isinstance(node, Msg):
            return None
        spec = node.fields.get(name)
        if spec is None:
            return None
        if spec.unsupported:
            # The whole subtree is not implemented: its inner fields are covered by the decision.
            return spec
        node = _unwrap(spec.resolve(), suffix)
    return spec


def unsupported_fields() -> Iterator[UnsupportedField]:
    """Every field of every kind marked not supported, once per message type and path prefix."""
    for kind, info in KINDS.items():
        yield from _walk(kind, info.spec, "spec", 0)


def _walk(kind: str, node: Type, path: str, depth: int) -> Iterator[UnsupportedField]:
    if depth > 8 or not isinstance(node, Msg):
        return
    for name, spec in node.fields.items():
        here = f"{path}.{name}"
        if spec.unsupported:
            yield UnsupportedField(kind, here, spec.unsupported, spec.note)
            continue
        inner = spec.resolve()
        suffix = ""
        while isinstance(inner, ListOf | MapOf):
            suffix += "[]" if isinstance(inner, ListOf) else "{}"
            inner = inner.elem if isinstance(inner, ListOf) else inner.value
        yield from _walk(kind, inner, here + suffix, depth + 1)
