"""One VirtualService ``http`` route as Envoy routes (one per match in force, same action each).

Match: ``uri`` exact/prefix/regex (``ignoreUriCase``), ``scheme``/``method``/``authority`` as the
pseudo-headers ``:scheme``/``:method``/``:authority``, ``headers`` (an empty match tests presence),
``withoutHeaders`` (inverted), ``queryParams`` (an empty ``exact`` tests presence). ``port``,
``sourceLabels``, ``sourceNamespace`` and ``gateways`` select the matches in force (see virtualservice).
Regexes go to Envoy as written (RE2); one RE2 refuses makes Envoy NACK the route configuration.

Action: ``route`` (a cluster, or weighted clusters with per-destination header operations), ``redirect``
or ``directResponse``; ``timeout`` (none by default, as in Istio), ``retries`` (none given: Istio's default, 2 retries on
connect-failure, refused-stream, unavailable, cancelled and 503, each on another host; ``attempts: 0``
turns retries off; status codes in ``retryOn`` become retriable status codes; no ``previous_hosts``
for consistent-hash destinations or with ``retryIgnorePreviousHosts: false``; a route whose retry
conditions are the default ones is preceded by a twin for the idempotent methods that also retries
``reset``, see ``failover``), ``mirror``/``mirrors`` with their percentages,
``rewrite`` (uri as prefix rewrite, ``uriRegexRewrite``, authority), ``headers`` on requests and
responses, and — through per-route filter config — ``fault`` (delay and abort with percentages) and
``corsPolicy``. ``consistentHash`` of the destination's DestinationRule becomes the route's hash policy.
``delegate`` is not supported: such routes are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate.failover import idempotent_reset_retry
from vmagent.controlplane.translate.protos import boolean, duration, typed, u32
from vmagent.controlplane.translate.trafficpolicy import route_hash_policy, seconds
from vmagent.controlplane.translate.virtualservice import Destination, RouteContext, applicable_matches

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
# Istio's default route retry policy (pilot's retry.DefaultPolicy): 2 retries on connection failures,
# refused streams, gRPC unavailable/cancelled and a 503 from the upstream, each retry on another host
# (``previous_hosts``, up to 5 host selections). It is also the base of VirtualService ``retries``.
ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
ISTIO_RETRY_CODES = (503,)
DEFAULT_RETRY_ON = ISTIO_RETRY_ON
DEFAULT_RETRIES = 2
HOST_SELECTION_ATTEMPTS = 5
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


def _d(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _l(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def string_matcher(m: Mapping[str, Any], ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's StringMatch as Envoy's (RE2 regex as written)."""
    if "exact" in m:
        return string_pb2.StringMatcher(exact=str(m["exact"]), ignore_case=ignore_case)
    if "prefix" in m:
        return string_pb2.StringMatcher(prefix=str(m["prefix"]), ignore_case=ignore_case)
    if "regex" in m:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=str(m["regex"])))
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))


def _is_empty(m: Mapping[str, Any]) -> bool:
    return not any(k in m for k in ("exact", "prefix", "regex")) or m.get("exact") == ""


def header_matcher(name: str, m: Mapping[str, Any], invert: bool = False) -> rc.HeaderMatcher:
    hm = rc.HeaderMatcher(name=name.lower(), invert_match=invert)
    if not any(k in m for k in ("exact", "prefix", "regex")):
        hm.present_match = True
    else:
        hm.string_match.CopyFrom(string_matcher(m))
    return hm


def route_match(match: Mapping[str, Any]) -> rc.RouteMatch:
    """Envoy's RouteMatch for one Istio HTTPMatchRequest."""
    out = rc.RouteMatch()
    uri = _d(match.get("uri"))
    if "exact" in uri:
        out.path = str(uri["exact"])
    elif "prefix" in uri:
        out.prefix = str(uri["prefix"])
    elif "regex" in uri:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=str(uri["regex"])))
    else:
        out.prefix = "/"
    if match.get("ignoreUriCase"):
        out.case_sensitive.CopyFrom(boolean(False))
    for field, header in (("scheme", ":scheme"), ("method", ":method"), ("authority", ":authority")):
        if field in match:
            out.headers.append(header_matcher(header, _d(match[field])))
    for name, m in sorted(_d(match.get("headers")).items()):
        out.headers.append(header_matcher(str(name), _d(m)))
    for name, m in sorted(_d(match.get("withoutHeaders")).items()):
        out.headers.append(header_matcher(str(name), _d(m), invert=True))
    for name, m in sorted(_d(match.get("queryParams")).items()):
        qm = rc.QueryParameterMatcher(name=str(name))
        md = _d(m)
        if _is_empty(md):
            qm.present_match = True
        else:
            qm.string_match.CopyFrom(string_matcher(md))
        out.query_parameters.append(qm)
    return out


