"""View of VirtualService; schema in :mod:`vmagent.controlplane.config.virtualservice`.

Optional messages and fields whose absence means something (``retries``, ``weight``) are ``None`` when
not set; other scalars default to Istio's zero value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.common import Percent, PortSelector, StringMatch


@dataclass(frozen=True)
class Destination:
    host: str = ""
    subset: str = ""
    port: PortSelector | None = None


@dataclass(frozen=True)
class HeaderOperations:
    set: Mapping[str, str] = field(default_factory=dict)
    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headers:
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


@dataclass(frozen=True)
class HTTPMatchRequest:
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    query_params: Mapping[str, StringMatch] = field(default_factory=dict)
    ignore_uri_case: bool = False
    without_headers: Mapping[str, StringMatch] = field(default_factory=dict)
    source_namespace: str = ""
    stat_prefix: str = ""


@dataclass(frozen=True)
class HTTPRouteDestination:
    destination: Destination = field(default_factory=Destination)
    weight: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination = field(default_factory=Destination)
    weight: int | None = None


@dataclass(frozen=True)
class HTTPRedirect:
    uri: str = ""
    authority: str = ""
    port: int = 0
    derive_port: str = ""
    scheme: str = ""
    redirect_code: int = 0  # 0: not set (301)


@dataclass(frozen=True)
class HTTPBody:
    string: str | None = None
    bytes: str | None = None


@dataclass(frozen=True)
class HTTPDirectResponse:
    status: int = 200
    body: HTTPBody | None = None


@dataclass(frozen=True)
class Delegate:
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class RegexRewrite:
    match: str = ""
    rewrite: str = ""


@dataclass(frozen=True)
class HTTPRewrite:
    uri: str | None = None
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None


@dataclass(frozen=True)
class HTTPRetry:
    attempts: int = 0
    per_try_timeout: str | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: str | None = None


@dataclass(frozen=True)
class Delay:
    fixed_delay: str | None = None
    exponential_delay: str | None = None
    percentage: Percent | None = None
    percent: int | None = None


@dataclass(frozen=True)
class Abort:
    http_status: int | None = None
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None


@dataclass(frozen=True)
class HTTPFaultInjection:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_origin: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: str | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str = ""


@dataclass(frozen=True)
class HTTPMirrorPolicy:
    destination: Destination = field(default_factory=Destination)
    percentage: Percent | None = None


@dataclass(frozen=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    mirror_percent: int | None = None
    mirror_percentage: Percent | None = None
    legacy_mirror_percent: str | None = field(default=None, metadata={"key": "mirror_percent"})  # refused
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


@dataclass(frozen=True)
class TLSMatchAttributes:
    sni_hosts: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""


@dataclass(frozen=True)
class L4MatchAttributes:
    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_subnet: str = ""
    source_labels: Mapping[str, str] = field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""


@dataclass(frozen=True)
class TLSRoute:
    match: tuple[TLSMatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class TCPRoute:
    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class VirtualService:
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    export_to: tuple[str, ...] = ()
