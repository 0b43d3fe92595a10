"""Reading multi-document YAML files and directories into validated ``ConfigObject``s.

A file is the unit of validity: if any document in it is invalid, none of its objects is returned (the
directory watcher then keeps the file's last good objects). Duplicate objects (same kind, namespace and
name) are errors; the first definition in path order is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmagent.common.yamllimits import YamlLimitError, check_size, check_yaml_limits
from vmagent.controlplane.config.issues import Issue, object_label
from vmagent.controlplane.config.validate import validate_document
from vmagent.controlplane.model import ConfigObject

YAML_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class LoadResult:
    objects: list[ConfigObject] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def extend(self, other: LoadResult) -> None:
        self.objects.extend(other.objects)
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The (C-accelerated when available) SafeLoader that refuses a mapping with the same key twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def load_text(text: str, file: str) -> LoadResult:
    """Validate every document of ``text`` (named ``file`` in messages)."""
    result = LoadResult()
    try:
        check_yaml_limits(text)
        docs = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except YamlLimitError as exc:
        result.errors.append(Issue(file, "", "", f"refused: {exc}"))
        return result
    except yaml.YAMLError as exc:
        result.errors.append(Issue(file, "", "", _yaml_problem(exc)))
        return result
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        res = validate_document(doc, file, index)
        result.errors.extend(res.errors)
        result.warnings.extend(res.warnings)
        if res.obj is not None:
            result.objects.append(res.obj)
    if result.errors:
        result.objects = []
    unique, dups = dedupe(result.objects)
    result.objects, result.errors = unique, result.errors + dups
    if dups:
        result.objects = []
    return result


def load_file(path: Path, display: str | None = None) -> LoadResult:
    """Read and validate one file; ``display`` is the name used in messages (default: the path)."""
    name = display or str(path)
    try:
        check_size(path.stat().st_size)
        text = path.read_text(encoding="utf-8")
    except YamlLimitError as exc:
        return LoadResult(errors=[Issue(name, "", "", f"refused: {exc}")])
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[Issue(name, "", "", f"cannot read file: {exc}")])
    return load_text(text, name)


def collect_files(path: Path) -> list[Path]:
    """YAML files under ``path`` (recursively, hidden files and directories skipped), in sorted order."""
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix in YAML_SUFFIXES:
            files.append(p)
    return files


def load_paths(paths: Sequence[Path]) -> LoadResult:
    """Validate all files named or found under ``paths``; duplicates across files are errors."""
    result = LoadResult()
    for root in paths:
        if not root.exists():
            result.errors.append(Issue(str(root), "", "", "no such file or directory"))
            continue
        for f in collect_files(root):
            result.extend(load_file(f))
    unique, dups = dedupe(result.objects)
    result.objects = unique
    result.errors.extend(dups)
    return result


def dedupe(objects: Iterable[ConfigObject]) -> tuple[list[ConfigObject], list[Issue]]:
    """Keep the first object per (kind, namespace, name); report each later one as an error."""
    first: dict[tuple[str, str, str], ConfigObject] = {}
    issues: list[Issue] = []
    for obj in objects:
        prev = first.get(obj.key)
        if prev is None:
            first[obj.key] = obj
            continue
        where = "earlier in the same file" if prev.source == obj.source else f"in {prev.source}"
        issues.append(
            Issue(
                obj.source,
                object_label(*obj.key),
                "metadata.name",
                f"duplicate object: {obj.kind} {obj.namespace}/{obj.name} is already defined {where}",
            )
        )
    return list(first.values()), issues