def _header_options(ops: Mapping[str, Any]) -> list[base_pb2.HeaderValueOption]:
    HVO = base_pb2.HeaderValueOption
    out = []
    for key, value in sorted(_d(ops.get("set")).items()):
        out.append(
            HVO(
                header=base_pb2.HeaderValue(key=str(key), value=str(value)),
                append_action=HVO.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
    for key, value in sorted(_d(ops.get("add")).items()):
        out.append(
            HVO(
                header=base_pb2.HeaderValue(key=str(key), value=str(value)),
                append_action=HVO.APPEND_IF_EXISTS_OR_ADD,
            )
        )
    return out


def _apply_headers(target: Any, headers: Mapping[str, Any]) -> None:
    """Istio ``headers`` (request/response set, add, remove) onto a Route or ClusterWeight."""
    req, resp = _d(headers.get("request")), _d(headers.get("response"))
    target.request_headers_to_add.extend(_header_options(req))
    target.request_headers_to_remove.extend(str(h) for h in _l(req.get("remove")))
    target.response_headers_to_add.extend(_header_options(resp))
    target.response_headers_to_remove.extend(str(h) for h in _l(resp.get("remove")))


def fractional(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage (0-100, fractions allowed) as parts per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _percentage(spec: Mapping[str, Any], old_key: str = "percent", key: str = "percentage") -> float:
    """``KEY.value`` (``percentage.value``), else the deprecated integer field, else 100."""
    if spec.get(key) is not None:
        return float(_d(spec[key]).get("value", 0.0))
    if spec.get(old_key) is not None:
        return float(spec[old_key])
    return 100.0


def default_retry_policy(consistent_hash: bool = False) -> rc.RetryPolicy:
    """Istio's default retry policy; with a consistent-hash destination retries stay on the same host
    choice (no ``previous_hosts``), as in Istio."""
    policy = rc.RetryPolicy(
        retry_on=ISTIO_RETRY_ON,
        num_retries=u32(DEFAULT_RETRIES),
        retriable_status_codes=ISTIO_RETRY_CODES,
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
    )
    if not consistent_hash:
        policy.retry_host_predicate.append(
            rc.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=typed(previous_hosts_pb2.PreviousHostsPredicate())
            )
        )
    return policy


def retry_policy(retries: Mapping[str, Any], consistent_hash: bool = False) -> rc.RetryPolicy | None:
    """Envoy's retry policy for Istio ``retries`` (None when ``attempts`` is 0): the default with
    ``attempts``, ``retryOn`` (numbers become retriable status codes), ``perTryTimeout``, ``backoff``
    and ``retryIgnorePreviousHosts`` applied."""
    attempts = int(retries.get("attempts") or 0)
    if attempts <= 0:
        return None
    text = str(retries.get("retryOn") or "")
    policy = default_retry_policy(consistent_hash)
    policy.num_retries.CopyFrom(u32(attempts))
    ignore_previous = retries.get("retryIgnorePreviousHosts")
    if ignore_previous is not None:
        del policy.retry_host_predicate[:]
        if ignore_previous:
            policy.retry_host_predicate.append(
                rc.RetryPolicy.RetryHostPredicate(
                    name=PREVIOUS_HOSTS, typed_config=typed(previous_hosts_pb2.PreviousHostsPredicate())
                )
            )
    if text:
        del policy.retriable_status_codes[:]
        tokens = [t.strip() for t in text.split(",") if t.strip()]
        codes = [int(t) for t in tokens if t.isdigit()]
        words = [t for t in tokens if not t.isdigit()]
        if codes and "retriable-status-codes" not in words:
            words.append("retriable-status-codes")
        policy.retry_on = ",".join(words)
        policy.retriable_status_codes.extend(codes)
    if (t := seconds(retries.get("perTryTimeout"))) is not None:
        policy.per_try_timeout.CopyFrom(duration(t))
    if (t := seconds(retries.get("backoff"))) is not None:
        policy.retry_back_off.CopyFrom(rc.RetryPolicy.RetryBackOff(base_interval=duration(t)))
    return policy


def fault_config(fault: Mapping[str, Any]) -> fault_pb2.HTTPFault | None:
    """The fault filter's per-route config for Istio ``fault`` (None when it injects nothing)."""
    out = fault_pb2.HTTPFault()
    delay = _d(fault.get("delay"))
    if delay and (t := seconds(delay.get("fixedDelay"))) is not None:
        out.delay.CopyFrom(
            common_fault.FaultDelay(fixed_delay=duration(t), percentage=fractional(_percentage(delay)))
        )
    abort = _d(fault.get("abort"))
    if abort.get("httpStatus") is not None:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=int(abort["httpStatus"]), percentage=fractional(_percentage(abort))
            )
        )
    elif abort.get("grpcStatus") is not None:
        status = str(abort["grpcStatus"])
        code = int(status) if status.isdigit() else _GRPC_CODES.get(status.upper(), 2)
        out.abort.CopyFrom(fault_pb2.FaultAbort(grpc_status=code, percentage=fractional(_percentage(abort))))
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def cors_policy(cors: Mapping[str, Any]) -> cors_pb2.CorsPolicy:
    """The CORS filter's per-route policy for Istio ``corsPolicy``."""
    out = cors_pb2.CorsPolicy()
    for m in _l(cors.get("allowOrigins")):
        out.allow_origin_string_match.append(string_matcher(_d(m)))
    for origin in _l(cors.get("allowOrigin")):
        if origin == "*":
            out.allow_origin_string_match.append(
                string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
            )
        else:
            out.allow_origin_string_match.append(string_pb2.StringMatcher(exact=str(origin)))
    out.allow_methods = ",".join(str(x) for x in _l(cors.get("allowMethods")))
    out.allow_headers = ",".join(str(x) for x in _l(cors.get("allowHeaders")))
    out.expose_headers = ",".join(str(x) for x in _l(cors.get("exposeHeaders")))
    if (t := seconds(cors.get("maxAge"))) is not None:
        out.max_age = str(int(t))
    if cors.get("allowCredentials") is not None:
        out.allow_credentials.CopyFrom(boolean(bool(cors["allowCredentials"])))
    unmatched = str(cors.get("unmatchedPreflights") or "")
    if unmatched in ("FORWARD", "IGNORE"):
        out.forward_not_matching_preflights.CopyFrom(boolean(unmatched == "FORWARD"))
    return out


