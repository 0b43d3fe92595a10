"""A validation problem (error or warning) located by file, object and field path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """Prints as ``FILE: KIND NS/NAME: FIELD.PATH: message``, the one-line form users see."""

    file: str
    obj: str  # "VirtualService demo/reviews", or "document 3" when the object cannot be named
    path: str  # field path, e.g. spec.http[0].route[1].weight
    message: str
    # How vmagent differs from Istio here: "" (it does not), "ignored" or "refused" (a field of Istio's
    # API vmagent does not implement), "kind" (an Istio kind vmagent does not support).
    compat: str = ""

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.obj, self.path) if p]
        return ": ".join([*parts, self.message])


def object_label(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}"
