"""Fixed limits on YAML input, checked on the event stream before any object is built.

They refuse YAML bombs with a clear message instead of exhausting memory, CPU or the interpreter's stack:
alias expansion ("billion laughs"), deep nesting, huge scalars and huge files. The numbers are documented
in docs/reliability.md ("Hostile input"); real Istio manifests stay far below each of them.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_SCALAR_BYTES = 1024 * 1024
MAX_ALIASES = 1000
# Nodes counted as if every alias were expanded in place: what a consumer walking the data would visit.
MAX_NODES = 1_000_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(ValueError):
    """The input exceeds one of the limits; the message names it, the limit and the line."""


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise YamlLimitError(f"file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes")


def check_yaml_limits(text: str | bytes) -> None:
    """Raise YamlLimitError if ``text`` is over a limit; YAML syntax errors surface as ``yaml.YAMLError``."""
    check_size(len(text.encode() if isinstance(text, str) else text))
    anchors: dict[str, int] = {}
    stack: list[tuple[str | None, int]] = []  # (anchor, expanded node count so far) per open collection
    total = 0
    aliases = 0

    def add(count: int, event: yaml.Event) -> None:
        nonlocal total
        total += count
        if total > MAX_NODES:
            raise YamlLimitError(
                f"more than {MAX_NODES} nodes once aliases are expanded (at {_where(event)})"
            )
        if stack:
            anchor, n = stack[-1]
            stack[-1] = (anchor, n + count)

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_SCALAR_BYTES:
                raise YamlLimitError(
                    f"a scalar of {len(event.value)} characters at {_where(event)}; "
                    f"the limit is {MAX_SCALAR_BYTES}"
                )
            if event.anchor:
                anchors[event.anchor] = 1
            add(1, event)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES} aliases (at {_where(event)})")
            add(anchors.get(event.anchor or "", 1), event)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels (at {_where(event)})")
            stack.append((event.anchor, 1))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            anchor, count = stack.pop()
            if anchor:
                anchors[anchor] = count
            add(count, event)
