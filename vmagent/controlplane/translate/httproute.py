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

from collections.abc import Sequence
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
from vmagent.controlplane.specs import virtualservice as vsspec
from vmagent.controlplane.specs.common import Percent, StringMatch
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


def string_matcher(m: StringMatch, ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's StringMatch as Envoy's (RE2 regex as written)."""
    if m.exact is not None:
        return string_pb2.StringMatcher(exact=m.exact, ignore_case=ignore_case)
    if m.prefix is not None:
        return string_pb2.StringMatcher(prefix=m.prefix, ignore_case=ignore_case)
    if m.regex is not None:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.regex))
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))


def _is_unset(m: StringMatch) -> bool:
    return m.exact is None and m.prefix is None and m.regex is None


def _is_empty(m: StringMatch) -> bool:
    return _is_unset(m) or m.exact == ""


def header_matcher(name: str, m: StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    hm = rc.HeaderMatcher(name=name.lower(), invert_match=invert)
    if _is_unset(m):
        hm.present_match = True
    else:
        hm.string_match.CopyFrom(string_matcher(m))
    return hm


def route_match(match: vsspec.HTTPMatchRequest) -> rc.RouteMatch:
    """Envoy's RouteMatch for one Istio HTTPMatchRequest."""
    out = rc.RouteMatch()
    uri = match.uri or StringMatch()
    if uri.exact is not None:
        out.path = uri.exact
    elif uri.prefix is not None:
        out.prefix = uri.prefix
    elif uri.regex is not None:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex))
    else:
        out.prefix = "/"
    if match.ignore_uri_case:
        out.case_sensitive.CopyFrom(boolean(False))
    for pseudo, header in (
        (match.scheme, ":scheme"),
        (match.method, ":method"),
        (match.authority, ":authority"),
    ):
        if pseudo is not None:
            out.headers.append(header_matcher(header, pseudo))
    for name, m in sorted(match.headers.items()):
        out.headers.append(header_matcher(name, m))
    for name, m in sorted(match.without_headers.items()):
        out.headers.append(header_matcher(name, m, invert=True))
    for name, m in sorted(match.query_params.items()):
        qm = rc.QueryParameterMatcher(name=name)
        if _is_empty(m):
            qm.present_match = True
        else:
            qm.string_match.CopyFrom(string_matcher(m))
        out.query_parameters.append(qm)
    return out


def _header_options(ops: vsspec.HeaderOperations) -> list[base_pb2.HeaderValueOption]:
    HVO = base_pb2.HeaderValueOption
    out = []
    for key, value in sorted(ops.set.items()):
        out.append(
            HVO(
                header=base_pb2.HeaderValue(key=key, value=value),
                append_action=HVO.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
    for key, value in sorted(ops.add.items()):
        out.append(
            HVO(
                header=base_pb2.HeaderValue(key=key, value=value),
                append_action=HVO.APPEND_IF_EXISTS_OR_ADD,
            )
        )
    return out


def _apply_headers(target: Any, headers: vsspec.Headers | None) -> None:
    """Istio ``headers`` (request/response set, add, remove) onto a Route or ClusterWeight."""
    if headers is None:
        return
    req = headers.request or vsspec.HeaderOperations()
    resp = headers.response or vsspec.HeaderOperations()
    target.request_headers_to_add.extend(_header_options(req))
    target.request_headers_to_remove.extend(req.remove)
    target.response_headers_to_add.extend(_header_options(resp))
    target.response_headers_to_remove.extend(resp.remove)


def fractional(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage (0-100, fractions allowed) as parts per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _percentage(percentage: Percent | None, old: int | None = None) -> float:
    """``percentage.value``, else the deprecated integer field ``old``, else 100."""
    if percentage is not None:
        return percentage.value
    if old is not None:
        return float(old)
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


def retry_policy(retries: vsspec.HTTPRetry, consistent_hash: bool = False) -> rc.RetryPolicy | None:
    """Envoy's retry policy for Istio ``retries`` (None when ``attempts`` is 0): the default with
    ``attempts``, ``retryOn`` (numbers become retriable status codes), ``perTryTimeout``, ``backoff``
    and ``retryIgnorePreviousHosts`` applied."""
    attempts = retries.attempts
    if attempts <= 0:
        return None
    text = retries.retry_on
    policy = default_retry_policy(consistent_hash)
    policy.num_retries.CopyFrom(u32(attempts))
    ignore_previous = retries.retry_ignore_previous_hosts
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
    if (t := seconds(retries.per_try_timeout)) is not None:
        policy.per_try_timeout.CopyFrom(duration(t))
    if (t := seconds(retries.backoff)) is not None:
        policy.retry_back_off.CopyFrom(rc.RetryPolicy.RetryBackOff(base_interval=duration(t)))
    return policy


def fault_config(fault: vsspec.HTTPFaultInjection) -> fault_pb2.HTTPFault | None:
    """The fault filter's per-route config for Istio ``fault`` (None when it injects nothing)."""
    out = fault_pb2.HTTPFault()
    delay = fault.delay
    if delay is not None and (t := seconds(delay.fixed_delay)) is not None:
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=duration(t), percentage=fractional(_percentage(delay.percentage, delay.percent))
            )
        )
    abort = fault.abort
    if abort is not None and abort.http_status is not None:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=abort.http_status, percentage=fractional(_percentage(abort.percentage))
            )
        )
    elif abort is not None and abort.grpc_status is not None:
        status = abort.grpc_status
        code = int(status) if status.isdigit() else _GRPC_CODES.get(status.upper(), 2)
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(grpc_status=code, percentage=fractional(_percentage(abort.percentage)))
        )
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def cors_policy(cors: vsspec.CorsPolicy) -> cors_pb2.CorsPolicy:
    """The CORS filter's per-route policy for Istio ``corsPolicy``."""
    out = cors_pb2.CorsPolicy()
    for m in cors.allow_origins:
        out.allow_origin_string_match.append(string_matcher(m))
    for origin in cors.allow_origin:
        if origin == "*":
            out.allow_origin_string_match.append(
                string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
            )
        else:
            out.allow_origin_string_match.append(string_pb2.StringMatcher(exact=origin))
    out.allow_methods = ",".join(cors.allow_methods)
    out.allow_headers = ",".join(cors.allow_headers)
    out.expose_headers = ",".join(cors.expose_headers)
    if (t := seconds(cors.max_age)) is not None:
        out.max_age = str(int(t))
    if cors.allow_credentials is not None:
        out.allow_credentials.CopyFrom(boolean(cors.allow_credentials))
    unmatched = cors.unmatched_preflights
    if unmatched in ("FORWARD", "IGNORE"):
        out.forward_not_matching_preflights.CopyFrom(boolean(unmatched == "FORWARD"))
    return out


