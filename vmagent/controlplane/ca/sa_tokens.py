"""Kubernetes ServiceAccount tokens as the credential of a pod's first certificate, checked by TokenReview.

A pod's agent presents its projected ServiceAccount token (``authorization: Bearer``). The control plane
never verifies it itself: it asks the cluster's API server (``POST
/apis/authentication.k8s.io/v1/tokenreviews``, RBAC ``tokenreviews create``) with the audience it accepts,
``istio-ca`` (Istio's default for tokens meant for the mesh CA; a token projected for any other audience,
including the API server's own, is refused). The API server checks the signature, the expiry, the
audience and that the bound pod and the service account still exist (with the same uid). The identity is
the review's user ``system:serviceaccount:NS:SA`` -> ``spiffe://TD/ns/NS/sa/SA``: never the CSR, never
the token's unverified claims.

A refused token is ``UNAUTHENTICATED`` with the API server's reason (it names no secret); an API server
that cannot answer (unreachable, an error status, a malformed reply) is ``UNAVAILABLE``: the caller may
retry, and nothing else the CA serves is affected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc

from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)

AUDIENCE = "istio-ca"
TOKEN_REVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - a URL path
SA_USER_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class ReviewRefused(Exception):
    """The token is not accepted (``code``: the gRPC status; ``reason``: a short word for metrics)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Reviewed:
    identity: SpiffeId
    pod: str  # "NS/NAME" of the pod the token is bound to, "" when the API server does not say


class ServiceAccountTokens:
    """Reviews ServiceAccount tokens against one cluster (thread-safe: the client is)."""

    def __init__(self, client: KubeClient, trust_domain: str, audience: str = AUDIENCE) -> None:
        self._client = client
        self._trust_domain = trust_domain
        self.audience = audience

    def review(self, token: str) -> Reviewed:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        try:
            answer = self._client.request("POST", TOKEN_REVIEWS_PATH, body=body)
        except KubeError as exc:
            hint = (
                " (the control plane's ServiceAccount needs `tokenreviews create`: "
                "deploy/kubernetes/base/rbac.yaml)"
                if exc.status in (401, 403)
                else ""
            )
            log.warning("TokenReview failed: %s%s", exc, hint)
            raise ReviewRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot check the ServiceAccount token: the Kubernetes TokenReview failed "
                f"({exc.status or 'unreachable'} {exc.reason}){hint}; retry later",
                "review_failed",
            ) from exc
        return self._result(answer)

    def _result(self, answer: dict[str, Any]) -> Reviewed:
        status = answer.get("status")
        if not isinstance(status, dict):
            raise ReviewRefused(
                grpc.StatusCode.UNAVAILABLE,
                "cannot check the ServiceAccount token: the TokenReview answer has no status",
                "review_failed",
            )
        if status.get("authenticated") is not True:
            error = str(status.get("error") or "not authenticated")[:300]
            raise ReviewRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"ServiceAccount token refused by the Kubernetes API server: {error}",
                "sa_refused",
            )
        audiences = status.get("audiences")
        if isinstance(audiences, list) and self.audience not in audiences:
            # An API server that ignores spec.audiences answers with the token's own: refuse, not trust.
            raise ReviewRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"ServiceAccount token is not for audience {self.audience!r} (it is for {audiences})",
                "sa_audience",
            )
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        if not username.startswith(SA_USER_PREFIX):
            raise ReviewRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the token authenticates {username or 'nobody'!r}, not a ServiceAccount",
                "sa_not_serviceaccount",
            )
        namespace, sep, name = username.removeprefix(SA_USER_PREFIX).partition(":")
        if not sep or not namespace or not name or ":" in name:
            raise ReviewRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the TokenReview names an unexpected user {username!r}",
                "sa_not_serviceaccount",
            )
        extra = user.get("extra") or {}
        pods = extra.get(POD_NAME_EXTRA) if isinstance(extra, dict) else None
        pod = f"{namespace}/{pods[0]}" if isinstance(pods, list) and pods else ""
        return Reviewed(SpiffeId(self._trust_domain, namespace, name), pod)