def _mirrors(vs: ConfigObject, spec: Mapping[str, Any], ctx: RouteContext) -> list[Any]:
    pairs: list[tuple[Mapping[str, Any], float]] = []
    if spec.get("mirror") is not None:
        pairs.append((_d(spec["mirror"]), _percentage(spec, "mirrorPercent", "mirrorPercentage")))
    for m in _l(spec.get("mirrors")):
        md = _d(m)
        pairs.append((_d(md.get("destination")), _percentage(md, "")))
    out = []
    for dest, pct in pairs:
        policy = rc.RouteAction.RequestMirrorPolicy(cluster=ctx.destination(vs, dest).cluster)
        if pct < 100.0:
            policy.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(default_value=fractional(pct)))
        out.append(policy)
    return out


def _route_action(
    vs: ConfigObject,
    spec: Mapping[str, Any],
    dests: Sequence[Destination],
    ctx: RouteContext,
    route: rc.Route,
) -> None:
    action = rc.RouteAction()
    if len(dests) == 1:
        action.cluster = dests[0].cluster
        _apply_headers(route, dests[0].headers)
    else:
        for d in dests:
            cw = rc.WeightedCluster.ClusterWeight(name=d.cluster, weight=u32(d.weight))
            _apply_headers(cw, d.headers)
            action.weighted_clusters.clusters.append(cw)
    timeout = seconds(spec.get("timeout"))
    action.timeout.CopyFrom(duration(timeout or 0))
    hashes = [tuple(route_hash_policy(ctx.policy(d))) for d in dests]
    hashed = bool(hashes and hashes[0] and all(h == hashes[0] for h in hashes))
    retries = spec.get("retries")
    if retries is None:
        action.retry_policy.CopyFrom(default_retry_policy(hashed))
    elif (policy := retry_policy(_d(retries), hashed)) is not None:
        action.retry_policy.CopyFrom(policy)
    action.request_mirror_policies.extend(_mirrors(vs, spec, ctx))
    rewrite = _d(spec.get("rewrite"))
    if rewrite.get("uri") is not None:
        action.prefix_rewrite = str(rewrite["uri"])
    regex = _d(rewrite.get("uriRegexRewrite"))
    if regex:
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex_pb2.RegexMatcher(regex=str(regex.get("match", ""))),
                substitution=str(regex.get("rewrite", "")),
            )
        )
    if rewrite.get("authority"):
        action.host_rewrite_literal = str(rewrite["authority"])
    if hashed:
        action.hash_policy.extend(hashes[0])
    route.route.CopyFrom(action)


