"""The Telemetry kind's ``accessLogging`` for one workload (on, off, or not set), read from plain spec fields.

Which Telemetry applies follows Istio: one with a ``selector`` matching the workload is more specific than
a namespace-wide one in the workload's namespace, which is more specific than a mesh-wide one in the
root namespace; the most specific Telemetry that has an ``accessLogging`` section decides (ties: the
first by namespace and name). Within it, an entry without ``match`` that says ``disabled: true`` turns
the access log off; otherwise it is on. The schema itself is validated by the config layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import applicable

KIND = "Telemetry"


def _rank(obj: ConfigObject, mesh: MeshOptions) -> int:
    selector = obj.spec.get("selector")
    if isinstance(selector, Mapping) and selector.get("matchLabels"):
        return 2
    return 0 if obj.namespace == mesh.root_namespace else 1


def access_logging_enabled(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> bool | None:
    """True/False when a Telemetry decides for ``proxy``'s workload, None when none has accessLogging."""
    found = [
        t for t in applicable(KIND, proxy, configs, mesh) if isinstance(t.spec.get("accessLogging"), list)
    ]
    if not found:
        return None
    top = max(_rank(t, mesh) for t in found)
    best = next(t for t in found if _rank(t, mesh) == top)  # found is sorted by namespace and name
    entries: list[Any] = best.spec["accessLogging"]
    for entry in entries:
        if isinstance(entry, Mapping) and not entry.get("match") and entry.get("disabled") is True:
            return False
    return True
