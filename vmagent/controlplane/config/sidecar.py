"""Schema of networking.istio.io Sidecar: the egress hosts a proxy sees (what vmagent implements).

``egress[].hosts`` limits the services whose clusters, routes and listeners a proxy gets. Port-specific
egress listeners, ingress listeners, outboundTrafficPolicy and inboundConnectionPool are refused: each
changes where or how traffic flows, so ignoring them would differ silently from Istio.
"""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import SE_WORKLOAD_SELECTOR, as_list
from vmagent.controlplane.config.types import (
    REFUSED,
    STR,
    Ctx,
    F,
    ListOf,
    MapOf,
    Msg,
    Str,
    child,
    host_problem,
    is_dns1123_label,
    item,
)

_NOT_IMPLEMENTED = "vmagent implements Sidecar egress hosts only"


def _check_egress_hosts(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    for i, h in enumerate(as_list(value.get("hosts"))):
        if not isinstance(h, str):
            continue
        ns, sep, host = h.partition("/")
        hp = item(child(path, "hosts"), i)
        if not sep:
            ctx.error(
                hp, f"invalid host {h!r}, expected 'NAMESPACE/DNS_NAME' such as './*' or 'istio-system/*'"
            )
        elif ns not in ("*", ".", "~") and not is_dns1123_label(ns):
            ctx.error(hp, f"invalid namespace {ns!r} in host {h!r}")
        elif host_problem(host) is not None:
            ctx.error(hp, f"invalid host {h!r}: {host_problem(host)}")


_ANY = MapOf(STR)  # shape of a refused sub-message is not checked further

EGRESS = Msg(
    "IstioEgressListener",
    {
        "hosts": F(ListOf(Str(), nonempty=True), required=True),
        "port": F(_ANY, unsupported=REFUSED, note=_NOT_IMPLEMENTED),
        "bind": F(STR, unsupported=REFUSED, note=_NOT_IMPLEMENTED),
        "captureMode": F(STR, unsupported=REFUSED, note=_NOT_IMPLEMENTED),
    },
    checks=[_check_egress_hosts],
)

SIDECAR = Msg(
    "Sidecar",
    {
        "workloadSelector": SE_WORKLOAD_SELECTOR,
        "egress": ListOf(EGRESS),
        "ingress": F(ListOf(_ANY), unsupported=REFUSED, note=_NOT_IMPLEMENTED),
        "outboundTrafficPolicy": F(_ANY, unsupported=REFUSED, note=_NOT_IMPLEMENTED),
        "inboundConnectionPool": F(_ANY, unsupported=REFUSED, note=_NOT_IMPLEMENTED),
    },
)
