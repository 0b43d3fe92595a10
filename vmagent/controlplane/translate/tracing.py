"""Envoy's tracer on the HTTP connection managers, from MeshConfig and the Telemetry kind's ``tracing``.

Which settings apply to a workload follows Istio. The Telemetries that apply (mesh-wide in the root
namespace, namespace-wide, then those whose ``selector`` matches the workload) are merged in that order,
the more specific overriding what it sets: the first ``providers`` name, ``randomSamplingPercentage``,
``disableSpanReporting`` and ``customTags`` (by tag name). An entry's ``match.mode`` (``CLIENT``,
``SERVER``, default both) says whether it is for the client side (outbound and gateway listeners) or
the server side (inbound). Without a Telemetry provider, MeshConfig ``defaultProviders.tracing`` is used,
then the legacy ``defaultConfig.tracing.zipkin.address``. Sampling falls back to
``defaultConfig.tracing.sampling``, then Istio's 1 %; custom tags to ``defaultConfig.tracing.customTags``.
``disableSpanReporting: true`` (or no provider at all) leaves the side without a tracer.

The Envoy side is Istio's too: ``random_sampling`` is the percentage, client and overall sampling 100 %
(so a sampling decision in incoming B3 / W3C headers is kept); Zipkin reports JSON v2 to
``/api/v2/spans`` with 128-bit trace ids and its own span on each side (``shared_span_context: false``),
so the server's span is a child of the client's; OpenTelemetry exports OTLP over gRPC, or over HTTP to
``http.path``. The collector is the outbound cluster of the provider's service and port when the proxy
has one (``outbound|PORT||HOST``, with its DestinationRule and mTLS settings), otherwise a cluster
``tracing|PORT||HOST`` made here (STATIC for an IP address, STRICT_DNS for a name).

A Telemetry naming a provider MeshConfig does not define gives that side no tracer; the control plane logs
it and ``vmagent-cp validate --mesh-config`` reports it as an error (:func:`provider_ref_issues`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, grpc_service_pb2, http_service_pb2, http_uri_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from vmagent.controlplane.config.issues import Issue, object_label
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.protos import duration, socket_address, typed
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import applicable
from vmagent.controlplane.translate.tracing_config import (
    DEFAULT_SAMPLING,
    CustomTag,
    MeshTracing,
    TracingProvider,
    parse_custom_tags,
)

log = logging.getLogger(__name__)

KIND = "Telemetry"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
OTEL_TRACER = "envoy.tracers.opentelemetry"
ZIPKIN_ENDPOINT = "/api/v2/spans"
Side = Literal["client", "server"]
HcmTracing: TypeAlias = hcm.HttpConnectionManager.Tracing

_warned: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class SideTracing:
    """What one side (client or server) of a workload gets: a provider, or None for no tracer."""

    provider: TracingProvider | None
    sampling: float = DEFAULT_SAMPLING
    custom_tags: tuple[CustomTag, ...] = ()
    max_path_tag_length: int = 0


@dataclass
class _Merged:
    provider: str = ""
    provider_at: str = ""  # where the provider name came from, for messages
    sampling: float | None = None
    disabled: bool = False
    tags: dict[str, CustomTag] = field(default_factory=dict)
    found: bool = False


def _rank(obj: ConfigObject, mesh: MeshOptions) -> int:
    selector = obj.spec.get("selector")
    if isinstance(selector, Mapping) and selector.get("matchLabels"):
        return 2
    return 0 if obj.namespace == mesh.root_namespace else 1


def _covers(entry: Mapping[str, Any], side: Side) -> bool:
    match = entry.get("match")
    mode = match.get("mode", "CLIENT_AND_SERVER") if isinstance(match, Mapping) else "CLIENT_AND_SERVER"
    return mode == "CLIENT_AND_SERVER" or mode == side.upper()


def _merge(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions, side: Side) -> _Merged:
    found = [t for t in applicable(KIND, proxy, configs, mesh) if isinstance(t.spec.get("tracing"), list)]
    merged = _Merged()
    for rank in (0, 1, 2):
        at_rank = [t for t in found if _rank(t, mesh) == rank]
        if not at_rank:
            continue
        obj = at_rank[0]  # sorted by namespace and name: the first decides, as for access logging
        entries: list[Any] = obj.spec["tracing"]
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not _covers(entry, side):
                continue
            merged.found = True
            where = f"{obj.source}: {object_label(obj.kind, obj.namespace, obj.name)}: spec.tracing[{i}]"
            providers = entry.get("providers")
            if isinstance(providers, list) and providers and isinstance(providers[0], Mapping):
                merged.provider = str(providers[0].get("name", ""))
                merged.provider_at = f"{where}.providers[0].name"
            if "randomSamplingPercentage" in entry:
                merged.sampling = float(entry["randomSamplingPercentage"])
            if "disableSpanReporting" in entry:
                merged.disabled = entry["disableSpanReporting"] is True
            tags = parse_custom_tags(entry.get("customTags"), "spec.tracing.customTags", obj.source)
            merged.tags.update({t.tag: t for t in tags})
    return merged


def side_tracing(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions, side: Side) -> SideTracing:
    """The tracer settings for ``side`` of ``proxy``'s workload (see the module docstring)."""
    mt = mesh.tracing or MeshTracing()
    merged = _merge(proxy, configs, mesh, side)
    if merged.disabled:
        return SideTracing(None)
    name = merged.provider or mt.default_provider or mt.legacy_provider
    if not name:
        return SideTracing(None)
    provider = mt.provider(name)
    if provider is None:
        key = (merged.provider_at, name, side)
        if key not in _warned:
            _warned.add(key)
            log.error(
                "%s: tracing provider %r is not in MeshConfig extensionProviders (known: %s); no tracer",
                merged.provider_at or "telemetry", name, ", ".join(mt.names) or "none",
            )  # fmt: skip
        return SideTracing(None)
    sampling = merged.sampling if merged.sampling is not None else mt.sampling
    tags = tuple(merged.tags[t] for t in sorted(merged.tags)) if merged.tags else mt.custom_tags
    return SideTracing(
        provider,
        DEFAULT_SAMPLING if sampling is None else sampling,
        tags,
        provider.max_tag_length or mt.max_path_tag_length,
    )


