"""Schema of networking.istio.io EnvoyFilter, limited to the patches vmagent applies.

See ``translate/envoyfilter.py`` for what is implemented (HTTP_FILTER INSERT_BEFORE/AFTER/FIRST, CLUSTER
and LISTENER MERGE, matched by context, listener port/name, sub-filter, cluster name/service/port).
Other patch kinds and match fields are refused: an EnvoyFilter that silently did nothing, or patched
more than it says, would differ from Istio. ``patch.value`` must parse as the Envoy message it patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401  (registers Lua's type for @type)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import json_format

from vmagent.controlplane.config.common import SE_WORKLOAD_SELECTOR, as_dict
from vmagent.controlplane.config.types import (
    INT32,
    PORT,
    REFUSED,
    STR,
    Ctx,
    Enum,
    F,
    ListOf,
    MapOf,
    Msg,
    Type,
    child,
    show,
)

HCM = "envoy.filters.network.http_connection_manager"
INSERTS = ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")
# (applyTo, operation) pairs vmagent implements; the validator refuses the others.
SUPPORTED = {("HTTP_FILTER", op) for op in INSERTS} | {("CLUSTER", "MERGE"), ("LISTENER", "MERGE")}


def parse_value(apply_to: str, value: Mapping[str, Any]) -> Any:
    """``patch.value`` as the Envoy message it patches (raises json_format.ParseError when it is not)."""
    msg: Any = {
        "HTTP_FILTER": hcm.HttpFilter,
        "CLUSTER": cluster_pb2.Cluster,
        "LISTENER": listener_pb2.Listener,
    }[apply_to]()
    json_format.ParseDict(dict(value), msg)
    return msg


_NOTE = "vmagent implements HTTP_FILTER inserts and CLUSTER/LISTENER merges matched by context, port and name"


class AnyValue(Type):
    """A free-form mapping (an Envoy message in proto JSON); checked by the owning message."""

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, f"expected a mapping, got {show(value)}")


_ANY = AnyValue()
APPLY_TO = (
    "INVALID",
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
)
OPERATIONS = ("INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE")


def _refused(t: Type) -> F:
    return F(t, unsupported=REFUSED, note=_NOTE)


def _check_filter_name(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    name = value.get("name")
    if isinstance(name, str) and name and name != HCM:
        ctx.error(child(path, "name"), f"only {HCM!r} is supported by vmagent here, got {name!r}")


FILTER_MATCH = Msg(
    "EnvoyConfigObjectMatch.ListenerMatch.FilterMatch",
    {"name": STR, "subFilter": Msg("SubFilterMatch", {"name": STR})},
    checks=[_check_filter_name],
)
LISTENER_MATCH = Msg(
    "ListenerMatch",
    {
        "portNumber": PORT,
        "name": STR,
        "filterChain": Msg(
            "FilterChainMatch",
            {
                "filter": FILTER_MATCH,
                "name": _refused(STR),
                "sni": _refused(STR),
                "transportProtocol": _refused(STR),
                "applicationProtocols": _refused(STR),
                "destinationPort": _refused(PORT),
            },
        ),
        "listenerFilter": _refused(STR),
        "portName": _refused(STR),
    },
)
CLUSTER_MATCH = Msg(
    "ClusterMatch", {"portNumber": PORT, "service": STR, "name": STR, "subset": _refused(STR)}
)
MATCH = Msg(
    "EnvoyConfigObjectMatch",
    {
        "context": Enum("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"),
        "proxy": _refused(MapOf(_ANY)),
        "listener": LISTENER_MATCH,
        "routeConfiguration": _refused(MapOf(_ANY)),
        "cluster": CLUSTER_MATCH,
    },
    oneofs=[("listener", "routeConfiguration", "cluster")],
)


def _check_patch(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    apply_to, patch = value.get("applyTo"), as_dict(value.get("patch"))
    op = patch.get("operation")
    if not isinstance(apply_to, str) or not isinstance(op, str):
        return
    if (apply_to, op) not in SUPPORTED:
        ctx.error(
            child(path, "patch.operation"),
            f"applyTo {apply_to} with operation {op} is not supported by vmagent: refused ({_NOTE})",
            compat=REFUSED,
        )
        return
    if apply_to == "CLUSTER" and as_dict(value.get("match")).get("listener") is not None:
        ctx.error(child(path, "match.listener"), "a CLUSTER patch matches with 'cluster', not 'listener'")
    raw = patch.get("value")
    if raw is None:
        ctx.error(child(path, "patch.value"), "required field is missing")
        return
    if isinstance(raw, dict):
        try:
            parse_value(apply_to, raw)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            ctx.error(child(path, "patch.value"), f"not a valid Envoy {apply_to} configuration: {exc}")


CONFIG_PATCH = Msg(
    "EnvoyConfigObjectPatch",
    {
        "applyTo": F(Enum(*APPLY_TO), required=True),
        "match": MATCH,
        "patch": F(
            Msg(
                "Patch",
                {
                    "operation": F(Enum(*OPERATIONS), required=True),
                    "value": _ANY,
                    "filterClass": _refused(STR),
                },
            ),
            required=True,
        ),
    },
    checks=[_check_patch],
)

ENVOY_FILTER = Msg(
    "EnvoyFilter",
    {
        "workloadSelector": SE_WORKLOAD_SELECTOR,
        "targetRefs": _refused(ListOf(MapOf(_ANY))),
        "configPatches": ListOf(CONFIG_PATCH),
        "priority": INT32,
    },
)
