"""Schema and semantic checks of networking.istio.io ServiceEntry."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import (
    EXPORT_TO,
    SE_WORKLOAD_SELECTOR,
    as_dict,
    as_list,
    check_port_name,
    check_protocol,
)
from vmagent.controlplane.config.types import (
    PORT,
    STR,
    STRINGS,
    Ctx,
    Enum,
    F,
    Host,
    IpOrCidr,
    ListOf,
    Msg,
    child,
    is_ip,
    item,
    key_path,
)
from vmagent.controlplane.config.workload import workload_entry_msg

SERVICE_PORT = Msg(
    "ServicePort",
    {"number": F(PORT, required=True), "protocol": STR, "name": F(STR, required=True), "targetPort": PORT},
    checks=[check_protocol, check_port_name],
)
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")


def _check_ports(value: dict[str, Any], path: str, ctx: Ctx) -> list[str]:
    names: set[str] = set()
    numbers: set[int] = set()
    for i, p in enumerate(as_list(value.get("ports"))):
        port = as_dict(p)
        name, number = port.get("name"), port.get("number")
        if isinstance(name, str) and name:
            if name in names:
                ctx.error(child(item(child(path, "ports"), i), "name"), f"duplicate port name {name!r}")
            names.add(name)
        if isinstance(number, int) and not isinstance(number, bool):
            if number in numbers:
                ctx.error(child(item(child(path, "ports"), i), "number"), f"duplicate port number {number}")
            numbers.add(number)
    return sorted(names)


def _check_service_entry(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    port_names = _check_ports(value, path, ctx)
    resolution = value.get("resolution", "NONE")
    endpoints = as_list(value.get("endpoints"))
    hosts = as_list(value.get("hosts"))
    for i, h in enumerate(hosts):
        if h == "*":
            ctx.error(item(child(path, "hosts"), i), "'*' is not allowed in a ServiceEntry")
        elif (
            isinstance(h, str)
            and h.startswith("*")
            and resolution in ("DNS", "DNS_ROUND_ROBIN")
            and not endpoints
        ):
            ctx.error(
                item(child(path, "hosts"), i), f"wildcard host {h!r} cannot be resolved with {resolution}"
            )
    if resolution not in ("NONE", "STATIC"):
        for i, a in enumerate(as_list(value.get("addresses"))):
            if isinstance(a, str) and "/" in a:
                ctx.error(
                    item(child(path, "addresses"), i),
                    "CIDR addresses are allowed only for NONE/STATIC resolution types",
                )
    if endpoints and value.get("workloadSelector") is not None:
        ctx.error(path, "only one of 'endpoints', 'workloadSelector' may be set")
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        ctx.error(child(path, "endpoints"), "resolution DNS_ROUND_ROBIN allows at most one endpoint")
    if resolution == "NONE" and endpoints:
        ctx.error(child(path, "endpoints"), "endpoints are not allowed with resolution NONE")
    for i, ep in enumerate(endpoints):
        ep_path = item(child(path, "endpoints"), i)
        entry = as_dict(ep)
        address = entry.get("address")
        if resolution == "STATIC" and isinstance(address, str) and address:
            if not is_ip(address) and not address.startswith("unix://"):
                ctx.error(
                    child(ep_path, "address"),
                    f"address {address!r} must be an IP address or unix:// path with resolution STATIC",
                )
        if not address and not entry.get("network"):
            ctx.error(child(ep_path, "address"), "required field is missing")
        ports = entry.get("ports")
        for name in ports if isinstance(ports, dict) else {}:
            if name not in port_names:
                ctx.error(
                    key_path(child(ep_path, "ports"), name),
                    f"port name {name!r} is not defined in the ServiceEntry's ports",
                )


SERVICE_ENTRY = Msg(
    "ServiceEntry",
    {
        "hosts": F(ListOf(Host(), nonempty=True), required=True),
        "addresses": ListOf(IpOrCidr()),
        "ports": ListOf(SERVICE_PORT),
        "location": Enum("MESH_EXTERNAL", "MESH_INTERNAL"),
        "resolution": Enum(*RESOLUTIONS),
        "endpoints": ListOf(workload_entry_msg("WorkloadEntry")),
        "workloadSelector": SE_WORKLOAD_SELECTOR,
        "exportTo": EXPORT_TO,
        "subjectAltNames": STRINGS,
    },
    checks=[_check_service_entry],
)
