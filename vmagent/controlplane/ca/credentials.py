"""Telling the two bearer credentials apart: a join token or a Kubernetes ServiceAccount token.

Both are JWTs in ``authorization: Bearer``. The kind is decided from facts, never by trying one check and
falling back to the other:

* a **join token** is one this control plane signs itself: issuer ``vmagent-cp`` and audience
  ``vmagent-join`` (vmagent/controlplane/ca/tokens.py); any other token is a **ServiceAccount token**
  (Kubernetes issues those, with the cluster's issuer), checked with the TokenReview API only;
* a caller may also say which kind it presents (gRPC metadata ``x-vmagent-credential: join`` or
  ``kubernetes``; vmagent's agents send it, Istio's agent does not). When it does, the token must be of
  that kind, or the call is refused: a join token is never taken as a ServiceAccount token, nor the reverse.

The claims read here are unverified on purpose: they only pick which verification runs, and each kind is
then verified completely (the join token's signature with the control plane's key, the ServiceAccount
token by the API server).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import grpc

from vmagent.common import wire
from vmagent.controlplane.ca import tokens

JOIN = wire.CREDENTIAL_JOIN
KUBERNETES = wire.CREDENTIAL_KUBERNETES
_KINDS = {JOIN: "a join token", KUBERNETES: "a Kubernetes ServiceAccount token"}


class CredentialError(Exception):
    """The credential cannot be used as presented; ``message`` names the kinds, never the token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return data if isinstance(data, dict) else None


def token_kind(token: str) -> str | None:
    """``join`` for a token of this control plane's join-token issuer and audience, else ``kubernetes``;
    None for something that is not a JWT at all (neither kind: whichever check runs refuses it)."""
    claims = _claims(token)
    if claims is None:
        return None
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if claims.get("iss") == tokens.ISSUER and tokens.AUDIENCE in auds:
        return JOIN
    return KUBERNETES


def declared_kind(context: grpc.ServicerContext) -> str | None:
    """The kind the caller said it presents (``x-vmagent-credential``), or None; unknown values refused."""
    for key, value in context.invocation_metadata():
        if key.lower() == wire.CREDENTIAL_KIND_HEADER and isinstance(value, str):
            kind = value.strip().lower()
            if kind not in _KINDS:
                raise CredentialError(
                    f"{wire.CREDENTIAL_KIND_HEADER}: {value!r} is not a credential kind "
                    f"(expected {JOIN!r} or {KUBERNETES!r})"
                )
            return kind
    return None


def resolve_kind(token: str, declared: str | None) -> str:
    """The token's kind, checked against what the caller declared (CredentialError when they differ)."""
    kind = token_kind(token)
    if kind is None:
        return declared or JOIN  # not a JWT: the declared check (else the join check) refuses it
    if declared is not None and declared != kind:
        raise CredentialError(
            f"{_KINDS[kind]} was presented as {_KINDS[declared]}; it is refused "
            f"(a join token is never accepted as a ServiceAccount token, nor the reverse)"
        )
    return kind
