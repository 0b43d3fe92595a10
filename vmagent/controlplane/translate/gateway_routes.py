"""Envoy routes for the VirtualServices bound to a gateway server.

This covers what a gateway needs to route to mesh services: ``http[].match`` on uri, method, authority
and headers (exact, prefix, regex), ``route`` destinations with subsets, ports and weights, ``redirect``,
``directResponse``, ``rewrite`` (uri prefix, authority), ``timeout`` and ``retries``. Destinations are the
outbound clusters ``outbound|PORT|SUBSET|HOST``. A destination without ``port`` uses the service's only
port (or, for a service with several, the first one; Istio requires the port then).

The sidecar route builder of ``routes`` (issue 6) is the one place for the full VirtualService
semantics; this module is the gateway's entry point to it and keeps the gateway working on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.gateway import Server, fqdn, match_port_ok, route_applies
from vmagent.controlplane.translate.protos import boolean, duration, u32
from vmagent.controlplane.translate.proxy import MeshOptions
from vmagent.controlplane.translate.routes import DEFAULT_RETRIES, DEFAULT_RETRY_ON

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def parse_duration(text: object) -> float | None:
    """Istio durations (``1.5s``, ``300ms``, ``1m``, ``1h``) in seconds; None when absent or unparsable."""
    if not isinstance(text, str) or not text:
        return None
    units = (("ms", 0.001), ("us", 1e-6), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
    for suffix, scale in units:
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * scale
            except ValueError:
                return None
    return None


def _string_matcher(spec: Mapping[str, Any], ignore_case: bool = False) -> string_pb2.StringMatcher | None:
    if "exact" in spec:
        return string_pb2.StringMatcher(exact=str(spec["exact"]), ignore_case=ignore_case)
    if "prefix" in spec:
        return string_pb2.StringMatcher(prefix=str(spec["prefix"]), ignore_case=ignore_case)
    if "regex" in spec:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=str(spec["regex"])))
    return None


def _header(name: str, spec: Mapping[str, Any]) -> rc.HeaderMatcher:
    m = _string_matcher(spec)
    if m is None:  # ``{}``: the header must be present
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=m)


def route_match(match: Mapping[str, Any]) -> rc.RouteMatch:
    """An Envoy RouteMatch for one ``HTTPMatchRequest`` (uri, method, authority, headers)."""
    ignore = bool(match.get("ignoreUriCase"))
    uri = _dict(match.get("uri"))
    out = rc.RouteMatch(case_sensitive=boolean(not ignore)) if ignore else rc.RouteMatch()
    if "exact" in uri:
        out.path = str(uri["exact"])
    elif "regex" in uri:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=str(uri["regex"])))
    else:
        out.prefix = str(uri.get("prefix", "/"))
    for key, header in (("method", ":method"), ("authority", ":authority")):
        spec = _dict(match.get(key))
        if spec:
            out.headers.append(_header(header, spec))
    for hname, spec in sorted(_dict(match.get("headers")).items()):
        out.headers.append(_header(str(hname).lower(), _dict(spec)))
    return out


def _destination_cluster(
    dest: Mapping[str, Any], vs_namespace: str, services: Mapping[str, Service], mesh: MeshOptions
) -> str:
    host = fqdn(str(dest.get("host", "")), vs_namespace, mesh.dns_domain)
    port = _dict(dest.get("port")).get("number")
    if port is None:
        svc = services.get(host)
        port = min(p.number for p in svc.ports) if svc is not None and svc.ports else 80
    return names.outbound_cluster(int(port), host, str(dest.get("subset") or ""))


def _route_action(
    http: Mapping[str, Any], vs_namespace: str, services: Mapping[str, Service], mesh: MeshOptions
) -> rc.RouteAction:
    dests = [_dict(d) for d in _list(http.get("route"))]
    action = rc.RouteAction(timeout=duration(parse_duration(http.get("timeout")) or 0))
    clusters = [
        (_destination_cluster(_dict(d.get("destination")), vs_namespace, services, mesh), d) for d in dests
    ]
    if len(clusters) == 1:
        action.cluster = clusters[0][0]
    else:
        weighted = rc.WeightedCluster()
        for name, d in clusters:
            weight = int(d.get("weight", 0) or 0)
            if weight > 0:
                weighted.clusters.append(rc.WeightedCluster.ClusterWeight(name=name, weight=u32(weight)))
        action.weighted_clusters.CopyFrom(weighted)
    rewrite = _dict(http.get("rewrite"))
    if rewrite.get("uri") is not None:
        action.prefix_rewrite = str(rewrite["uri"])
    if rewrite.get("authority"):
        action.host_rewrite_literal = str(rewrite["authority"])
    retries = _dict(http.get("retries")) if "retries" in http else None
    if retries is None:
        action.retry_policy.CopyFrom(
            rc.RetryPolicy(retry_on=DEFAULT_RETRY_ON, num_retries=u32(DEFAULT_RETRIES))
        )
    elif int(retries.get("attempts", 0) or 0) > 0:
        policy = rc.RetryPolicy(
            retry_on=str(retries.get("retryOn") or "connect-failure,refused-stream,unavailable,cancelled"),
            num_retries=u32(int(retries["attempts"])),
        )
        per_try = parse_duration(retries.get("perTryTimeout"))
        if per_try:
            policy.per_try_timeout.CopyFrom(duration(per_try))
        action.retry_policy.CopyFrom(policy)
    return action


def _redirect(spec: Mapping[str, Any]) -> rc.RedirectAction:
    out = rc.RedirectAction()
    if spec.get("uri"):
        out.path_redirect = str(spec["uri"])
    if spec.get("authority"):
        out.host_redirect = str(spec["authority"])
    if spec.get("scheme"):
        out.scheme_redirect = str(spec["scheme"])
    if spec.get("port"):
        out.port_redirect = int(spec["port"])
    out.response_code = _REDIRECT_CODES.get(
        int(spec.get("redirectCode", 301)), rc.RedirectAction.MOVED_PERMANENTLY
    )  # type: ignore[assignment]
    return out


def http_routes(
    vs: ConfigObject, server: Server, services: Sequence[Service], mesh: MeshOptions
) -> list[rc.Route]:
    """The routes of ``vs``'s ``http`` section that apply on ``server`` (in order; first match wins)."""
    by_host = {s.hostname: s for s in services}
    out: list[rc.Route] = []
    for i, raw in enumerate(_list(vs.spec.get("http"))):
        http = _dict(raw)
        if not route_applies(http, server):
            continue
        matches = [_dict(m) for m in _list(http.get("match"))] or [{}]
        matches = [
            m
            for m in matches
            if match_port_ok(m, server.port)
            and (
                not m.get("gateways")
                or server.gateway_ref in m["gateways"]
                or server.gateway_name in m["gateways"]
            )
        ]
        for j, m in enumerate(matches):
            route = rc.Route(
                name=str(http.get("name") or f"{vs.namespace}.{vs.name}.{i}.{j}"), match=route_match(m)
            )
            if http.get("redirect") is not None:
                route.redirect.CopyFrom(_redirect(_dict(http["redirect"])))
            elif http.get("directResponse") is not None:
                dr = _dict(http["directResponse"])
                route.direct_response.status = int(dr.get("status", 200))
                body = _dict(dr.get("body"))
                if body.get("string") is not None:
                    route.direct_response.body.inline_string = str(body["string"])
            elif _list(http.get("route")):
                route.route.CopyFrom(_route_action(http, vs.namespace, by_host, mesh))
            else:
                continue
            out.append(route)
    return out


def tcp_destination(
    route: Mapping[str, Any], vs_namespace: str, services: Sequence[Service], mesh: MeshOptions
) -> str:
    """The cluster of a ``tcp``/``tls`` route's first destination (weights are not split for TCP here)."""
    by_host = {s.hostname: s for s in services}
    dests = [_dict(d) for d in _list(route.get("route"))]
    if not dests:
        return names.BLACKHOLE_CLUSTER
    return _destination_cluster(_dict(dests[0].get("destination")), vs_namespace, by_host, mesh)
