"""The --istio-compat report: what in a set of Istio YAML would behave differently under vmagent.

Three sources: Istio kinds vmagent does not support, fields of Istio's API it does not implement (both
found by validation, tagged on their ``Issue``), and supported fields whose semantics differ from Istio's
(found here on the valid objects).
"""

from __future__ import annotations

from vmagent.controlplane.config.issues import Issue, object_label
from vmagent.controlplane.config.loader import LoadResult

# Tag of a supported field whose semantics differ from Istio's.
DIFFERENT = "different"


def compat_report(result: LoadResult) -> list[Issue]:
    """Every difference from Istio found in ``result``, in file order."""
    out = [i for i in [*result.errors, *result.warnings] if i.compat]
    for obj in result.objects:
        label = object_label(obj.kind, obj.namespace, obj.name)
        if obj.kind == "AuthorizationPolicy" and obj.spec.get("action") == "CUSTOM":
            out.append(
                Issue(
                    obj.source,
                    label,
                    "spec.action",
                    "CUSTOM needs an external authorizer, which vmagent does not call: the rules are "
                    "enforced as DENY (fail closed)",
                    DIFFERENT,
                )
            )
    return sorted(out, key=lambda i: (i.file, i.obj, i.path))
