"""Checks a custom resource against its CRD's structural ``openAPIV3Schema`` and prunes unknown fields.

A subset of the real apiextensions validation: type, required, enum, pattern, minimum/maximum,
minLength/maxLength, minItems/maxItems, items, properties, additionalProperties (as a schema),
``x-kubernetes-preserve-unknown-fields`` and ``x-kubernetes-int-or-string``. CEL rules
(``x-kubernetes-validations``), formats and defaults are not applied.
"""

from __future__ import annotations

import re
from typing import Any

Schema = dict[str, Any]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def check(
    value: Any, schema: Schema, path: str, errors: list[tuple[str, str]], pruned: list[str] | None = None
) -> Any:
    """Returns ``value`` pruned of unknown fields; appends (field path, message) for each violation and the
    path of each pruned field to ``pruned``."""
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append((path, "must be an integer or a string"))
        return value
    typ = schema.get("type")
    if typ:
        ok = isinstance(value, _TYPES.get(typ, (object,)))
        if typ in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            errors.append(
                (path, f'Invalid value: "{type(value).__name__}": {path} in body must be of type {typ}')
            )
            return value
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"Unsupported value: {value!r}: supported values: {schema['enum']}"))
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"Invalid value: {value!r}: should match {schema['pattern']!r}"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"Too long: may not be longer than {schema['maxLength']}"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, f"Invalid value: should be at least {schema['minLength']} chars long"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(
                (path, f"Invalid value: {value}: should be greater than or equal to {schema['minimum']}")
            )
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(
                (path, f"Invalid value: {value}: should be less than or equal to {schema['maximum']}")
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append((path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append((path, f"Invalid value: should have at least {schema['minItems']} items"))
        items = schema.get("items")
        if isinstance(items, dict):
            return [check(v, items, f"{path}[{i}]", errors, pruned) for i, v in enumerate(value)]
        return value
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                errors.append((f"{path}.{req}", "Required value"))
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in props:
                out[k] = check(v, props[k], f"{path}.{k}", errors, pruned)
            elif isinstance(extra, dict):
                out[k] = check(v, extra, f"{path}.{k}", errors, pruned)
            elif preserve or extra is True or (not props and typ != "object" and not schema):
                out[k] = v
            elif (
                pruned is not None
            ):  # dropped, as the real server prunes unknown fields of structural schemas
                pruned.append(f"{path}.{k}".lstrip("."))
        return out
    return value


def check_custom_resource(
    obj: dict[str, Any], schema: Schema | None, pruned: list[str] | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate and prune everything but apiVersion/kind/metadata (which the server checks itself)."""
    if not schema:
        return obj, []
    errors: list[tuple[str, str]] = []
    props = schema.get("properties") or {}
    out: dict[str, Any] = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    top = dict(
        schema,
        properties={k: v for k, v in props.items() if k not in ("apiVersion", "kind", "metadata")},
        required=[r for r in schema.get("required") or [] if r not in ("apiVersion", "kind", "metadata")],
    )
    checked = check(body, top, "", errors, pruned)
    out.update(checked)
    return out, [(f.lstrip("."), m) for f, m in errors]