def provider_ref_issues(objects: list[ConfigObject], tracing: MeshTracing | None) -> list[Issue]:
    """Errors for Telemetry ``tracing[].providers[].name`` that MeshConfig does not define."""
    known = set((tracing or MeshTracing()).names)
    issues: list[Issue] = []
    for obj in objects:
        if obj.kind != KIND or not isinstance(obj.spec.get("tracing"), list):
            continue
        for i, entry in enumerate(obj.spec["tracing"]):
            providers = entry.get("providers") if isinstance(entry, Mapping) else None
            for j, ref in enumerate(providers if isinstance(providers, list) else []):
                name = ref.get("name") if isinstance(ref, Mapping) else None
                if isinstance(name, str) and name not in known:
                    issues.append(
                        Issue(
                            obj.source,
                            object_label(obj.kind, obj.namespace, obj.name),
                            f"spec.tracing[{i}].providers[{j}].name",
                            f"tracing provider {name!r} is not defined in MeshConfig extensionProviders "
                            f"(known: {', '.join(sorted(known)) or 'none'})",
                        )
                    )
    return issues


# -- Envoy messages ------------------------------------------------------------------------------------


def collector_cluster(provider: TracingProvider, existing: Mapping[str, Any]) -> str:
    """The outbound cluster of the provider's service when the proxy has it, else the dedicated one."""
    outbound = names.outbound_cluster(provider.port, provider.host)
    if outbound in existing:
        return outbound
    return dedicated_cluster_name(provider)


def dedicated_cluster_name(provider: TracingProvider) -> str:
    return f"tracing|{provider.port}||{provider.host}"


def dedicated_cluster(provider: TracingProvider, mesh: MeshOptions) -> cluster_pb2.Cluster:
    """``tracing|PORT||HOST``: plain TCP (HTTP/2 for OTLP over gRPC) to the collector."""
    name = dedicated_cluster_name(provider)
    is_ip = names.ip_of(provider.host) is not None
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if is_ip else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration(mesh.connect_timeout_s),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[
                        ec.LbEndpoint(
                            endpoint=ec.Endpoint(address=socket_address(provider.host, provider.port))
                        )
                    ]
                )
            ],
        ),
    )
    if not is_ip:
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if provider.kind == "opentelemetry" and provider.http_path is None:
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

        opts = hpo.HttpProtocolOptions(
            explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options={})
        )
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            typed(opts)
        )
    return c


