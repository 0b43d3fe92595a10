"""Schemas and semantic checks of security.istio.io PeerAuthentication, RequestAuthentication and
AuthorizationPolicy."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from vmagent.controlplane.config.common import POLICY_TARGET_REF, WORKLOAD_SELECTOR, as_dict, as_list
from vmagent.controlplane.config.types import (
    DURATION_1MS,
    IGNORED,
    REFUSED,
    STR,
    STRINGS,
    Bool,
    Ctx,
    Enum,
    F,
    IpOrCidr,
    ListOf,
    MapOf,
    Msg,
    Str,
    Type,
    child,
    item,
    show,
)

_TARGETING = ("selector", "targetRef", "targetRefs")
TARGETING_FIELDS: dict[str, Any] = {
    "selector": WORKLOAD_SELECTOR,
    "targetRef": POLICY_TARGET_REF,
    "targetRefs": ListOf(POLICY_TARGET_REF),
}


class PortKey(Type):
    """A map key that is a port number (YAML writes it as 8080 or "8080")."""

    def check(self, value: Any, path: str, ctx: Ctx) -> None:
        number = value
        if isinstance(value, str) and value.isdigit():
            number = int(value)
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            ctx.error(path, f"invalid port {show(value)}, expected a port number between 1 and 65535")


MTLS = Msg("PeerAuthentication.MutualTLS", {"mode": Enum("UNSET", "DISABLE", "PERMISSIVE", "STRICT")})


def _check_peer_authn(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if value.get("portLevelMtls") and not as_dict(value.get("selector")).get("matchLabels"):
        ctx.error(
            child(path, "portLevelMtls"),
            "requires a workload 'selector' (not allowed mesh- or namespace-wide)",
        )
    if value.get("portLevelMtls") == {}:
        ctx.error(child(path, "portLevelMtls"), "port level mTLS, if defined, must have at least one element")


PEER_AUTHENTICATION = Msg(
    "PeerAuthentication",
    {"selector": WORKLOAD_SELECTOR, "mtls": MTLS, "portLevelMtls": MapOf(MTLS, key=PortKey())},
    checks=[_check_peer_authn],
)


# Header names Envoy will not let a JWT claim overwrite (pseudo-headers fail the name pattern already).
RESERVED_CLAIM_HEADERS = ("host", "authority")
_STRICT_HEADER = re.compile(r"[-A-Za-z0-9]+")


def _check_claim_header(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    header = value.get("header")
    if not isinstance(header, str) or not header:
        return
    if not _STRICT_HEADER.fullmatch(header):
        ctx.error(child(path, "header"), f"header name {header!r} is not a valid header name")
    elif header.lower() in RESERVED_CLAIM_HEADERS:
        ctx.error(child(path, "header"), f"header name {header!r} is reserved and cannot be set from a claim")


def _check_url(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if not value.get("issuer") and not value.get("jwksUri"):
        ctx.error(child(path, "issuer"), "issuer or jwksUri must be non-empty string")
    uri = value.get("jwksUri")
    if isinstance(uri, str) and uri:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            ctx.error(child(path, "jwksUri"), f"invalid URL {uri!r}, expected http(s)://HOST/PATH")


JWT_RULE = Msg(
    "JWTRule",
    {
        "issuer": STR,
        "audiences": ListOf(Str(nonempty=True)),
        "jwksUri": STR,
        "jwks": STR,
        "fromHeaders": ListOf(
            Msg("JWTHeader", {"name": F(Str(nonempty=True), required=True), "prefix": STR})
        ),
        "fromParams": ListOf(Str(nonempty=True)),
        "fromCookies": ListOf(Str(nonempty=True)),
        "outputPayloadToHeader": STR,
        "forwardOriginalToken": Bool(),
        "outputClaimToHeaders": ListOf(
            Msg(
                "ClaimToHeader",
                {
                    "header": F(Str(nonempty=True), required=True),
                    "claim": F(Str(nonempty=True), required=True),
                },
                checks=[_check_claim_header],
            )
        ),
        "timeout": DURATION_1MS,
        "jwks_uri": F(STR, unsupported=REFUSED, note="Istio's legacy spelling; write jwksUri"),
        "spaceDelimitedClaims": F(
            ListOf(Str(nonempty=True), max_items=64),
            unsupported=IGNORED,
            note="only 'scope' and 'permission' claims are split at spaces",
        ),
    },
    oneofs=[("jwksUri", "jwks")],
    checks=[_check_url],
)
REQUEST_AUTHENTICATION = Msg(
    "RequestAuthentication",
    {**TARGETING_FIELDS, "jwtRules": ListOf(JWT_RULE)},
    oneofs=[_TARGETING],
)

_PORT_STRING = Str(r"[0-9]{1,5}", what="a port number as a string, e.g. '8080'")


def _check_ports(values: Any, path: str, ctx: Ctx) -> None:
    for i, p in enumerate(as_list(values)):
        if isinstance(p, str) and p.isdigit() and not 0 < int(p) <= 65535:
            ctx.error(item(path, i), f"invalid port {p!r}, expected a port number between 1 and 65535")


def _check_service_accounts(values: Any, path: str, ctx: Ctx) -> None:
    """Istio's form: SA or NS/SA, no wildcard, at most one '/', both parts non-empty."""
    for i, v in enumerate(as_list(values)):
        if not isinstance(v, str) or not v:
            continue
        parts = v.split("/")
        if "*" in v or len(parts) > 2 or "" in parts:
            ctx.error(item(path, i), f"invalid service account {v!r}, expected 'NAMESPACE/NAME' or 'NAME'")
        elif len(v) > 320:
            ctx.error(item(path, i), "longer than 320 characters")


