"""A tiny metrics registry rendering the Prometheus text format (counters and gauges with labels).

The agent's components take an optional ``Registry`` and record into it; the status server renders it
and appends Envoy's own ``/stats/prometheus``. Metric names start with ``vmagent_`` so they never collide
with Envoy's ``envoy_`` families.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

_M = TypeVar("_M", bound="_Metric")
LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()
        self._values: dict[LabelKey, float] = {}
        self._fn: Callable[[], float] | None = None

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._values.items())
            fn = self._fn
        if fn is not None:
            items = [((), float(fn()))]
        for key, val in items:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
            suffix = "{" + label_text + "}" if label_text else ""
            lines.append(f"{self.name}{suffix} {_fmt_value(val)}")
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            k = _key(labels)
            self._values[k] = self._values.get(k, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[_key(labels)] = float(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Compute the (unlabelled) value at scrape time."""
        with self._lock:
            self._fn = fn


class Registry:
    """Named metrics, rendered in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help_text: str) -> Counter:
        return self._get(Counter, name, help_text)

    def gauge(self, name: str, help_text: str) -> Gauge:
        return self._get(Gauge, name, help_text)

    def _get(self, cls: type[_M], name: str, help_text: str) -> _M:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is None:
                metric = cls(name, help_text)
                self._metrics[name] = metric
                return metric
        if not isinstance(existing, cls):
            raise ValueError(f"metric {name} is already registered as a {existing.kind}")
        return existing

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(m.render() for m in metrics)


def register_process_metrics(registry: Registry) -> None:
    """The agent process's resident memory, CPU seconds and start time."""
    page = os.sysconf("SC_PAGE_SIZE")
    started = time.time()

    def rss() -> float:
        with open("/proc/self/statm") as fh:
            return float(int(fh.read().split()[1]) * page)

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    registry.gauge("vmagent_process_resident_memory_bytes", "Resident memory of the agent.").set_function(rss)
    registry.gauge("vmagent_process_cpu_seconds", "CPU time used by the agent.").set_function(cpu)
    registry.gauge("vmagent_process_start_time_seconds", "Unix time the agent started.").set(started)
