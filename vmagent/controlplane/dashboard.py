"""The read-only web dashboard on the control plane's HTTP port: its JSON views and its static files.

The views join what the existing ``/api/v1/...`` endpoints already serve (workload records, ADS stream
status, config objects and their errors) with the connected proxies' node metadata (the agent version)
and the service graph (:mod:`.service_graph`). The page itself (HTML, JS, CSS; the graph is SVG) ships
in this package under ``ui/`` and is fetched from nothing else: no CDN, no external font.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from vmagent.common import wire
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.proxies import ConnectedProxy

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def ui_file(name: str) -> str:
    """One of the page's files, read from the installed package (so a .deb carries them)."""
    return resources.files("vmagent.controlplane").joinpath("ui", name).read_text(encoding="utf-8")


def _node_place(node_id: str) -> tuple[str, str] | None:
    """(namespace, ip) of an Istio node id, or None when it is not one."""
    try:
        parsed = wire.parse_node_id(node_id)
    except ValueError:
        return None
    return parsed.namespace, parsed.ip


class Dashboard:
    def __init__(
        self,
        workloads: Callable[[], list[dict[str, Any]]],
        streams: Callable[[], list[dict[str, Any]]],
        proxies: Callable[[], Iterable[ConnectedProxy]],
        objects: Callable[[], list[ConfigObject]],
        errors: Callable[[], list[str]],
        warnings: Callable[[], list[str]],
        graph: Callable[[], dict[str, Any]],
    ) -> None:
        self._workloads, self._streams, self._proxies = workloads, streams, proxies
        self._objects, self._errors, self._warnings, self._graph = objects, errors, warnings, graph

    def workloads_json(self) -> list[dict[str, Any]]:
        """Every workload record with its agent version, xDS sync state and last error."""
        versions: dict[tuple[str, str], str] = {}
        for p in self._proxies():
            versions[(p.namespace, p.ip)] = str(p.metadata.get("VMAGENT_VERSION") or "")
        streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for s in self._streams():
            place = _node_place(str(s.get("node_id") or s.get("proxy") or ""))
            if place is not None:
                streams.setdefault(place, []).append(s)
        out = []
        for w in self._workloads():
            place = (str(w["namespace"]), str(w["address"]))
            mine = streams.get(place, [])
            states = [str(s.get("state")) for s in mine]
            xds = "disconnected" if not mine else ("synced" if all(x == "synced" for x in states) else
                   ("nacked" if "nacked" in states else "stale"))  # fmt: skip
            nack = next(
                (f"{t}: {v['error']}" for s in mine for t, v in s.get("types", {}).items() if v.get("error")),
                None,
            )
            if w.get("health") != "healthy" and w.get("health_message"):
                last_error: str | None = f"health: {w['health_message']}"
            elif nack:
                last_error = f"xDS NACK {nack}"
            elif not w.get("connected"):
                last_error = "agent disconnected"
            else:
                last_error = None
            out.append({
                **w,
                "agent_version": versions.get(place, ""),
                "xds_state": xds,
                "xds": mine,
                "last_error": last_error,
            })  # fmt: skip
        return out

    def config_json(self) -> dict[str, Any]:
        """The config objects in force, and every validation error and warning of the sources."""
        errors, warnings = self._errors(), self._warnings()
        objects = []
        for o in self._objects():
            ref = f"{o.namespace}/{o.name}"
            mine = [m for m in errors + warnings if ref in m and o.kind in m]
            objects.append(
                {"kind": o.kind, "namespace": o.namespace, "name": o.name, "source": o.source, "issues": mine}
            )
        return {"objects": objects, "errors": errors, "warnings": warnings}

    def graph_json(self) -> dict[str, Any]:
        return self._graph()
