"""A small read-only index over config objects, by kind and namespace."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Protocol

from vmagent.controlplane.model import ConfigObject


class ConfigLookup(Protocol):
    """What translation reads from config (``ConfigIndex`` and the config set's snapshot both fit)."""

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[ConfigObject]: ...


class ConfigIndex:
    """Objects grouped by kind; ``list`` returns them sorted by namespace and name."""

    def __init__(self, objects: Iterable[ConfigObject] = ()) -> None:
        by_kind: dict[str, dict[tuple[str, str], ConfigObject]] = {}
        for obj in objects:
            by_kind.setdefault(obj.kind, {})[(obj.namespace, obj.name)] = obj
        self._by_kind = {k: [v[key] for key in sorted(v)] for k, v in by_kind.items()}

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[ConfigObject]:
        objs = self._by_kind.get(kind, [])
        return [o for o in objs if namespace is None or o.namespace == namespace]

    def get(self, kind: str, namespace: str, name: str) -> ConfigObject | None:
        for o in self._by_kind.get(kind, []):
            if o.namespace == namespace and o.name == name:
                return o
        return None