def _tracer(provider: TracingProvider, cluster: str, service_name: str) -> http_tracer_pb2.Tracing.Http:
    if provider.kind == "zipkin":
        zc = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster,
            collector_endpoint=ZIPKIN_ENDPOINT,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=provider.host,
            trace_id_128bit=True,
            shared_span_context=wrappers_pb2.BoolValue(value=False),
            trace_context_option=zipkin_pb2.ZipkinConfig.TraceContextOption.Value(
                provider.trace_context_option
            ),
        )
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER, typed_config=typed(zc))
    oc = opentelemetry_pb2.OpenTelemetryConfig(service_name=service_name)
    if provider.http_path is None:
        oc.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=cluster, authority=provider.host
                )
            )
        )
    else:
        uri = http_uri_pb2.HttpUri(
            uri=f"http://{provider.host}:{provider.port}{provider.http_path}",
            cluster=cluster,
            timeout=duration(provider.http_timeout_s or 1.0),
        )
        svc = http_service_pb2.HttpService(http_uri=uri)
        for hname, value in provider.http_headers:
            svc.request_headers_to_add.append(
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=hname, value=value))
            )
        oc.http_service.CopyFrom(svc)
    return http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=typed(oc))


def _custom_tag(tag: CustomTag) -> custom_tag_pb2.CustomTag:
    if tag.kind == "literal":
        return custom_tag_pb2.CustomTag(
            tag=tag.tag, literal=custom_tag_pb2.CustomTag.Literal(value=tag.value)
        )
    if tag.kind == "environment":
        return custom_tag_pb2.CustomTag(
            tag=tag.tag,
            environment=custom_tag_pb2.CustomTag.Environment(name=tag.value, default_value=tag.default),
        )
    return custom_tag_pb2.CustomTag(
        tag=tag.tag, request_header=custom_tag_pb2.CustomTag.Header(name=tag.value, default_value=tag.default)
    )


def hcm_tracing(settings: SideTracing, cluster: str, service_name: str) -> hcm.HttpConnectionManager.Tracing:
    """The ``tracing`` block of an HTTP connection manager for ``settings`` (which has a provider)."""
    assert settings.provider is not None
    t = hcm.HttpConnectionManager.Tracing(
        provider=_tracer(settings.provider, cluster, service_name),
        random_sampling=percent_pb2.Percent(value=settings.sampling),
        client_sampling=percent_pb2.Percent(value=100.0),
        overall_sampling=percent_pb2.Percent(value=100.0),
        custom_tags=[_custom_tag(tag) for tag in settings.custom_tags],
    )
    if settings.max_path_tag_length:
        t.max_path_tag_length.value = settings.max_path_tag_length
    return t


def with_tracing(
    listeners: dict[str, Message],
    client: hcm.HttpConnectionManager.Tracing | None,
    server: hcm.HttpConnectionManager.Tracing | None,
) -> dict[str, Message]:
    """Copies of ``listeners`` whose HTTP connection managers trace: ``server`` on INBOUND listeners,
    ``client`` on the others (outbound, gateway); None leaves those untouched. Inputs are not changed."""
    out: dict[str, Message] = {}
    for name, msg in listeners.items():
        if not isinstance(msg, listener_pb2.Listener):
            out[name] = msg
            continue
        block = server if msg.traffic_direction == base_pb2.INBOUND else client
        if block is None:
            out[name] = msg
            continue
        copy = listener_pb2.Listener()
        copy.CopyFrom(msg)
        chains = [*copy.filter_chains]
        if copy.HasField("default_filter_chain"):
            chains.append(copy.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                    inner = hcm.HttpConnectionManager()
                    f.typed_config.Unpack(inner)
                    inner.tracing.CopyFrom(block)
                    f.typed_config.CopyFrom(typed(inner))
        out[name] = copy
    return out
