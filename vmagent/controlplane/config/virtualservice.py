"""Schema and semantic checks of networking.istio.io VirtualService."""

from __future__ import annotations

from typing import Any

from vmagent.controlplane.config.common import (
    EXPORT_TO,
    PERCENT,
    PORT_SELECTOR,
    STRING_MATCH,
    as_dict,
    as_list,
)
from vmagent.controlplane.config.types import (
    DURATION,
    DURATION_1MS,
    IGNORED,
    LABELS,
    NONNEG,
    PORT,
    REFUSED,
    STR,
    STRINGS,
    UINT32,
    Bool,
    Ctx,
    Enum,
    F,
    Host,
    Int,
    IpOrCidr,
    ListOf,
    MapOf,
    Msg,
    Regex,
    child,
    item,
)

DESTINATION = Msg(
    "Destination",
    {"host": F(Host(), required=True), "subset": STR, "port": PORT_SELECTOR},
)
HEADER_OPS = Msg("HeaderOperations", {"set": MapOf(STR), "add": MapOf(STR), "remove": STRINGS})
HEADERS = Msg("Headers", {"request": HEADER_OPS, "response": HEADER_OPS})

HTTP_MATCH = Msg(
    "HTTPMatchRequest",
    {
        "name": STR,
        "uri": STRING_MATCH,
        "scheme": STRING_MATCH,
        "method": STRING_MATCH,
        "authority": STRING_MATCH,
        "headers": MapOf(STRING_MATCH),
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": STRINGS,
        "queryParams": MapOf(STRING_MATCH),
        "ignoreUriCase": Bool(),
        "withoutHeaders": MapOf(STRING_MATCH),
        "sourceNamespace": STR,
        "statPrefix": F(STR, unsupported=IGNORED, note="route statistics use vmagent's own names"),
    },
)

HTTP_ROUTE_DEST = Msg(
    "HTTPRouteDestination",
    {"destination": F(DESTINATION, required=True), "weight": NONNEG, "headers": HEADERS},
)
ROUTE_DEST = Msg("RouteDestination", {"destination": F(DESTINATION, required=True), "weight": NONNEG})


