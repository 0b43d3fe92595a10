"""Prometheus metrics of the control plane (``GET /metrics`` on ``--http-listen``), with ``prometheus_client``.

Two kinds of series (docs/observability.md lists them all):

* **events**, counted as they happen: xDS responses pushed and ACKed (Istio's ``pilot_xds_pushes`` and
  ``pilot_proxy_convergence_time``), CSRs and issuances (Istio's ``citadel_server_*``), refused join tokens
  by reason, registrations. This object is the ``XdsObserver`` of the ADS status registry, the
  ``IssuerObserver`` of the certificate issuer and the registration callback.
* **state**, read at scrape time from the live model through the callables it is given: connected proxies
  (``pilot_xds``), proxies per xDS type and sync state, workloads by health, certificates expiring within
  24 h, config objects and errors.

Counters carry Prometheus' ``_total`` suffix (``pilot_xds_pushes_total``): the text format and
``promtool check metrics`` require it, and Istio's own OpenTelemetry-based exporter names them so too.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vmagent.controlplane.xds.snapshot import short_name

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # see common/metrics.py

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPIRY_WINDOW = 24 * 3600.0

# Istio's buckets for pilot_proxy_convergence_time (seconds).
CONVERGENCE_BUCKETS = (0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0)


class _StateCollector(Collector):
    """Series computed from the live model at each scrape (nothing counted on hot paths)."""

    def __init__(
        self,
        proxies: Callable[[], list[dict[str, Any]]],
        workloads: Callable[[], list[dict[str, Any]]],
        config_errors: Callable[[], list[str]],
        config_objects: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self._proxies = proxies
        self._workloads = workloads
        self._config_errors = config_errors
        self._config_objects = config_objects
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        proxies = self._proxies()
        yield GaugeMetricFamily("pilot_xds", "Proxies connected over ADS.", value=len(proxies))
        states = Tally(
            (str(key), str(t.get("state", "unknown")))
            for p in proxies
            for key, t in (p.get("types") or {}).items()
        )
        by_state = GaugeMetricFamily(
            "vmagent_cp_xds_resources",
            "Proxies per xDS type and sync state (synced, stale, nacked).",
            labels=("type", "state"),
        )
        for (type_name, state), n in sorted(states.items()):
            by_state.add_metric((type_name, state), n)
        yield by_state
        workloads = self._workloads()
        tally = Tally(
            (str(w.get("health", "unknown")), "true" if w.get("connected") else "false") for w in workloads
        )
        wl = GaugeMetricFamily(
            "vmagent_cp_workloads",
            "Auto-registered workloads by health and connection.",
            labels=("health", "connected"),
        )
        for (health, connected), n in sorted(tally.items()):
            wl.add_metric((health, connected), n)
        yield wl
        now = self._clock()
        expiring = sum(1 for w in workloads if _expires_within(w.get("cert_expiry"), now, EXPIRY_WINDOW))
        yield GaugeMetricFamily(
            "vmagent_cp_workload_certs_expiring_24h",
            "Registered workloads whose certificate expires within 24 hours (or has expired).",
            value=expiring,
        )
        # With the default 24 h certificate lifetime every certificate is within 24 h of expiry; the
        # per-workload expiry time lets an alert pick its own margin (expiry - time() < 3600).
        expiry = GaugeMetricFamily(
            "vmagent_cp_workload_cert_expiry_timestamp_seconds",
            "Unix time the registered workload's certificate expires.",
            labels=("namespace", "name"),
        )
        for w in workloads:
            at = _timestamp(w.get("cert_expiry"))
            if at is not None:
                expiry.add_metric((str(w.get("namespace", "")), str(w.get("name", ""))), at)
        yield expiry
        yield GaugeMetricFamily(
            "vmagent_cp_config_errors",
            "Invalid config files or objects (last good version kept).",
            value=len(self._config_errors()),
        )
        yield GaugeMetricFamily(
            "vmagent_cp_config_objects", "Config objects in force.", value=self._config_objects()
        )


def _timestamp(iso: object) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _expires_within(iso: object, now: float, window: float) -> bool:
    at = _timestamp(iso)
    return at is not None and at - now <= window


class _JoinLimiterCollector:
    """The failed-join limiter's counts (this process; docs/reliability.md)."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        failed, limited = self._counts()
        yield CounterMetricFamily(
            "vmagent_cp_join_failures",
            "Joins refused for a missing or bad token (this process).",
            value=failed,
        )
        yield CounterMetricFamily(
            "vmagent_cp_join_rate_limited",
            "Joins refused unseen because their source failed too often (docs/reliability.md).",
            value=limited,
        )


