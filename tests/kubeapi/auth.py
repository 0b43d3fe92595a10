"""Who a request comes from: a client certificate signed by the server's CA (user = CN, groups = O),
a static bearer token, or a ServiceAccount token this server minted. There is no authorization:
every authenticated user may do everything (no RBAC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.kubeapi.tokens import TokenIssuer


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


class Authenticator:
    def __init__(self, issuer: TokenIssuer, static_tokens: dict[str, User]) -> None:
        self._issuer = issuer
        self._static = dict(static_tokens)

    def add_token(self, token: str, user: User) -> None:
        self._static[token] = user

    def authenticate(self, peer_cert: dict[str, Any] | None, authorization: str | None) -> User | None:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            token = token.strip()
            if token in self._static:
                return self._static[token]
            reviewed = self._issuer.review(token)
            return User(reviewed.username, reviewed.groups) if reviewed.authenticated else None
        if peer_cert:
            cn, orgs = "", []
            for rdn in peer_cert.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        cn = v
                    elif k == "organizationName":
                        orgs.append(v)
            if cn:
                return User(cn, (*orgs, "system:authenticated"))
        return None
