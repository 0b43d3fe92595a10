"""Finding WorkloadGroups for join tokens and joins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vmagent.common.errors import ConfigError


def group_lookup_from_dir(config_dir: Path | None) -> Callable[[str, str], dict[str, Any] | None]:
    """A lookup that reads the WorkloadGroups in ``config_dir``'s YAML files at each call."""

    def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        if config_dir is None or not config_dir.is_dir():
            return None
        for path in sorted(config_dir.rglob("*.y*ml")):
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
            for doc in docs:
                if not isinstance(doc, dict) or doc.get("kind") != "WorkloadGroup":
                    continue
                meta = doc.get("metadata") or {}
                if meta.get("name") == name and (meta.get("namespace") or "default") == namespace:
                    return doc
        return None

    return lookup
