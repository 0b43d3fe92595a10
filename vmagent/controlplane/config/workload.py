"""Schemas of networking.istio.io WorkloadEntry (also ServiceEntry's inline endpoints) and WorkloadGroup."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.types import (
    IGNORED,
    LABELS,
    NONNEG,
    PORT,
    STR,
    UINT32,
    Ctx,
    F,
    ListOf,
    MapOf,
    Msg,
    Str,
    child,
    host_problem,
    is_dns1123_label,
    is_ip,
    key_path,
    show,
)

SERVICE_ACCOUNT = Str(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", what="a service account name (DNS-1123)")


def uds_problem(path: str) -> str | None:
    """Istio's rules for a unix:// WorkloadEntry address (``path`` after the scheme)."""
    if not path:
        return "empty unix socket path"
    if not path.startswith(("/", "@")):
        return "UDS must be an absolute path or abstract socket"
    if path.endswith("/"):
        return "UDS may not be a dir"
    return None


def address_problem(address: str) -> str | None:
    """Why ``address`` is neither an IP, a DNS name nor a unix:// socket path; None when it is fine."""
    if is_ip(address):
        return None
    if address.startswith("unix://"):
        return uds_problem(address[len("unix://") :])
    if host_problem(address, wildcard=False):
        return "expected an IP address, a DNS name or unix:///path"
    return None


def _check_entry(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    address = value.get("address")
    if isinstance(address, str) and address:
        problem = address_problem(address)
        if problem:
            ctx.error(child(path, "address"), f"invalid address {address!r}: {problem}")
    ports = value.get("ports")
    if isinstance(address, str) and address.startswith("unix://") and ports:
        ctx.error(child(path, "ports"), "UDS may not include ports")
    for name in ports if isinstance(ports, dict) else {}:
        if isinstance(name, str) and not is_dns1123_label(name):
            ctx.error(
                key_path(child(path, "ports"), name), f"invalid port name {name!r}, expected a DNS-1123 label"
            )
    locality = value.get("locality")
    if isinstance(locality, str) and locality and (len(locality.split("/")) > 3 or "" in locality.split("/")):
        ctx.error(
            child(path, "locality"), f"invalid locality {show(locality)}, expected REGION[/ZONE[/SUBZONE]]"
        )


def workload_entry_msg(name: str) -> Msg:
    return Msg(
        name,
        {
            "address": STR,
            "ports": MapOf(PORT),
            "labels": LABELS,
            "network": STR,
            "locality": STR,
            "weight": UINT32,
            "serviceAccount": SERVICE_ACCOUNT,
        },
        checks=[_check_entry],
    )


def _check_workload_entry(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if not value.get("address") and not value.get("network"):
        ctx.error(
            child(path, "address"), "required field is missing (it may be omitted only when 'network' is set)"
        )


WORKLOAD_ENTRY = workload_entry_msg("WorkloadEntry")
WORKLOAD_ENTRY.checks.append(_check_workload_entry)

HTTP_HEADER = Msg(
    "HTTPHeader", {"name": F(Str(r"[-A-Za-z0-9_]+", what="a header name"), required=True), "value": STR}
)
PROBE_PORT = F(PORT, required=True)
_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")


def _check_probe(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if all(value.get(k) is None for k in _HANDLERS):
        ctx.error(path, "one of 'httpGet', 'tcpSocket', 'exec' or 'grpc' is required")


PROBE = Msg(
    "ReadinessProbe",
    {
        "initialDelaySeconds": NONNEG,
        "timeoutSeconds": NONNEG,
        "periodSeconds": NONNEG,
        "successThreshold": NONNEG,
        "failureThreshold": NONNEG,
        "httpGet": Msg(
            "HTTPHealthCheckConfig",
            {
                "path": STR,
                "port": PROBE_PORT,
                "host": STR,
                "scheme": Str(r"(?i)https?", what="'HTTP' or 'HTTPS'"),
                "httpHeaders": ListOf(HTTP_HEADER),
            },
        ),
        "tcpSocket": Msg("TCPHealthCheckConfig", {"host": STR, "port": PROBE_PORT}),
        "exec": Msg("ExecHealthCheckConfig", {"command": F(ListOf(STR, nonempty=True), required=True)}),
        "grpc": Msg("GrpcHealthCheckConfig", {"port": PROBE_PORT, "service": STR}),
    },
    oneofs=[_HANDLERS],
    checks=[_check_probe],
)


TEMPLATE = workload_entry_msg("WorkloadEntry")
# Istio ignores a template's address: each workload registers its own.
TEMPLATE.fields["address"] = F(
    STR, unsupported=IGNORED, note="as in Istio, each workload registers its own address"
)

WORKLOAD_GROUP = Msg(
    "WorkloadGroup",
    {
        "metadata": Msg("WorkloadGroup.ObjectMeta", {"labels": LABELS, "annotations": MapOf(STR)}),
        "template": F(TEMPLATE, required=True),
        "probe": PROBE,
    },
)
