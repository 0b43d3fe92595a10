"""RequestAuthentication to Envoy's ``envoy.filters.http.jwt_authn`` filter (inbound HTTP).

Istio's semantics: every ``jwtRule`` of every RequestAuthentication that applies to the workload becomes
one JWT provider. A request that carries a token must present one that some provider verifies (issuer,
signature, expiry, audiences), else it is rejected with 401; a request without a token passes (an
AuthorizationPolicy with ``requestPrincipals`` can require one). The verified payload is stored in the
dynamic metadata of the filter under ``payload`` (``PAYLOAD_KEY``), where the RBAC filters read
``request.auth.principal`` (``iss/sub``), ``request.auth.audiences``, ``request.auth.presenter`` and
``request.auth.claims[...]``.

Keys come inline (``jwks``) or from ``jwksUri``, fetched by Envoy through the cluster
``outbound|PORT||HOST`` of the URI's host and port: the cluster of a registered service (a ServiceEntry
for the JWKS host, as Istio requires when Envoy fetches the keys) or, for hosts not in the registry, one
made by ``jwks_clusters`` (STRICT_DNS, TLS with the system's CAs for https).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import empty_pb2

from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs.security import JWTRule, RequestAuthentication
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.protos import duration, socket_address, typed
from vmagent.controlplane.translate.proxy import MeshOptions

FILTER_NAME = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
JWKS_CACHE_S = 300.0
JWKS_TIMEOUT_S = 5.0
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class JwksSource:
    """Where a provider's keys come from: ``uri`` (remote, via ``cluster``) or ``inline`` JSON."""

    uri: str = ""
    cluster: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    inline: str = ""


def jwks_source(rule: JWTRule) -> JwksSource:
    """The key source of one ``jwtRule``."""
    uri = rule.jwks_uri
    if not uri:
        return JwksSource(inline=rule.jwks)
    parts = urlsplit(uri)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    return JwksSource(uri=uri, cluster=names.outbound_cluster(port, host), host=host, port=port, tls=tls)


def _rules(policies: Iterable[ConfigObject]) -> list[JWTRule]:
    """Every jwtRule once (equal rules from several policies are merged), in policy order."""
    seen: set[JWTRule] = set()
    out = []
    for policy in policies:
        for rule in policy.spec_as(RequestAuthentication).jwt_rules:
            if not rule.issuer:
                continue
            if rule not in seen:
                seen.add(rule)
                out.append(rule)
    return out


def _provider(rule: JWTRule) -> jwt.JwtProvider:
    p = jwt.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        forward=rule.forward_original_token,
        from_params=rule.from_params,
        from_cookies=rule.from_cookies,
        forward_payload_header=rule.output_payload_to_header,
        payload_in_metadata=PAYLOAD_KEY,
    )
    for header in rule.from_headers:
        p.from_headers.append(jwt.JwtHeader(name=header.name, value_prefix=header.prefix))
    for claim in rule.output_claim_to_headers:
        p.claim_to_headers.append(jwt.JwtClaimToHeader(header_name=claim.header, claim_name=claim.claim))
    source = jwks_source(rule)
    if source.uri:
        timeout = _seconds(rule.timeout, JWKS_TIMEOUT_S)
        p.remote_jwks.CopyFrom(
            jwt.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=source.uri, cluster=source.cluster, timeout=duration(timeout)
                ),
                cache_duration=duration(JWKS_CACHE_S),
            )
        )
    else:
        p.local_jwks.CopyFrom(base_pb2.DataSource(inline_string=source.inline))
    return p


def _seconds(value: Any, default: float) -> float:
    """A duration written as ``1.5s``, ``300ms`` or ``1m``; ``default`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return default
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, factor in units:
        if value.endswith(suffix):
            try:
                return float(value[: -len(suffix)]) * factor
            except ValueError:
                return default
    return default


def jwt_authentication(policies: Sequence[ConfigObject]) -> jwt.JwtAuthentication | None:
    """The jwt_authn config for ``policies`` (None when they hold no jwtRules).

    Providers are named ``origins-N`` in rule order. One requirement for every path: any provider, or no
    token at all (``allow_missing``) — a token that no provider accepts fails with 401.
    """
    rules = _rules(policies)
    if not rules:
        return None
    cfg = jwt.JwtAuthentication(bypass_cors_preflight=True)
    requirements = []
    for i, rule in enumerate(rules):
        name = f"origins-{i}"
        cfg.providers[name].CopyFrom(_provider(rule))
        requirements.append(jwt.JwtRequirement(provider_name=name))
    requirements.append(jwt.JwtRequirement(allow_missing=empty_pb2.Empty()))
    cfg.rules.append(
        jwt.RequirementRule(
            match=rc.RouteMatch(prefix="/"),
            requires=jwt.JwtRequirement(requires_any=jwt.JwtRequirementOrList(requirements=requirements)),
        )
    )
    return cfg


def jwt_filter(policies: Sequence[ConfigObject]) -> hcm.HttpFilter | None:
    """``envoy.filters.http.jwt_authn`` for ``policies``, or None when there is nothing to verify."""
    cfg = jwt_authentication(policies)
    if cfg is None:
        return None
    return hcm.HttpFilter(name=FILTER_NAME, typed_config=typed(cfg))


def remote_sources(policies: Sequence[ConfigObject]) -> list[JwksSource]:
    """The distinct remote JWKS sources of ``policies``, by cluster name."""
    found: dict[str, JwksSource] = {}
    for rule in _rules(policies):
        source = jwks_source(rule)
        if source.uri:
            found.setdefault(source.cluster, source)
    return [found[k] for k in sorted(found)]


def jwks_clusters(
    policies: Sequence[ConfigObject], existing: Collection[str], mesh: MeshOptions
) -> list[cluster_pb2.Cluster]:
    """Clusters for the JWKS hosts of ``policies`` that have no cluster among ``existing`` (cluster names).

    STRICT_DNS to the URI's host and port; for https, TLS with SNI the host, verified against the
    system's CA bundle (``SYSTEM_CA_FILE``) and the host name.
    """
    out = []
    for source in remote_sources(policies):
        if source.cluster in existing:
            continue
        c = cluster_pb2.Cluster(
            name=source.cluster,
            type=cluster_pb2.Cluster.STRICT_DNS,
            connect_timeout=duration(mesh.connect_timeout_s),
            dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
            load_assignment=endpoint_pb2.ClusterLoadAssignment(
                cluster_name=source.cluster,
                endpoints=[
                    ec.LocalityLbEndpoints(
                        lb_endpoints=[
                            ec.LbEndpoint(
                                endpoint=ec.Endpoint(address=socket_address(source.host, source.port))
                            )
                        ]
                    )
                ],
            ),
        )
        if source.tls:
            ctx = tls_pb2.UpstreamTlsContext(
                sni=source.host,
                common_tls_context=tls_pb2.CommonTlsContext(
                    validation_context=common_pb2.CertificateValidationContext(
                        trusted_ca=base_pb2.DataSource(filename=SYSTEM_CA_FILE),
                        match_typed_subject_alt_names=[
                            common_pb2.SubjectAltNameMatcher(
                                san_type=common_pb2.SubjectAltNameMatcher.DNS,
                                matcher=string_pb2.StringMatcher(exact=source.host),
                            )
                        ],
                    )
                ),
            )
            c.transport_socket.CopyFrom(
                base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed(ctx))
            )
        out.append(c)
    return out
