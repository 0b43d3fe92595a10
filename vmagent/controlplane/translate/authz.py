"""AuthorizationPolicy to Envoy RBAC filters on the inbound side (HTTP filters and, for TCP, network filters).

Istio's evaluation order: DENY policies first (a matching one rejects), then ALLOW policies — when any
ALLOW policy applies to the workload, a request must match one of their rules — else the request passes.
AUDIT policies only mark matching requests (RBAC action LOG). Each becomes one RBAC filter, in the order
AUDIT, DENY, ALLOW; HTTP requests are rejected with 403, TCP connections are closed.

Rules: a rule matches when its ``from`` (any source), its ``to`` (any operation) and all its ``when``
conditions match; inside a source or an operation every field must match, and a field matches when any
of its values does (``notX``: none does). Values may be exact, ``prefix*``, ``*suffix`` or ``*``
(present). Empty-rule semantics: an ALLOW policy without rules allows nothing (``spec: {}`` denies all),
``rules: [{}]`` matches every request; a DENY or AUDIT policy without rules matches nothing.

Principals come from the peer's mutual TLS certificate (``principals: ["cluster.local/ns/NS/sa/SA"]`` is
the URI SAN ``spiffe://cluster.local/ns/NS/sa/SA``); request principals and claims from the JWT payload
that jwt_authn stored in its dynamic metadata (see ``authn``).

On TCP ports, fields that need HTTP (hosts, methods, paths, requestPrincipals, ``request.*`` keys) are
handled as Istio does: an ALLOW rule using them is dropped (it can never match), a DENY rule ignores them
(it matches more). CUSTOM policies need an external authorizer that is not supported: their rules are
enforced as DENY (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs.build import items_by_key
from vmagent.controlplane.specs.security import AuthorizationPolicy, Condition, Operation, Rule, Source
from vmagent.controlplane.translate import authn, names
from vmagent.controlplane.translate.protos import cidr, typed

HTTP_FILTER = "envoy.filters.http.rbac"
NETWORK_FILTER = "envoy.filters.network.rbac"
_ACTIONS = {"AUDIT": rbac_pb2.RBAC.LOG, "DENY": rbac_pb2.RBAC.DENY, "ALLOW": rbac_pb2.RBAC.ALLOW}
_ORDER = ("AUDIT", "DENY", "ALLOW")
_HTTP_ONLY_FIELDS = frozenset(
    {
        "hosts",
        "notHosts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
        "requestPrincipals",
        "notRequestPrincipals",
    }
)
_CLAIMS = re.compile(r"request\.auth\.claims((?:\[[^\]]+\])+)")


class _Unsupported(Exception):
    """A field or key this translation cannot express for the port's protocol."""


@dataclass(frozen=True)
class _Ctx:
    http: bool
    trust_domain: str
    action: str


# -- value matching -------------------------------------------------------------------------------------


def _string(value: str, prefix: str = "", ignore_case: bool = False) -> string_pb2.StringMatcher | None:
    """Istio's value syntax: ``*`` (None: present), ``x*`` prefix, ``*x`` suffix, else exact."""
    if value == "*":
        return None
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _or_ids(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=list(ids)))


def _and_ids(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return rbac_pb2.Principal(any=True)
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=list(ids)))


def _or_rules(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=list(rules)))


def _and_rules(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not rules:
        return rbac_pb2.Permission(any=True)
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=list(rules)))


def _header_id(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    sm = _string(value, ignore_case=ignore_case)
    if sm is None:
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=sm)


# -- principals (who) ------------------------------------------------------------------------------------


def _peer(value: str) -> rbac_pb2.Principal:
    """A peer principal ``TD/ns/NS/sa/SA`` against the certificate's URI SAN."""
    sm = _string(value, prefix="spiffe://")
    auth = rbac_pb2.Principal.Authenticated()
    if sm is not None:
        auth.principal_name.CopyFrom(sm)
    return rbac_pb2.Principal(authenticated=auth)