class ControlPlaneMetrics:
    """The control plane's registry: event counters plus the scrape-time state collector."""

    def __init__(
        self,
        proxies: Callable[[], list[dict[str, Any]]],
        workloads: Callable[[], list[dict[str, Any]]],
        config_errors: Callable[[], list[str]],
        config_objects: Callable[[], int],
        clock: Callable[[], float] = time.time,
        join_failures: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        # No auto_describe: that would collect the state at registration, before the model exists.
        self.registry = CollectorRegistry()
        reg = self.registry
        self.registry.register(_StateCollector(proxies, workloads, config_errors, config_objects, clock))
        if join_failures is not None:
            self.registry.register(_JoinLimiterCollector(join_failures))
        self._pushes = Counter(
            "pilot_xds_pushes", "xDS responses sent to proxies, by type.", ("type",), registry=reg
        )
        self._rejects = Counter(
            "pilot_total_xds_rejects",
            "xDS responses proxies rejected (NACK), by type.",
            ("type",),
            registry=reg,
        )
        self._convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Seconds from sending an xDS response to the proxy's ACK of it.",
            ("type",),
            buckets=CONVERGENCE_BUCKETS,
            registry=reg,
        )
        self._csrs = Counter(
            "citadel_server_csr_count",
            "CSRs received, by path (join, renew, kubernetes).",
            ("via",),
            registry=reg,
        )
        self._issued = Counter(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued, by path (join, renew, kubernetes).",
            ("via",),
            registry=reg,
        )
        self._cert_errors = Counter(
            "vmagent_cp_cert_issuance_errors",
            "Certificate requests refused, by path and gRPC status code.",
            ("via", "code"),
            registry=reg,
        )
        self._token_refusals = Counter(
            "vmagent_cp_join_token_refusals",
            "Join tokens refused, by reason (expired, bad_signature, malformed, unknown, mismatch, "
            "revoked, used_up, missing, wrong_kind).",
            ("reason",),
            registry=reg,
        )
        self._registrations = Counter(
            "vmagent_cp_registrations",
            "Registration streams by outcome (accepted, denied, refused, unavailable).",
            ("result",),
            registry=reg,
        )

        self._inject_requests = Counter(
            "sidecar_injection_requests", "Requests to the sidecar injection webhook.", registry=reg
        )
        self._inject_success = Counter(
            "sidecar_injection_success", "Pods the webhook patched with a sidecar.", registry=reg
        )
        self._inject_skip = Counter(
            "sidecar_injection_skip",
            "Requests answered without a patch by policy, by reason (namespace_not_enabled, pod_opt_out, "
            "host_network, already_injected, ...).",
            ("reason",),
            registry=reg,
        )
        self._inject_failure = Counter(
            "sidecar_injection_failure",
            "Requests the webhook could not serve as asked, by type: bad_request (refused with a 4xx), "
            "unpatchable, namespace_lookup, malformed_pod, internal_error (these pods are admitted unchanged).",
            ("type",),
            registry=reg,
        )

    # --- XdsObserver ---------------------------------------------------------------------------------
    def pushed(self, type_url: str) -> None:
        self._pushes.labels(type=short_name(type_url)).inc()

    def acked(self, type_url: str, seconds: float) -> None:
        self._convergence.labels(type=short_name(type_url)).observe(seconds)

    def nacked(self, type_url: str) -> None:
        self._rejects.labels(type=short_name(type_url)).inc()

    # --- IssuerObserver ------------------------------------------------------------------------------
    def csr_received(self, via: str) -> None:
        self._csrs.labels(via=via).inc()

    def issued(self, via: str) -> None:
        self._issued.labels(via=via).inc()

    def refused(self, via: str, code: str) -> None:
        self._cert_errors.labels(via=via, code=code).inc()

    def token_refused(self, reason: str) -> None:
        self._token_refusals.labels(reason=reason).inc()

    # --- the injection webhook (inject.review.InjectionObserver) -----------------------------------------
    def injection(self, result: str, reason: str) -> None:
        self._inject_requests.inc()
        if result == "injected":
            self._inject_success.inc()
        elif result == "skipped":
            self._inject_skip.labels(reason=reason).inc()
        else:
            self._inject_failure.labels(type=reason).inc()

    # --- registration --------------------------------------------------------------------------------
    def registration(self, result: str) -> None:
        self._registrations.labels(result=result).inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()