def _redirect(spec: Mapping[str, Any]) -> rc.RedirectAction:
    r = rc.RedirectAction(response_code=_REDIRECT_CODES.get(int(spec.get("redirectCode") or 301), 0))  # type: ignore[arg-type]
    if spec.get("uri"):
        r.path_redirect = str(spec["uri"])
    if spec.get("authority"):
        r.host_redirect = str(spec["authority"])
    if spec.get("port"):
        r.port_redirect = int(spec["port"])
    if spec.get("scheme"):
        r.scheme_redirect = str(spec["scheme"])
    return r


def _direct(spec: Mapping[str, Any]) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=int(spec.get("status", 200)))
    body = _d(spec.get("body"))
    if body.get("string") is not None:
        out.body.CopyFrom(base_pb2.DataSource(inline_string=str(body["string"])))
    elif body.get("bytes") is not None:
        out.body.CopyFrom(base_pb2.DataSource(inline_string=str(body["bytes"])))
    return out


def http_routes(vs: ConfigObject, index: int, spec: Mapping[str, Any], ctx: RouteContext) -> list[rc.Route]:
    """The Envoy routes of ``vs.spec.http[index]`` in force on this proxy and port (maybe none)."""
    matches = applicable_matches(vs, spec, ctx.proxy, ctx.port, ctx.gateway)
    if matches is None or spec.get("delegate") is not None:
        return []
    dests = ctx.destinations(vs, _l(spec.get("route")))
    name = str(spec.get("name") or f"{vs.namespace}/{vs.name}.http[{index}]")
    out = []
    for match in matches:
        route = rc.Route(name=name, match=route_match(match))
        if spec.get("redirect") is not None:
            route.redirect.CopyFrom(_redirect(_d(spec["redirect"])))
        elif spec.get("directResponse") is not None:
            route.direct_response.CopyFrom(_direct(_d(spec["directResponse"])))
        elif dests:
            _route_action(vs, spec, dests, ctx, route)
        else:
            continue
        _apply_headers(route, _d(spec.get("headers")))
        fault = fault_config(_d(spec.get("fault")))
        if fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(typed(fault))
        if spec.get("corsPolicy") is not None:
            route.typed_per_filter_config[CORS_FILTER].CopyFrom(typed(cors_policy(_d(spec["corsPolicy"]))))
        out += idempotent_reset_retry(route, DEFAULT_RETRY_ON)
    return out


def virtual_service_routes(vs: ConfigObject, ctx: RouteContext) -> list[rc.Route]:
    """Every route of ``vs`` in force on this proxy and port, in the VirtualService's order."""
    out: list[rc.Route] = []
    for i, spec in enumerate(_l(vs.spec.get("http"))):
        out += http_routes(vs, i, _d(spec), ctx)
    return out