def _namespace(value: str) -> rbac_pb2.Principal:
    if value == "*":
        return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())
    if value.endswith("*"):
        ns = re.escape(value[:-1]) + "[^/]*"
    elif value.startswith("*"):
        ns = "[^/]*" + re.escape(value[1:])
    else:
        ns = re.escape(value)
    auth = rbac_pb2.Principal.Authenticated(principal_name=_regex(f"spiffe://[^/]+/ns/{ns}/sa/[^/]+"))
    return rbac_pb2.Principal(authenticated=auth)


def _trust_domain(value: str) -> rbac_pb2.Principal:
    """The peer certificate's trust domain (``*``: any authenticated peer; ``x*`` / ``*x`` forms)."""
    if value == "*":
        return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())
    if value.endswith("*"):
        td = re.escape(value[:-1]) + "[^/]*"
    elif value.startswith("*"):
        td = "[^/]*" + re.escape(value[1:])
    else:
        td = re.escape(value)
    auth = rbac_pb2.Principal.Authenticated(principal_name=_regex(f"spiffe://{td}/.*"))
    return rbac_pb2.Principal(authenticated=auth)


def _service_account(value: str, ctx: _Ctx) -> rbac_pb2.Principal:
    ns, _, sa = value.partition("/")
    return _peer(f"{ctx.trust_domain}/ns/{ns}/sa/{sa}")


def _metadata(path: Sequence[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    mm = metadata_pb2.MetadataMatcher(
        filter=authn.FILTER_NAME,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (authn.PAYLOAD_KEY, *path)],
        value=value,
    )
    return rbac_pb2.Principal(metadata=mm)


def _claim(path: Sequence[str], value: str) -> rbac_pb2.Principal:
    """A claim equal to (or, for a list claim, containing) ``value``."""
    sm = _string(value)
    if sm is None:
        return _metadata(path, value_pb2.ValueMatcher(present_match=True))
    single = value_pb2.ValueMatcher(string_match=sm)
    listed = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=single))
    return _or_ids([_metadata(path, single), _metadata(path, listed)])


def _request_principal(value: str) -> rbac_pb2.Principal:
    """``ISS/SUB`` of the verified JWT (``*``: any verified token; prefix/suffix forms split at ``/``)."""
    present = value_pb2.ValueMatcher(present_match=True)

    def exact(key: str, text: str) -> rbac_pb2.Principal:
        return _metadata([key], value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=text)))

    if value == "*":
        return _metadata(["iss"], present)
    if value.endswith("*"):
        head = value[:-1]
        if "/" not in head:
            return _metadata(
                ["iss"], value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(prefix=head))
            )
        iss, _, sub = head.rpartition("/")
        sub_m = value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(prefix=sub)) if sub else present
        return _and_ids([exact("iss", iss), _metadata(["sub"], sub_m)])
    if value.startswith("*"):
        tail = value[1:]
        if "/" not in tail:
            return _metadata(
                ["sub"], value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(suffix=tail))
            )
        iss, _, sub = tail.rpartition("/")
        iss_m = value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(suffix=iss))
        return _and_ids([_metadata(["iss"], iss_m), exact("sub", sub)])
    iss, _, sub = value.rpartition("/")
    return _and_ids([exact("iss", iss), exact("sub", sub)])


def _source_field(key: str, value: str, ctx: _Ctx) -> rbac_pb2.Principal:
    if key == "principals":
        return _peer(value)
    if key == "namespaces":
        return _namespace(value)
    if key == "serviceAccounts":
        return _service_account(value, ctx)
    if key == "trustDomains":
        return _trust_domain(value)
    if key == "ipBlocks":
        return rbac_pb2.Principal(direct_remote_ip=_cidr(value))
    if key == "remoteIpBlocks":
        return rbac_pb2.Principal(remote_ip=_cidr(value))
    if key == "requestPrincipals":
        return _request_principal(value)
    raise _Unsupported(key)


def _cidr(text: str) -> Any:
    net = names.network_of(text)
    if net is None:
        raise _Unsupported(f"address {text!r}")
    return cidr(str(net.network_address), net.prefixlen)


def _field_ids(
    key: str, values: Sequence[str], negate: bool, build: Callable[[str], rbac_pb2.Principal]
) -> rbac_pb2.Principal:
    ids = _or_ids([build(v) for v in values])
    return rbac_pb2.Principal(not_id=ids) if negate else ids