def _check_source(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    _nonempty_fields(value, path, ctx)
    for k in ("serviceAccounts", "notServiceAccounts"):
        _check_service_accounts(value.get(k), child(path, k), ctx)
    identities = ("principals", "notPrincipals", "namespaces", "notNamespaces")
    if any(value.get(k) for k in identities) and (
        value.get("serviceAccounts") or value.get("notServiceAccounts")
    ):
        ctx.error(path, "cannot set serviceAccounts with namespaces or principals")


def _nonempty_fields(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    if not any(value.get(k) for k in value):
        ctx.error(path, "at least one field must be set")
    for k, v in value.items():
        if isinstance(v, list):
            for i, e in enumerate(v):
                if e == "":
                    ctx.error(item(child(path, k), i), "must not be empty")


SOURCE = Msg(
    "Source",
    {
        "principals": STRINGS,
        "notPrincipals": STRINGS,
        "requestPrincipals": STRINGS,
        "notRequestPrincipals": STRINGS,
        "namespaces": STRINGS,
        "notNamespaces": STRINGS,
        "serviceAccounts": ListOf(STR, max_items=16),
        "notServiceAccounts": ListOf(STR, max_items=16),
        "trustDomains": STRINGS,
        "notTrustDomains": STRINGS,
        "ipBlocks": ListOf(IpOrCidr()),
        "notIpBlocks": ListOf(IpOrCidr()),
        "remoteIpBlocks": ListOf(IpOrCidr()),
        "notRemoteIpBlocks": ListOf(IpOrCidr()),
    },
    checks=[_check_source],
)


def _check_operation(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    _nonempty_fields(value, path, ctx)
    for k in ("ports", "notPorts"):
        _check_ports(value.get(k), child(path, k), ctx)


OPERATION = Msg(
    "Operation",
    {
        "hosts": STRINGS,
        "notHosts": STRINGS,
        "ports": ListOf(_PORT_STRING),
        "notPorts": ListOf(_PORT_STRING),
        "methods": STRINGS,
        "notMethods": STRINGS,
        "paths": STRINGS,
        "notPaths": STRINGS,
    },
    checks=[_check_operation],
)

_CONDITION_KEY = re.compile(
    r"request\.headers\[[^\]]+\]|request\.auth\.claims\[[^\]]+\](\[[^\]]+\])*"
    r"|source\.(ip|namespace|principal|serviceAccount|trustDomain)|remote\.ip"
    r"|request\.auth\.(principal|audiences|presenter)"
    r"|destination\.(ip|port)|connection\.sni|experimental\.envoy\.filters\.[A-Za-z0-9_.]+\[[^\]]+\]"
)


def _check_condition(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    key = value.get("key")
    if isinstance(key, str) and key and not _CONDITION_KEY.fullmatch(key):
        ctx.error(child(path, "key"), f"unsupported condition key {key!r}")
    if not value.get("values") and not value.get("notValues"):
        ctx.error(path, "at least one of 'values' or 'notValues' must be set")
    if key in ("source.ip", "remote.ip", "destination.ip"):
        for k in ("values", "notValues"):
            for i, v in enumerate(as_list(value.get(k))):
                IpOrCidr().check(v, item(child(path, k), i), ctx)
    if key == "destination.port":
        for k in ("values", "notValues"):
            _check_ports(value.get(k), child(path, k), ctx)


CONDITION = Msg(
    "Condition",
    {"key": F(Str(nonempty=True), required=True), "values": STRINGS, "notValues": STRINGS},
    checks=[_check_condition],
)
RULE = Msg(
    "Rule",
    {
        "from": ListOf(Msg("Rule.From", {"source": F(SOURCE, required=True)})),
        "to": ListOf(Msg("Rule.To", {"operation": F(OPERATION, required=True)})),
        "when": ListOf(CONDITION),
    },
)


def _check_authz(value: dict[str, Any], path: str, ctx: Ctx) -> None:
    action = value.get("action", "ALLOW")
    if action == "CUSTOM" and value.get("provider") is None:
        ctx.error(child(path, "provider"), "required with action CUSTOM")
    if action != "CUSTOM" and value.get("provider") is not None:
        ctx.error(child(path, "provider"), "only allowed with action CUSTOM")


AUTHORIZATION_POLICY = Msg(
    "AuthorizationPolicy",
    {
        **TARGETING_FIELDS,
        "rules": ListOf(RULE),
        "action": Enum("ALLOW", "DENY", "AUDIT", "CUSTOM"),
        "provider": Msg(
            "AuthorizationPolicy.ExtensionProvider", {"name": F(Str(nonempty=True), required=True)}
        ),
    },
    oneofs=[_TARGETING],
    checks=[_check_authz],
)
