"""Messages shared by several Istio kinds (StringMatch, Percent, WorkloadSelector, ...) and check helpers."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.types import (
    LABELS,
    PERCENT_VALUE,
    PORT,
    STR,
    Ctx,
    F,
    ListOf,
    Msg,
    Regex,
    Str,
    child,
    is_dns1123_label,
    item,
)

# Protocols Istio recognises on ports (case-insensitive).
PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
    "THRIFT",
)
TLS_PROTOCOLS = ("HTTPS", "TLS")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def check_protocol(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    """Istio's protocol names are case-insensitive; an empty protocol means "detect"."""
    proto = value.get("protocol")
    if isinstance(proto, str) and proto and proto.upper() not in PROTOCOLS:
        ctx.error(
            child(path, "protocol"),
            f"unrecognized protocol {proto!r}, expected one of: {', '.join(PROTOCOLS)}",
        )


def check_port_name(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    name = value.get("name")
    if isinstance(name, str) and name and not is_dns1123_label(name):
        ctx.error(
            child(path, "name"), f"invalid port name {name!r}, expected a DNS-1123 label such as 'http-web'"
        )


def _check_string_match(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if value.get("prefix") == "":
        ctx.error(child(path, "prefix"), "must not be empty (omit the match to match everything)")


STRING_MATCH = Msg(
    "StringMatch",
    {"exact": STR, "prefix": STR, "regex": Regex()},
    oneofs=[("exact", "prefix", "regex")],
    checks=[_check_string_match],
)

PERCENT = Msg("Percent", {"value": PERCENT_VALUE})
PORT_SELECTOR = Msg("PortSelector", {"number": PORT})
WORKLOAD_SELECTOR = Msg("WorkloadSelector", {"matchLabels": LABELS})
# ServiceEntry (and Sidecar) use networking.v1alpha3.WorkloadSelector, whose field is `labels`.
SE_WORKLOAD_SELECTOR = Msg("WorkloadSelector", {"labels": LABELS})
POLICY_TARGET_REF = Msg(
    "PolicyTargetReference",
    {"group": STR, "kind": F(STR, required=True), "name": F(STR, required=True), "namespace": STR},
)
EXPORT_TO = ListOf(Str(r"\*|\.|~|[a-z0-9]([-a-z0-9]*[a-z0-9])?", what="'*', '.' or a namespace name"))


def check_unique(values: list[Any], path: str, ctx: Ctx, what: str) -> None:
    """Report each repeated scalar in ``values`` at its index."""
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if isinstance(v, str | int) and not isinstance(v, bool):
            if v in seen:
                ctx.error(item(path, i), f"duplicate {what} {v!r}")
            seen.add(v)