def _source(source: Source, ctx: _Ctx) -> rbac_pb2.Principal:
    ids = []
    for key, field_values in sorted(items_by_key(source)):
        values = list(field_values)
        if not values:
            continue
        negate = key.startswith("not")
        base = key[3].lower() + key[4:] if negate else key
        if key in _HTTP_ONLY_FIELDS and not ctx.http:
            _skip_http_only(ctx)
            continue
        ids.append(_field_ids(base, values, negate, lambda v, b=base: _source_field(b, v, ctx)))  # type: ignore[misc]
    return _and_ids(ids)


def _skip_http_only(ctx: _Ctx) -> None:
    """ALLOW: the rule cannot match on TCP (raise); DENY/AUDIT: the field is ignored (return)."""
    if ctx.action == "ALLOW":
        raise _Unsupported("HTTP-only field on a TCP port")


# -- permissions (what) ----------------------------------------------------------------------------------


def _host(value: str) -> rbac_pb2.Permission:
    if value == "*":
        return rbac_pb2.Permission(header=rc.HeaderMatcher(name=":authority", present_match=True))
    if value.startswith("*"):
        pattern = "(?i).*" + re.escape(value[1:]) + "(:[0-9]+)?"
    elif value.endswith("*"):
        pattern = "(?i)" + re.escape(value[:-1]) + ".*"
    else:
        pattern = "(?i)" + re.escape(value) + "(:[0-9]+)?"
    return rbac_pb2.Permission(header=rc.HeaderMatcher(name=":authority", string_match=_regex(pattern)))


def _path(value: str) -> rbac_pb2.Permission:
    sm = _string(value)
    if sm is None:
        return rbac_pb2.Permission(any=True)
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=sm))


def _port(value: str) -> rbac_pb2.Permission:
    if not value.isdigit():
        raise _Unsupported(f"port {value!r}")
    return rbac_pb2.Permission(destination_port=int(value))


def _operation_field(key: str, value: str) -> rbac_pb2.Permission:
    if key == "hosts":
        return _host(value)
    if key == "methods":
        return rbac_pb2.Permission(header=_header_id(":method", value))
    if key == "paths":
        return _path(value)
    if key == "ports":
        return _port(value)
    raise _Unsupported(key)


def _operation(op: Operation, ctx: _Ctx) -> rbac_pb2.Permission:
    rules = []
    for key, field_values in sorted(items_by_key(op)):
        values = list(field_values)
        if not values:
            continue
        negate = key.startswith("not")
        base = key[3].lower() + key[4:] if negate else key
        if key in _HTTP_ONLY_FIELDS and not ctx.http:
            _skip_http_only(ctx)
            continue
        perm = _or_rules([_operation_field(base, v) for v in values])
        rules.append(rbac_pb2.Permission(not_rule=perm) if negate else perm)
    return _and_rules(rules)


# -- conditions (when) -----------------------------------------------------------------------------------


def _condition_value(key: str, value: str, ctx: _Ctx) -> rbac_pb2.Principal | rbac_pb2.Permission:
    if key.startswith("request.headers["):
        return rbac_pb2.Principal(header=_header_id(key[len("request.headers[") : -1], value))
    claims = _CLAIMS.fullmatch(key)
    if claims:
        return _claim(re.findall(r"\[([^\]]+)\]", claims.group(1)), value)
    simple: dict[str, Callable[[str], rbac_pb2.Principal | rbac_pb2.Permission]] = {
        "request.auth.principal": _request_principal,
        "request.auth.audiences": lambda v: _claim(["aud"], v),
        "request.auth.presenter": lambda v: _claim(["azp"], v),
        "source.ip": lambda v: rbac_pb2.Principal(direct_remote_ip=_cidr(v)),
        "remote.ip": lambda v: rbac_pb2.Principal(remote_ip=_cidr(v)),
        "source.namespace": _namespace,
        "source.principal": _peer,
        "source.serviceAccount": lambda v: _service_account(v, ctx),
        "source.trustDomain": _trust_domain,
        "destination.ip": lambda v: rbac_pb2.Permission(destination_ip=_cidr(v)),
        "destination.port": _port,
        "connection.sni": lambda v: rbac_pb2.Permission(
            requested_server_name=_string(v)
            or string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
        ),
    }
    if key not in simple:
        raise _Unsupported(key)
    return simple[key](value)