def _check_redirect(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    code = value.get("redirectCode")
    if isinstance(code, int) and not isinstance(code, bool) and code not in (301, 302, 303, 307, 308):
        ctx.error(child(path, "redirectCode"), f"{code} is not a redirect status (301, 302, 303, 307 or 308)")


HTTP_REDIRECT = Msg(
    "HTTPRedirect",
    {
        "uri": STR,
        "authority": STR,
        "port": PORT,
        "derivePort": F(
            Enum("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"),
            unsupported=REFUSED,
            note="set 'port' instead",
        ),
        "scheme": STR,
        "redirectCode": UINT32,
    },
    oneofs=[("port", "derivePort")],
    checks=[_check_redirect],
)
HTTP_DIRECT_RESPONSE = Msg(
    "HTTPDirectResponse",
    {
        "status": F(Int(200, 599, what="an HTTP status"), required=True),
        "body": Msg("HTTPBody", {"string": STR, "bytes": STR}, oneofs=[("string", "bytes")]),
    },
)
DELEGATE = Msg("Delegate", {"name": F(STR, required=True), "namespace": STR})
HTTP_REWRITE = Msg(
    "HTTPRewrite",
    {
        "uri": STR,
        "authority": STR,
        "uriRegexRewrite": Msg(
            "RegexRewrite", {"match": F(Regex(), required=True), "rewrite": F(STR, required=True)}
        ),
    },
    oneofs=[("uri", "uriRegexRewrite")],
)
HTTP_RETRY = Msg(
    "HTTPRetry",
    {
        "attempts": NONNEG,
        "perTryTimeout": DURATION_1MS,
        "retryOn": STR,
        "retryRemoteLocalities": F(Bool(), unsupported=IGNORED, note="localities are not told apart"),
        "retryIgnorePreviousHosts": Bool(),
        "backoff": DURATION_1MS,
    },
)


def _check_delay(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if value.get("exponentialDelay") is None and value.get("fixedDelay") is None:
        ctx.error(child(path, "fixedDelay"), "required field is missing")


def _check_abort(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if all(value.get(k) is None for k in ("httpStatus", "grpcStatus", "http2Error")):
        ctx.error(path, "one of 'httpStatus', 'grpcStatus', 'http2Error' is required")


FAULT = Msg(
    "HTTPFaultInjection",
    {
        "delay": Msg(
            "HTTPFaultInjection.Delay",
            {
                "fixedDelay": DURATION_1MS,
                "exponentialDelay": F(
                    DURATION, unsupported=REFUSED, note="Istio does not implement it either; use fixedDelay"
                ),
                "percentage": PERCENT,
                "percent": F(Int(0, 100, what="a percentage"), deprecated="use 'percentage.value' instead"),
            },
            checks=[_check_delay],
        ),
        "abort": Msg(
            "HTTPFaultInjection.Abort",
            {
                "httpStatus": Int(200, 599, what="an HTTP status"),
                "grpcStatus": STR,
                "http2Error": F(STR, unsupported=REFUSED, note="use httpStatus or grpcStatus"),
                "percentage": PERCENT,
            },
            oneofs=[("httpStatus", "grpcStatus", "http2Error")],
            checks=[_check_abort],
        ),
    },
)
CORS = Msg(
    "CorsPolicy",
    {
        "allowOrigins": ListOf(STRING_MATCH),
        "allowOrigin": F(STRINGS, deprecated="use 'allowOrigins' instead"),
        "allowMethods": STRINGS,
        "allowHeaders": STRINGS,
        "exposeHeaders": STRINGS,
        "maxAge": DURATION,
        "allowCredentials": Bool(),
        "unmatchedPreflights": Enum("UNSPECIFIED", "FORWARD", "IGNORE"),
    },
)
MIRROR_POLICY = Msg("HTTPMirrorPolicy", {"destination": F(DESTINATION, required=True), "percentage": PERCENT})


def check_weights(routes: list[Any], path: str, ctx: Ctx) -> None:
    """Istio's rule: once any destination carries a weight, the weights must sum to 100."""
    weights = [as_dict(r).get("weight") for r in routes]
    if all(w is None for w in weights) or not all(isinstance(w, int | type(None)) for w in weights):
        return
    if len(routes) == 1 and weights[0] in (None, 100):
        return
    total = sum(w for w in weights if isinstance(w, int))
    if total != 100:
        ctx.error(path, f"route weights must sum to 100, got {total}")


def _check_http_route(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    route, redirect = value.get("route"), value.get("redirect")
    direct, delegate = value.get("directResponse"), value.get("delegate")
    if not route and redirect is None and direct is None and delegate is None:
        ctx.error(path, "one of 'route', 'redirect', 'directResponse' or 'delegate' is required")
    present = [k for k in ("route", "redirect", "directResponse", "delegate") if value.get(k)]
    if len(present) > 1:
        ctx.error(
            path, f"only one of 'route', 'redirect', 'directResponse', 'delegate' may be set, got {present}"
        )
    if value.get("rewrite") is not None and (redirect is not None or direct is not None):
        ctx.error(child(path, "rewrite"), "rewrite cannot be combined with redirect or directResponse")
    if value.get("mirror") is not None and value.get("mirrors") is not None:
        ctx.error(path, "only one of 'mirror', 'mirrors' may be set")
    check_weights(as_list(route), child(path, "route"), ctx)


HTTP_ROUTE = Msg(
    "HTTPRoute",
    {
        "name": STR,
        "match": ListOf(HTTP_MATCH),
        "route": ListOf(HTTP_ROUTE_DEST),
        "redirect": HTTP_REDIRECT,
        "directResponse": HTTP_DIRECT_RESPONSE,
        "delegate": DELEGATE,
        "rewrite": HTTP_REWRITE,
        "timeout": DURATION,
        "retries": HTTP_RETRY,
        "fault": FAULT,
        "mirror": DESTINATION,
        "mirrors": ListOf(MIRROR_POLICY),
        "mirrorPercent": F(Int(0, 100, what="a percentage"), deprecated="use 'mirrorPercentage' instead"),
        "mirrorPercentage": PERCENT,
        "mirror_percent": F(STR, unsupported=REFUSED, note="Istio's legacy spelling; write mirrorPercentage"),
        "corsPolicy": CORS,
        "headers": HEADERS,
    },
    checks=[_check_http_route],
)

SUBNETS = ListOf(IpOrCidr())
TLS_MATCH = Msg(
    "TLSMatchAttributes",
    {
        "sniHosts": F(ListOf(Host(), nonempty=True), required=True),
        "destinationSubnets": SUBNETS,
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": STRINGS,
        "sourceNamespace": STR,
    },
)
L4_MATCH = Msg(
    "L4MatchAttributes",
    {
        "destinationSubnets": SUBNETS,
        "port": PORT,
        "sourceSubnet": F(IpOrCidr(), unsupported=REFUSED, note="a route would match every source"),
        "sourceLabels": LABELS,
        "gateways": STRINGS,
        "sourceNamespace": STR,
    },
)


def _check_l4_route(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    check_weights(as_list(value.get("route")), child(path, "route"), ctx)


TLS_ROUTE = Msg(
    "TLSRoute",
    {"match": F(ListOf(TLS_MATCH, nonempty=True), required=True), "route": ListOf(ROUTE_DEST)},
    checks=[_check_l4_route],
)
TCP_ROUTE = Msg(
    "TCPRoute",
    {"match": ListOf(L4_MATCH), "route": ListOf(ROUTE_DEST)},
    checks=[_check_l4_route],
)


def _check_vs(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if not value.get("http") and not value.get("tcp") and not value.get("tls"):
        ctx.error(path, "at least one of 'http', 'tcp' or 'tls' routes is required")
    hosts = value.get("hosts")
    if not hosts and value.get("gateways"):
        ctx.error(
            child(path, "hosts"), "required when 'gateways' is set (only delegate VirtualServices omit hosts)"
        )
    for i, h in enumerate(as_list(hosts)):
        if h == "*" and not value.get("gateways"):
            ctx.error(
                item(child(path, "hosts"), i), "'*' is only allowed in VirtualServices bound to gateways"
            )
    for i, r in enumerate(as_list(value.get("tcp"))):
        if not as_dict(r).get("route"):
            ctx.error(child(item(child(path, "tcp"), i), "route"), "required field is missing")
    for i, r in enumerate(as_list(value.get("tls"))):
        if not as_dict(r).get("route"):
            ctx.error(child(item(child(path, "tls"), i), "route"), "required field is missing")


VIRTUAL_SERVICE = Msg(
    "VirtualService",
    {
        "hosts": ListOf(Host(ip=True)),
        "gateways": STRINGS,
        "http": ListOf(HTTP_ROUTE),
        "tls": ListOf(TLS_ROUTE),
        "tcp": ListOf(TCP_ROUTE),
        "exportTo": EXPORT_TO,
    },
    checks=[_check_vs],
)
