"""One AdmissionReview (``admission.k8s.io/v1``) in, one out: the webhook's logic without the transport.

Only a review that is not one (wrong apiVersion/kind, no ``request.uid``) is an error: the server answers
400 and the API server applies the webhook's ``failurePolicy``. Everything else is allowed: a pod is
patched when the policy says so, and a pod the webhook cannot patch (its namespace could not be read, its
shape is unexpected, a bug) is admitted unchanged, the reason logged, counted and returned to the client
as an admission warning (``kubectl`` prints it).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vmagent.controlplane.inject.patch import injection_patch
from vmagent.controlplane.inject.policy import decide
from vmagent.controlplane.inject.probes import UnpatchableError
from vmagent.controlplane.inject.template import SidecarSettings

log = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
NamespaceLabels = Callable[[str], Mapping[str, str]]


class InjectionObserver(Protocol):
    def injection(self, result: str, reason: str) -> None:
        """``result`` is injected, skipped or failed; ``reason`` a short slug."""


class MalformedReview(ValueError):
    """The body is not an AdmissionReview v1 request (answered with 400)."""


@dataclass(frozen=True)
class Outcome:
    result: str  # injected, skipped, failed
    reason: str
    detail: str = ""


def _request(review: Any) -> Mapping[str, Any]:
    if not isinstance(review, Mapping):
        raise MalformedReview("the body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise MalformedReview(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"{review.get('apiVersion')!r} {review.get('kind')!r}"
        )
    request = review.get("request")
    if not isinstance(request, Mapping):
        raise MalformedReview("request: missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview("request.uid: missing or not a string")
    return request


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    return (
        isinstance(kind, Mapping)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and request.get("operation") == "CREATE"
        and not request.get("subResource")
    )


def _describe(request: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = request.get("name") or meta.get("name") or f"{meta.get('generateName') or ''}*"
    return f"pod {request.get('namespace') or meta.get('namespace') or '?'}/{name}"


class Injector:
    """Answers AdmissionReviews for pod creation (thread-safe: it keeps no state of its own)."""

    def __init__(
        self,
        settings: SidecarSettings,
        namespace_labels: NamespaceLabels,
        observer: InjectionObserver | None = None,
    ) -> None:
        self.settings = settings
        self.namespace_labels = namespace_labels
        self.observer = observer

    def review(self, body: Any) -> dict[str, Any]:
        """The AdmissionReview answering ``body`` (decoded JSON); ``MalformedReview`` when it is not one."""
        request = _request(body)
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        outcome, ops = self._decide(request)
        if self.observer is not None:
            self.observer.injection(outcome.result, outcome.reason)
        if outcome.result == "failed":
            response["warnings"] = [f"vmagent: sidecar not injected: {outcome.detail}"]
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
        return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}

    def _decide(self, request: Mapping[str, Any]) -> tuple[Outcome, list[dict[str, Any]]]:
        if not _is_pod_create(request):
            return Outcome("skipped", "not_pod_create"), []
        pod = request.get("object")
        if not isinstance(pod, Mapping):
            detail = "request.object: missing or not an object"
            log.warning("injection: %s; admitted unchanged", detail)
            return Outcome("failed", "malformed_pod", detail), []
        what = _describe(request, pod)
        namespace = str(request.get("namespace") or "")
        try:
            labels = self.namespace_labels(namespace)
        except Exception as exc:
            detail = f"namespace {namespace} not readable: {exc}"
            log.warning("injection: %s: %s; admitted unchanged", what, detail)
            return Outcome("failed", "namespace_lookup", detail), []
        try:
            decision = decide(pod, namespace, labels)
            if not decision.inject:
                log.debug("injection: %s: not injected (%s)", what, decision.reason)
                return Outcome("skipped", decision.reason), []
            ops = injection_patch(pod, self.settings)
        except UnpatchableError as exc:
            log.warning("injection: %s: cannot patch: %s; admitted unchanged", what, exc)
            return Outcome("failed", "unpatchable", str(exc)), []
        except Exception as exc:  # a bug must not block pods (failurePolicy is the operator's choice)
            log.exception("injection: %s: internal error; admitted unchanged", what)
            return Outcome("failed", "internal_error", f"internal error: {type(exc).__name__}"), []
        log.info("injection: %s: sidecar injected (%s, %d operations)", what, decision.reason, len(ops))
        return Outcome("injected", decision.reason), ops
