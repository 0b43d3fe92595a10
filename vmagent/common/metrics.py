"""A metrics registry: a thin typed front on ``prometheus_client`` (the agent records into it).

The agent's components take an optional ``Registry`` and record into it; the status server renders it
(``prometheus_client``'s text exposition) and appends Envoy's own ``/stats/prometheus``. Metric names
start with ``vmagent_`` so they never collide with Envoy's ``envoy_`` families. Each registry is its own
``CollectorRegistry`` (never the library's process-global default), so tests and several agents in one
process do not share counters.

``_created`` samples are switched off: they double the series count for no use on a scrape target that
reports its own start time (``vmagent_process_start_time_seconds``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class Counter:
    """A counter with optional labels declared up front: ``inc(1, type="cds")``."""

    def __init__(self, metric: _PCounter, labelnames: Sequence[str]) -> None:
        self._metric = metric
        self._labelled = bool(labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if self._labelled:
            self._metric.labels(**labels).inc(amount)
        else:
            self._metric.inc(amount)


class Gauge:
    """A gauge with optional labels declared up front; an unlabelled one may compute its value lazily."""

    def __init__(self, metric: _PGauge, labelnames: Sequence[str]) -> None:
        self._metric = metric
        self._labelled = bool(labelnames)

    def set(self, value: float, **labels: str) -> None:
        if self._labelled:
            self._metric.labels(**labels).set(value)
        else:
            self._metric.set(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Compute the (unlabelled) value at scrape time."""
        self._metric.set_function(fn)


class Registry:
    """Named metrics of one process part, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._metrics: dict[str, Counter | Gauge] = {}

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter; ``name`` ends in ``_total`` as Prometheus expects (the exposition keeps it)."""
        with self._lock:
            existing = self._metrics.get(name)
            if existing is None:
                base = name.removesuffix("_total")
                existing = Counter(
                    _PCounter(base, help_text, labelnames, registry=self.collectors), labelnames
                )
                self._metrics[name] = existing
        if not isinstance(existing, Counter):
            raise ValueError(f"metric {name} is already registered as a gauge")
        return existing

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is None:
                existing = Gauge(_PGauge(name, help_text, labelnames, registry=self.collectors), labelnames)
                self._metrics[name] = existing
        if not isinstance(existing, Gauge):
            raise ValueError(f"metric {name} is already registered as a counter")
        return existing

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it was never recorded); for status output and tests."""
        got = self.collectors.get_sample_value(name, labels)
        return 0.0 if got is None else float(got)

    def render(self) -> str:
        return generate_latest(self.collectors).decode()


def register_process_metrics(registry: Registry) -> None:
    """The agent process's resident memory, CPU seconds, open fds and start time (``vmagent_process_*``)."""
    ProcessCollector(namespace="vmagent", registry=registry.collectors)
