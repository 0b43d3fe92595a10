"""The application's kubelet probes, rewritten to go through the agent (as Istio's ``/app-health``).

With capture and STRICT mutual TLS the kubelet's plain-text probes would not reach the application, so
each ``httpGet``, ``tcpSocket`` and ``grpc`` probe of an application container becomes
``GET /app-health/CONTAINER/livez|readyz|startupz`` on the agent's status port (15020), and the original
probe, its named port resolved to a number, goes into the sidecar's ``ISTIO_KUBE_APP_PROBERS`` table
(JSON ``{path: probe}``). The agent runs the original probe from inside the pod when the kubelet asks.
``exec`` probes run inside the container already and are left alone; so is a probe whose named port the
container does not declare (the kubelet would fail it the same way).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmagent.common.constants import AGENT_STATUS_PORT
from vmagent.common.wire import APP_HEALTH_PREFIX

log = logging.getLogger(__name__)

PROBE_KINDS = {"livenessProbe": "livez", "readinessProbe": "readyz", "startupProbe": "startupz"}
HANDLERS = ("httpGet", "tcpSocket", "grpc")


class UnpatchableError(ValueError):
    """The pod has a shape the webhook cannot patch safely (it is then admitted unchanged)."""


@dataclass(frozen=True)
class RewrittenProbe:
    container_index: int
    field: str  # livenessProbe, readinessProbe or startupProbe
    probe: dict[str, Any]  # what replaces it


def app_health_path(container: str, field: str) -> str:
    return f"{APP_HEALTH_PREFIX}{container}/{PROBE_KINDS[field]}"


def _resolve_port(port: Any, container: Mapping[str, Any]) -> int | None:
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if isinstance(p, Mapping) and p.get("name") == port and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
    return None


def rewrite_probes(
    containers: list[Any], status_port: int = AGENT_STATUS_PORT
) -> tuple[list[RewrittenProbe], dict[str, dict[str, Any]]]:
    """(the probes to replace, the agent's table of original probes) for the pod's app containers."""
    rewritten: list[RewrittenProbe] = []
    table: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping):
            raise UnpatchableError(f"spec.containers[{i}]: expected an object")
        name = c.get("name")
        for field in PROBE_KINDS:
            probe = c.get(field)
            if probe is None:
                continue
            if not isinstance(probe, Mapping):
                raise UnpatchableError(f"spec.containers[{i}].{field}: expected an object")
            kinds = [h for h in HANDLERS if isinstance(probe.get(h), Mapping)]
            if len(kinds) != 1 or not isinstance(name, str):
                continue  # exec, or nothing we know how to run for it
            kind = kinds[0]
            handler = dict(probe[kind])
            port = _resolve_port(handler.get("port"), c)
            if port is None:
                log.info(
                    "spec.containers[%d].%s: port %r not declared; left as is", i, field, handler.get("port")
                )
                continue
            handler["port"] = port
            path = app_health_path(name, field)
            original: dict[str, Any] = {kind: handler}
            if "timeoutSeconds" in probe:
                original["timeoutSeconds"] = probe["timeoutSeconds"]
            table[path] = original
            new = {k: v for k, v in probe.items() if k not in HANDLERS}
            new["httpGet"] = {"path": path, "port": status_port, "scheme": "HTTP"}
            rewritten.append(RewrittenProbe(i, field, new))
    return rewritten, table
