"""A small declarative schema language for Istio's config messages, and the walker that checks values.

A schema is a tree of ``Type`` objects. ``Msg`` describes a protobuf message as Istio writes it in YAML
(camelCase field names, unknown fields rejected, oneofs, deprecated fields, extra semantic checks);
scalars check type and range. Every problem is recorded in a ``Ctx`` with its field path
(``spec.http[0].route[1].weight``); checking never stops at the first problem.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2  # type: ignore[import-untyped]


@dataclass
class Ctx:
    """Collects (field path, message) pairs for errors and warnings while one object is checked."""

    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    # (path, message) -> how vmagent differs from Istio there (IGNORED, REFUSED): the --istio-compat report.
    compat: dict[tuple[str, str], str] = field(default_factory=dict)

    def error(self, path: str, message: str, compat: str = "") -> None:
        self.errors.append((path, message))
        if compat:
            self.compat[(path, message)] = compat

    def warn(self, path: str, message: str, compat: str = "") -> None:
        self.warnings.append((path, message))
        if compat:
            self.compat[(path, message)] = compat


def show(value: Any) -> str:
    """How a bad value is quoted in a message: strings in quotes, containers by their shape."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(str(value))


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def key_path(path: str, key: Any) -> str:
    text = str(key)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return child(path, text)
    return f"{path}[{text!r}]"


class Type(ABC):
    """One node of a schema."""

    def children(self) -> list[tuple[str, Type]]:
        """Nested types with their path step (".name", "[]", "{}"): how tools walk the schema."""
        return []

    @abstractmethod
    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        """Record every problem of ``value`` (found at ``path``) in ``ctx``."""


class Str(Type):
    """A string, optionally matching ``pattern`` (fullmatch) with ``what`` describing the expectation."""

    def __init__(self, pattern: str | None = None, what: str = "", nonempty: bool = False) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what
        self.nonempty = nonempty

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {show(value)}")
            return
        if self.nonempty and not value:
            ctx.error(path, "must not be empty")
        elif self.pattern is not None and not self.pattern.fullmatch(value):
            ctx.error(path, f"invalid value {show(value)}, expected {self.what}")


class Int(Type):
    """An integer in [lo, hi]; YAML floats with no fraction are accepted, strings and booleans are not."""

    def __init__(self, lo: int | None = None, hi: int | None = None, what: str = "an integer") -> None:
        self.lo, self.hi, self.what = lo, hi, what

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            ctx.error(path, f"expected {self.what}, got {show(value)}")
            return
        if isinstance(value, float) and not value.is_integer():
            ctx.error(path, f"expected {self.what}, got {show(value)}")
            return
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            ctx.error(path, f"{show(value)} is out of range, expected {self.what} {self.range_text()}")

    def range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"between {self.lo} and {self.hi}"
        if self.lo is not None:
            return f">= {self.lo}"
        return f"<= {self.hi}"


INT32 = Int(-(2**31), 2**31 - 1)
NONNEG = Int(0, 2**31 - 1)
UINT32 = Int(0, 2**32 - 1)
UINT64 = Int(0, 2**64 - 1)
PORT = Int(1, 65535, what="a port number")


class Float(Type):
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            ctx.error(path, f"expected a number, got {show(value)}")
            return
        if value < self.lo or value > self.hi:
            bounds = f">= {self.lo:g}" if self.hi == float("inf") else f"between {self.lo:g} and {self.hi:g}"
            ctx.error(path, f"{show(value)} is out of range, expected a number {bounds}")


PERCENT_VALUE = Float(0.0, 100.0)


class Bool(Type):
    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, bool):
            ctx.error(path, f"expected a boolean (true or false), got {show(value)}")