def _mirrors(vs: ConfigObject, route: vsspec.HTTPRoute, ctx: RouteContext) -> list[Any]:
    pairs: list[tuple[vsspec.Destination, float]] = []
    if route.mirror is not None:
        pairs.append((route.mirror, _percentage(route.mirror_percentage, route.mirror_percent)))
    for m in route.mirrors:
        pairs.append((m.destination, _percentage(m.percentage)))
    out = []
    for dest, pct in pairs:
        policy = rc.RouteAction.RequestMirrorPolicy(cluster=ctx.destination(vs, dest).cluster)
        if pct < 100.0:
            policy.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(default_value=fractional(pct)))
        out.append(policy)
    return out


def _route_action(
    vs: ConfigObject,
    spec: vsspec.HTTPRoute,
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
    timeout = seconds(spec.timeout)
    action.timeout.CopyFrom(duration(timeout or 0))
    hashes = [tuple(route_hash_policy(ctx.policy(d))) for d in dests]
    hashed = bool(hashes and hashes[0] and all(h == hashes[0] for h in hashes))
    retries = spec.retries
    if retries is None:
        action.retry_policy.CopyFrom(default_retry_policy(hashed))
    elif (policy := retry_policy(retries, hashed)) is not None:
        action.retry_policy.CopyFrom(policy)
    action.request_mirror_policies.extend(_mirrors(vs, spec, ctx))
    rewrite = spec.rewrite
    if rewrite is not None and rewrite.uri is not None:
        action.prefix_rewrite = rewrite.uri
    regex = rewrite.uri_regex_rewrite if rewrite is not None else None
    if regex is not None:
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex_pb2.RegexMatcher(regex=regex.match),
                substitution=regex.rewrite,
            )
        )
    if rewrite is not None and rewrite.authority:
        action.host_rewrite_literal = rewrite.authority
    if hashed:
        action.hash_policy.extend(hashes[0])
    route.route.CopyFrom(action)


def _redirect(spec: vsspec.HTTPRedirect) -> rc.RedirectAction:
    r = rc.RedirectAction(response_code=_REDIRECT_CODES.get(spec.redirect_code or 301, 0))  # type: ignore[arg-type]
    if spec.uri:
        r.path_redirect = spec.uri
    if spec.authority:
        r.host_redirect = spec.authority
    if spec.port:
        r.port_redirect = spec.port
    if spec.scheme:
        r.scheme_redirect = spec.scheme
    return r


def _direct(spec: vsspec.HTTPDirectResponse) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=spec.status)
    body = spec.body or vsspec.HTTPBody()
    if body.string is not None:
        out.body.CopyFrom(base_pb2.DataSource(inline_string=body.string))
    elif body.bytes is not None:
        out.body.CopyFrom(base_pb2.DataSource(inline_string=body.bytes))
    return out


def http_routes(vs: ConfigObject, index: int, spec: vsspec.HTTPRoute, ctx: RouteContext) -> list[rc.Route]:
    """The Envoy routes of ``vs.spec.http[index]`` in force on this proxy and port (maybe none)."""
    matches = applicable_matches(vs, spec.match, vsspec.HTTPMatchRequest(), ctx.proxy, ctx.port, ctx.gateway)
    if matches is None or spec.delegate is not None:
        return []
    dests = ctx.destinations(vs, spec.route)
    name = spec.name or f"{vs.namespace}/{vs.name}.http[{index}]"
    out = []
    for match in matches:
        route = rc.Route(name=name, match=route_match(match))
        if spec.redirect is not None:
            route.redirect.CopyFrom(_redirect(spec.redirect))
        elif spec.direct_response is not None:
            route.direct_response.CopyFrom(_direct(spec.direct_response))
        elif dests:
            _route_action(vs, spec, dests, ctx, route)
        else:
            continue
        _apply_headers(route, spec.headers)
        fault = fault_config(spec.fault) if spec.fault is not None else None
        if fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(typed(fault))
        if spec.cors_policy is not None:
            route.typed_per_filter_config[CORS_FILTER].CopyFrom(typed(cors_policy(spec.cors_policy)))
        out += idempotent_reset_retry(route, DEFAULT_RETRY_ON)
    return out


def virtual_service_routes(vs: ConfigObject, ctx: RouteContext) -> list[rc.Route]:
    """Every route of ``vs`` in force on this proxy and port, in the VirtualService's order."""
    out: list[rc.Route] = []
    for i, route in enumerate(vs.spec_as(vsspec.VirtualService).http):
        out += http_routes(vs, i, route, ctx)
    return out
