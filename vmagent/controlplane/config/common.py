"""Messages shared by several Istio kinds (StringMatch, Percent, WorkloadSelector, ...) and check helpers."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.types import (
    LABELS,
    PERCENT_VALUE,
    PORT,
    STR,
    Check,
    Ctx,
    F,
    ListOf,
    Msg,
    Regex,
    Str,
    child,
    is_dns1123_label,
    item,
    key_path,
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


def _selector_check(field: str) -> Check:
    def check(value: dict[str, Any], path: str, ctx: Ctx) -> None:
        labels = value.get(field)
        for key, val in as_dict(labels).items():
            kp = key_path(child(path, field), key)
            if key == "":
                ctx.error(kp, "empty key is not supported in selector")
            if "*" in str(key) or (isinstance(val, str) and "*" in val):
                ctx.error(kp, f"wildcard is not supported in selector: '{key}={val}'")

    return check


WORKLOAD_SELECTOR = Msg("WorkloadSelector", {"matchLabels": LABELS}, checks=[_selector_check("matchLabels")])
# ServiceEntry (and Sidecar) use networking.v1alpha3.WorkloadSelector, whose field is `labels`.
SE_WORKLOAD_SELECTOR = Msg("WorkloadSelector", {"labels": LABELS}, checks=[_selector_check("labels")])

# (group, kind) a policy targetRef may name; "" is the core group (Istio's allowed target kinds).
TARGET_REF_KINDS = (
    ("", "Service"),
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)


def _check_target_ref(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if value.get("namespace"):
        ctx.error(
            child(path, "namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        )
    group, kind = value.get("group", ""), value.get("kind")
    if isinstance(group, str) and isinstance(kind, str) and kind and (group, kind) not in TARGET_REF_KINDS:
        allowed = ", ".join(f"{g or 'core'}/{k}" for g, k in TARGET_REF_KINDS if g != "")
        ctx.error(path, f"targetRef must be to one of {allowed} but was {group}/{kind}")


POLICY_TARGET_REF = Msg(
    "PolicyTargetReference",
    {
        "group": Str(
            r"|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
            what="an API group (DNS subdomain) or empty",
        ),
        "kind": F(
            Str(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?", what="a kind such as 'Service'"), required=True
        ),
        "name": F(Str(nonempty=True), required=True),
        "namespace": STR,
    },
    checks=[_check_target_ref],
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