class Enum(Type):
    """One of a fixed set of names (case-sensitive, as protobuf JSON enums are), or case-insensitive."""

    def __init__(self, *values: str, ignore_case: bool = False) -> None:
        self.values = values
        self.ignore_case = ignore_case

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {show(value)}")
            return
        candidate = value.upper() if self.ignore_case else value
        if candidate not in self.values:
            ctx.error(path, f"invalid value {show(value)}, expected one of: {', '.join(self.values)}")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds for a Go-style duration ("1.5s", "100ms", "1h30m"); None when ``text`` is not one."""
    if text in ("0", ""):
        return 0.0 if text == "0" else None
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total


class Duration(Type):
    """A duration string as Istio accepts it ("1.5s", "100ms", "1m"); ``min_seconds`` is inclusive."""

    def __init__(self, min_seconds: float = 0.0) -> None:
        self.min_seconds = min_seconds

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a duration such as '1.5s' or '100ms', got {show(value)}")
            return
        seconds = parse_duration(value)
        if seconds is None:
            ctx.error(path, f"invalid duration {show(value)}, expected a duration such as '1.5s' or '100ms'")
        elif seconds < self.min_seconds - 1e-12:
            ctx.error(
                path,
                f"duration {show(value)} is too short, must be at least {_fmt_seconds(self.min_seconds)}",
            )


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    return f"{seconds:g}s"


DURATION = Duration()
DURATION_1MS = Duration(0.001)

_LABEL = r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_cidr(text: str) -> bool:
    if "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def is_dns1123_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.fullmatch(text))


def is_dns1123_subdomain(text: str) -> bool:
    return len(text) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(text))


def host_problem(host: str, wildcard: bool = True, ip: bool = False) -> str | None:
    """Why ``host`` is not a valid (optionally wildcard) DNS name, or None when it is."""
    if ip and is_ip(host):
        return None
    if host == "*":
        return None if wildcard else "a bare '*' is not allowed here"
    name = host
    if wildcard and host.startswith("*."):
        name = host[2:]
    elif wildcard and host.startswith("*") and len(host) > 1:
        name = host[1:]
    if "*" in name:
        return "a wildcard is only allowed as the leftmost part, e.g. '*.example.com'"
    if len(name) > 255:
        return "longer than 255 characters"
    if not _HOST.fullmatch(name) or any(len(p) > 63 for p in name.split(".")):
        return "not a valid DNS name"
    return None


class Host(Type):
    """A DNS host name, optionally a wildcard ("*.example.com", "*") or an IP address.

    With ``namespaced`` the host may carry a ``NAMESPACE/`` prefix (Gateway servers: "*/", "./", "ns/").
    """

    def __init__(self, wildcard: bool = True, ip: bool = False, namespaced: bool = False) -> None:
        self.wildcard, self.ip, self.namespaced = wildcard, ip, namespaced

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {show(value)}")
            return
        host = value
        if self.namespaced and "/" in value:
            ns, host = value.split("/", 1)
            if ns not in ("*", ".", "~") and not is_dns1123_label(ns):
                ctx.error(path, f"invalid namespace {show(ns)} in host {show(value)}")
                return
        problem = host_problem(host, self.wildcard, self.ip)
        if problem:
            ctx.error(path, f"invalid host {show(value)}: {problem}")


class IpOrCidr(Type):
    def __init__(self, cidr_only: bool = False) -> None:
        self.cidr_only = cidr_only

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {show(value)}")
        elif "/" in value:
            if not is_cidr(value):
                ctx.error(path, f"invalid CIDR {show(value)}")
        elif self.cidr_only or not is_ip(value):
            what = "a CIDR such as '10.0.0.0/8'" if self.cidr_only else "an IP address or CIDR"
            ctx.error(path, f"invalid address {show(value)}, expected {what}")


def re2_problem(pattern: str) -> str | None:
    """Why RE2 (the engine of Istio and Envoy) cannot compile ``pattern``, or None when it can."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print each failure on stderr
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return str(reason) or "not valid RE2 syntax"
    return None


class Regex(Type):
    """A regular expression, compiled with RE2 itself (lookahead and backreferences are refused)."""

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {show(value)}")
            return
        problem = re2_problem(value)
        if problem is not None:
            ctx.error(path, f"invalid regular expression {show(value)}: RE2 cannot compile it ({problem})")


