"""Views of the security.istio.io kinds; schemas in :mod:`vmagent.controlplane.config.security`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.common import WorkloadSelector


@dataclass(frozen=True)
class MutualTLS:
    mode: str = "UNSET"


@dataclass(frozen=True)
class PeerAuthentication:
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: Mapping[int, MutualTLS] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyTargetReference:
    group: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class JWTHeader:
    name: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str = ""
    claim: str = ""


@dataclass(frozen=True)
class JWTRule:
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[JWTHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout: str | None = None
    legacy_jwks_uri: str = field(default="", metadata={"key": "jwks_uri"})  # refused by the schema
    space_delimited_claims: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestAuthentication:
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    jwt_rules: tuple[JWTRule, ...] = ()


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    key: str = ""
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleFrom:
    source: Source = field(default_factory=Source)


@dataclass(frozen=True)
class RuleTo:
    operation: Operation = field(default_factory=Operation)


@dataclass(frozen=True)
class Rule:
    from_: tuple[RuleFrom, ...] = ()
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class ExtensionProvider:
    name: str = ""


@dataclass(frozen=True)
class AuthorizationPolicy:
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    rules: tuple[Rule, ...] = ()
    action: str = "ALLOW"
    provider: ExtensionProvider | None = None
