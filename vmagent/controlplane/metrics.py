"""Prometheus metrics of the control plane (``GET /metrics`` on ``--http-listen``), computed at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from vmagent.agent.status_metrics import Registry

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ControlPlaneMetrics:
    """Reads the live state through the callables it is given; nothing is counted on hot paths."""

    def __init__(
        self,
        proxies: Callable[[], list[dict[str, Any]]],
        workloads: Callable[[], list[dict[str, Any]]],
        config_errors: Callable[[], list[str]],
        config_objects: Callable[[], int],
        pushes: Callable[[], int],
        join_failures: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._proxies = proxies
        self._workloads = workloads
        self._config_errors = config_errors
        self._config_objects = config_objects
        self._pushes = pushes
        self._join_failures = join_failures

    def render(self) -> str:
        reg = Registry()
        proxies = self._proxies()
        reg.gauge("vmagent_cp_proxies_connected", "ADS streams connected.").set(len(proxies))
        states = Counter(
            (str(t.get("type_url", key)).rsplit(".", 1)[-1], str(t.get("state", "unknown")))
            for p in proxies
            for key, t in (p.get("types") or {}).items()
        )
        by_state = reg.gauge(
            "vmagent_cp_xds_resources", "Proxies per xDS type and sync state (synced, stale, nacked)."
        )
        for (type_name, state), n in sorted(states.items()):
            by_state.set(n, type=type_name, state=state)
        workloads = Counter(
            (str(w.get("health", "unknown")), "true" if w.get("connected") else "false")
            for w in self._workloads()
        )
        wl = reg.gauge("vmagent_cp_workloads", "Auto-registered workloads by health and connection.")
        for (health, connected), n in sorted(workloads.items()):
            wl.set(n, health=health, connected=connected)
        reg.gauge(
            "vmagent_cp_config_errors", "Invalid config files or objects (last good version kept)."
        ).set(len(self._config_errors()))
        reg.gauge("vmagent_cp_config_objects", "Config objects in force.").set(self._config_objects())
        reg.counter("vmagent_cp_xds_pushes_total", "Snapshot changes pushed to proxies.").inc(self._pushes())
        if self._join_failures is not None:
            failed, refused = self._join_failures()
            reg.counter(
                "vmagent_cp_join_failures_total", "Joins refused for a missing or bad token (this process)."
            ).inc(failed)
            reg.counter(
                "vmagent_cp_join_rate_limited_total",
                "Joins refused unseen because their source failed too often (docs/reliability.md).",
            ).inc(refused)
        return reg.render()