class ListOf(Type):
    def __init__(self, elem: Type, nonempty: bool = False, max_items: int | None = None) -> None:
        self.elem, self.nonempty, self.max_items = elem, nonempty, max_items

    def children(self) -> list[tuple[str, Type]]:
        return [("[]", self.elem)]

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, list):
            ctx.error(path, f"expected a list, got {show(value)}")
            return
        if self.nonempty and not value:
            ctx.error(path, "must not be empty")
        if self.max_items is not None and len(value) > self.max_items:
            ctx.error(path, f"too many items ({len(value)}), at most {self.max_items} allowed")
        for i, v in enumerate(value):
            self.elem.check(v, item(path, i), ctx)


class MapOf(Type):
    def __init__(self, value: Type, key: Type | None = None, nonempty: bool = False) -> None:
        self.value, self.key, self.nonempty = value, key, nonempty

    def children(self) -> list[tuple[str, Type]]:
        return [("{}", self.value)]

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, f"expected a mapping, got {show(value)}")
            return
        if self.nonempty and not value:
            ctx.error(path, "must not be empty")
        for k, v in value.items():
            kp = key_path(path, k)
            if self.key is not None:
                self.key.check(k, kp, ctx)
            elif not isinstance(k, str):
                ctx.error(kp, f"expected a string key, got {show(k)}")
            self.value.check(v, kp, ctx)


STR = Str()
STRINGS = ListOf(STR)
LABELS = MapOf(STR)

Check = Callable[[dict[str, Any], str, Ctx], None]


IGNORED = "ignored"
REFUSED = "refused"


@dataclass(frozen=True)
class F:
    """A message field: its type, whether it is required, and a deprecation note (accepted with a warning).

    ``unsupported`` marks a field of Istio's API that vmagent does not implement: ``IGNORED`` (accepted
    with a warning, the behaviour differs from Istio) or ``REFUSED`` (an error); ``note`` says why or
    what to write instead.
    """

    type: Type | Callable[[], Type]
    required: bool = False
    deprecated: str = ""
    unsupported: str = ""
    note: str = ""

    def resolve(self) -> Type:
        return self.type if isinstance(self.type, Type) else self.type()


class Msg(Type):
    """A protobuf message as YAML: a mapping with known fields, oneofs and extra semantic checks.

    Field values of null count as absent (as protobuf JSON treats them). ``checks`` run after the
    fields and must tolerate wrongly typed values (they were reported already).
    """

    def __init__(
        self,
        name: str,
        fields: Mapping[str, F | Type],
        oneofs: Sequence[Sequence[str]] = (),
        checks: Iterable[Check] = (),
    ) -> None:
        self.name = name
        self.fields = {k: v if isinstance(v, F) else F(v) for k, v in fields.items()}
        self.oneofs = [tuple(o) for o in oneofs]
        self.checks = list(checks)

    def children(self) -> list[tuple[str, Type]]:
        return [(f".{name}", spec.resolve()) for name, spec in self.fields.items()]

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, f"expected a mapping ({self.name}), got {show(value)}")
            return
        for key, v in value.items():
            spec = self.fields.get(key) if isinstance(key, str) else None
            kp = key_path(path, key)
            if spec is None:
                hint = difflib.get_close_matches(str(key), list(self.fields), n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                ctx.error(kp, f"unknown field {str(key)!r} in {self.name}{suffix}")
                continue
            if v is None:
                continue
            if spec.unsupported:
                text = f"field {str(key)!r} of {self.name} is not supported by vmagent: {spec.unsupported}"
                text += f" ({spec.note})" if spec.note else ""
                if spec.unsupported == REFUSED:
                    ctx.error(kp, text, compat=REFUSED)
                    continue
                ctx.warn(kp, text, compat=IGNORED)
            if spec.deprecated:
                ctx.warn(kp, f"deprecated field: {spec.deprecated}")
            spec.resolve().check(v, kp, ctx)
        for name, spec in self.fields.items():
            if spec.required and value.get(name) is None:
                ctx.error(child(path, name), "required field is missing")
        for group in self.oneofs:
            present = [g for g in group if value.get(g) is not None]
            if len(present) > 1:
                ctx.error(path, f"only one of {', '.join(repr(g) for g in group)} may be set, got {present}")
        for check in self.checks:
            check(value, path, ctx)