def _condition(cond: Condition, ctx: _Ctx) -> tuple[list[rbac_pb2.Permission], list[rbac_pb2.Principal]]:
    key = cond.key
    if key.startswith("request.") and not ctx.http:
        _skip_http_only(ctx)
        return [], []
    perms: list[rbac_pb2.Permission] = []
    ids: list[rbac_pb2.Principal] = []
    for values, negate in ((cond.values, False), (cond.not_values, True)):
        if not values:
            continue
        built = [_condition_value(key, v, ctx) for v in values]
        if isinstance(built[0], rbac_pb2.Permission):
            p = _or_rules(built)  # type: ignore[arg-type]
            perms.append(rbac_pb2.Permission(not_rule=p) if negate else p)
        else:
            i = _or_ids(built)  # type: ignore[arg-type]
            ids.append(rbac_pb2.Principal(not_id=i) if negate else i)
    return perms, ids


# -- rules and policies ----------------------------------------------------------------------------------


def _rule(rule: Rule, ctx: _Ctx) -> rbac_pb2.Policy | None:
    """One Istio rule as one Envoy policy; None when it can never match here (see the module doc)."""
    perms: list[rbac_pb2.Permission] = []
    ids: list[rbac_pb2.Principal] = []
    try:
        sources = [f.source for f in rule.from_]
        if sources:
            ids.append(_or_ids([_source(s, ctx) for s in sources]))
        ops = [t.operation for t in rule.to]
        if ops:
            perms.append(_or_rules([_operation(o, ctx) for o in ops]))
        for cond in rule.when:
            p, i = _condition(cond, ctx)
            perms += p
            ids += i
    except _Unsupported:
        if ctx.action == "ALLOW":
            return None
        # Fail closed: a DENY/AUDIT rule that cannot be expressed matches everything.
        return rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[_and_ids([])])
    return rbac_pb2.Policy(permissions=[_and_rules(perms)], principals=[_and_ids(ids)])


def _action(policy: ConfigObject) -> str:
    action = (policy.spec_as(AuthorizationPolicy).action or "ALLOW").upper()
    return "DENY" if action == "CUSTOM" else action


def rbac_rules(
    policies: Sequence[ConfigObject], http: bool, trust_domain: str
) -> list[tuple[str, rbac_pb2.RBAC]]:
    """``[(action, RBAC)]`` in evaluation order (AUDIT, DENY, ALLOW) for ``policies``.

    ALLOW appears whenever an ALLOW policy applies (with no Envoy policies it denies everything); DENY and
    AUDIT only when some rule can match.
    """
    out = []
    for action in _ORDER:
        selected = [p for p in policies if _action(p) == action]
        if not selected:
            continue
        ctx = _Ctx(http=http, trust_domain=trust_domain, action=action)
        rbac = rbac_pb2.RBAC(action=_ACTIONS[action])
        for policy in selected:
            for i, rule in enumerate(policy.spec_as(AuthorizationPolicy).rules):
                built = _rule(rule, ctx)
                if built is not None:
                    rbac.policies[f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{i}]"].CopyFrom(built)
        if action == "ALLOW" or rbac.policies:
            out.append((action, rbac))
    return out


def http_filters(policies: Sequence[ConfigObject], trust_domain: str) -> list[hcm.HttpFilter]:
    """The HTTP RBAC filters for ``policies`` (empty when none applies)."""
    return [
        hcm.HttpFilter(name=HTTP_FILTER, typed_config=typed(http_rbac.RBAC(rules=rules)))
        for _, rules in rbac_rules(policies, http=True, trust_domain=trust_domain)
    ]


def network_filters(policies: Sequence[ConfigObject], trust_domain: str, stat_prefix: str) -> list[lc.Filter]:
    """The network RBAC filters (to go before tcp_proxy) for ``policies`` on a TCP port."""
    out = []
    for action, rules in rbac_rules(policies, http=False, trust_domain=trust_domain):
        cfg = net_rbac.RBAC(rules=rules, stat_prefix=f"{stat_prefix}.{action.lower()}.")
        out.append(lc.Filter(name=NETWORK_FILTER, typed_config=typed(cfg)))
    return out
