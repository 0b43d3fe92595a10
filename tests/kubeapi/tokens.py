"""ServiceAccount tokens: minted for TokenRequest (``POST .../serviceaccounts/NAME/token``) and checked for
TokenReview and bearer authentication, as kube-apiserver's bound service account tokens are.

Tokens are RS256 JWTs signed with the server's own key, naming the service account, its uid, the audiences
and (optionally) the pod they are bound to. A review accepts a token only if its signature and expiry hold,
one of its audiences is wanted, the service account still exists with the same uid, and the bound pod (if
any) still exists with the same uid.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

Obj = dict[str, Any]
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Reviewed:
    """The outcome of checking a token: the user, or the reason it was refused."""

    authenticated: bool
    error: str = ""
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    def status(self) -> Obj:
        if not self.authenticated:
            return {"authenticated": False, "error": self.error, "user": {}}
        return {
            "authenticated": True,
            "user": {
                "username": self.username,
                "uid": self.uid,
                "groups": list(self.groups),
                "extra": {k: [v] for k, v in self.extra},
            },
            "audiences": list(self.audiences),
        }


# Looks an object up by (resource, namespace, name): the service account and pod checks.
Lookup = Callable[[str, str, str], Obj | None]


class TokenIssuer:
    def __init__(
        self, lookup: Lookup, issuer: str = ISSUER, audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    ) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lookup = lookup
        self.issuer = issuer
        self.audiences = audiences

    def mint(self, sa: Obj, audiences: list[str], expires_in: int, pod: Obj | None = None) -> tuple[str, int]:
        """A token for the service account object ``sa`` (bound to ``pod`` when given) and its expiry (unix)."""
        now = int(time.time())
        exp = now + expires_in
        meta = sa["metadata"]
        k8s: Obj = {
            "namespace": meta["namespace"],
            "serviceaccount": {"name": meta["name"], "uid": meta["uid"]},
        }
        if pod is not None:
            k8s["pod"] = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
            "aud": audiences or list(self.audiences),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": k8s,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "vmagent-test"}), exp

    def review(self, token: str, audiences: list[str] | None = None) -> Reviewed:
        wanted = audiences or list(self.audiences)
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            return Reviewed(False, "[invalid bearer token, service account token has expired]")
        except jwt.InvalidTokenError as e:
            return Reviewed(False, f"[invalid bearer token, {e}]")
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        common = [a for a in wanted if a in aud]
        if not common:
            return Reviewed(
                False,
                "[invalid bearer token, token audiences "
                + repr(aud)
                + " is invalid for the target audiences "
                + repr(wanted)
                + "]",
            )
        k8s = claims.get("kubernetes.io") or {}
        ns, sa_ref = k8s.get("namespace", ""), k8s.get("serviceaccount") or {}
        sa = self._lookup("serviceaccounts", ns, sa_ref.get("name", ""))
        if sa is None or sa["metadata"]["uid"] != sa_ref.get("uid"):
            return Reviewed(
                False, f"[invalid bearer token, service account {ns}/{sa_ref.get('name')} has been deleted]"
            )
        extra = [("authentication.kubernetes.io/credential-id", f"JTI={claims.get('jti', '')}")]
        pod_ref = k8s.get("pod")
        if pod_ref:
            pod = self._lookup("pods", ns, pod_ref.get("name", ""))
            if pod is None or pod["metadata"]["uid"] != pod_ref.get("uid"):
                return Reviewed(
                    False, f"[invalid bearer token, pod {ns}/{pod_ref.get('name')} has been deleted]"
                )
            extra += [
                ("authentication.kubernetes.io/pod-name", pod_ref["name"]),
                ("authentication.kubernetes.io/pod-uid", pod_ref["uid"]),
            ]
        return Reviewed(
            True,
            username=claims["sub"],
            uid=sa_ref["uid"],
            groups=("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"),
            audiences=tuple(common),
            extra=tuple(extra),
        )
