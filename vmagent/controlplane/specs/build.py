"""Building a frozen view dataclass from a validated spec mapping, driven by the class's type hints.

Each dataclass field reads the key of the same name in camelCase (``service_account`` <- ``serviceAccount``;
a trailing ``_`` of a Python keyword is dropped: ``from_`` <- ``from``), or ``metadata["key"]`` when given.
Absent or null keys take the field's default. Values convert by annotation: a nested view class is built
recursively, ``tuple[X, ...]`` from a list, ``Mapping[str, X]`` (or ``Mapping[int, X]``, port keys) from a mapping, ``int``/``float``/``str``
as written (YAML integers written as ``80.0`` become ``80``). Input is validated first: unknown keys are
ignored here because the schema rejects them.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


def yaml_key(attr: str) -> str:
    """The camelCase key a view attribute reads: ``service_account`` -> ``serviceAccount``."""
    head, *rest = attr.rstrip("_").split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def attr_name(key: str) -> str:
    """The attribute name of a camelCase key: ``serviceAccount`` -> ``service_account``, ``from`` -> ``from_``."""
    name = re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
    return name + "_" if name in ("from", "in", "not", "is", "if", "else", "for", "import", "class") else name


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    key: str
    hint: Any


_FIELDS: dict[type[Any], tuple[_Field, ...]] = {}


def _fields(cls: type[Any]) -> tuple[_Field, ...]:
    found = _FIELDS.get(cls)
    if found is None:
        hints = get_type_hints(cls)
        found = tuple(
            _Field(f.name, str(f.metadata.get("key") or yaml_key(f.name)), hints[f.name])
            for f in dataclasses.fields(cls)
        )
        _FIELDS[cls] = found
    return found


def view_fields(cls: type[Any]) -> dict[str, Any]:
    """YAML key -> annotation of each field of the view class ``cls`` (what the schema test compares)."""
    return {f.key: f.hint for f in _fields(cls)}


def items_by_key(view: object) -> list[tuple[str, Any]]:
    """``(camelCase key, value)`` of every field of the view instance ``view``, for readers that treat a
    message's fields alike (AuthorizationPolicy sources and operations)."""
    return [(f.key, getattr(view, f.name)) for f in _fields(type(view))]


def from_spec(cls: type[T], data: Mapping[str, Any]) -> T:
    """The view ``cls`` of the validated mapping ``data``."""
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        value = data.get(f.key)
        if value is not None:
            kwargs[f.name] = _convert(f.hint, value)
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        return tuple(_convert(get_args(hint)[0], v) for v in value)
    if origin is Mapping or origin is dict:
        key_type, value_type = get_args(hint)
        return {(int(k) if key_type is int else str(k)): _convert(value_type, v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_spec(hint, value)
    if hint is int:
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    return value
