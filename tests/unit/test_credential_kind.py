"""Join tokens and Kubernetes ServiceAccount tokens are told apart by issuer and audience, not by guessing."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vmagent.controlplane.ca.credentials import CredentialError, resolve_kind, token_kind

KEY = ec.generate_private_key(ec.SECP256R1())


def _jwt(claims: dict[str, object]) -> str:
    return jwt.encode(claims, KEY, algorithm="ES256")  # type: ignore[arg-type]


JOIN = _jwt({"iss": "vmagent-cp", "aud": "vmagent-join", "sub": "demo/web"})
SA = _jwt(
    {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["istio-ca"],
        "sub": "system:serviceaccount:default:web",
    }
)
# A token that claims our issuer for another audience is not a join token: it goes to TokenReview.
OUR_ISSUER_OTHER_AUD = _jwt({"iss": "vmagent-cp", "aud": "istio-ca"})


def test_kinds() -> None:
    assert token_kind(JOIN) == "join"
    assert token_kind(SA) == "kubernetes"
    assert token_kind(OUR_ISSUER_OTHER_AUD) == "kubernetes"
    assert token_kind("not.a.jwt") is None
    assert token_kind("plain") is None


@pytest.mark.parametrize(
    ("token", "declared", "message"),
    [
        (JOIN, "kubernetes", "a join token was presented as a Kubernetes ServiceAccount token"),
        (SA, "join", "a Kubernetes ServiceAccount token was presented as a join token"),
    ],
)
def test_a_token_of_the_other_kind_than_declared_is_refused(token: str, declared: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        resolve_kind(token, declared)


def test_declared_kind_matching_or_absent() -> None:
    assert resolve_kind(JOIN, None) == "join"
    assert resolve_kind(JOIN, "join") == "join"
    assert resolve_kind(SA, None) == "kubernetes"
    assert resolve_kind(SA, "kubernetes") == "kubernetes"
    assert resolve_kind("garbage", "kubernetes") == "kubernetes"
    assert resolve_kind("garbage", None) == "join"
