"""The dashboard's service graph: the control plane scrapes its agents' ``:15020/stats/prometheus``.

Every ``interval`` seconds one round fetches the merged exposition of every connected VM (at most
``max_targets``, ``workers`` at a time, ``timeout`` seconds and ``max_bytes`` each), keeps only the
``reporter="destination"`` samples of ``istio_requests_total`` and
``istio_request_duration_milliseconds_bucket`` (each request counted once, by the server, whose
``source_workload`` comes from the mTLS peer certificate) and remembers them for ``window`` seconds.
An edge's rate, error rate (5xx) and p99 are computed over that window from the counters' growth, as
Prometheus' ``rate()`` and ``histogram_quantile()`` would. Nothing is pushed by the agents: a scrape is
an ordinary GET on the port the agent already serves to Prometheus (docs/observability.md, "Dashboard").
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vmagent.common.constants import AGENT_STATUS_PORT

log = logging.getLogger(__name__)

# (namespace/name of the workload record, address)
Target = tuple[str, str]
# (source ns, source workload, destination ns, destination workload)
EdgeKey = tuple[str, str, str, str]

_REQUESTS = "istio_requests_total"
_BUCKETS = "istio_request_duration_milliseconds_bucket"
# Agents are reached directly, never through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class _Sample:
    at: float
    requests: dict[EdgeKey, float] = field(default_factory=dict)
    errors: dict[EdgeKey, float] = field(default_factory=dict)
    buckets: dict[EdgeKey, dict[float, float]] = field(default_factory=dict)


@dataclass
class _Agent:
    address: str
    samples: deque[_Sample] = field(default_factory=deque)
    last_ok: float | None = None
    error: str | None = None


def parse_exposition(text: str, at: float) -> _Sample:
    """The destination-reported request counters and duration buckets of one agent's exposition."""
    wanted = "\n".join(
        line for line in text.splitlines() if line.startswith((_REQUESTS + "{", _BUCKETS + "{"))
    )
    sample = _Sample(at)
    for family in text_string_to_metric_families(wanted + "\n"):
        for s in family.samples:
            lab = s.labels
            if lab.get("reporter") != "destination":
                continue
            key = (
                lab.get("source_workload_namespace", "unknown"),
                lab.get("source_workload", "unknown"),
                lab.get("destination_workload_namespace", "unknown"),
                lab.get("destination_workload", "unknown"),
            )
            if s.name == _REQUESTS:
                sample.requests[key] = sample.requests.get(key, 0.0) + s.value
                if lab.get("response_code", "").startswith("5"):
                    sample.errors[key] = sample.errors.get(key, 0.0) + s.value
            elif s.name == _BUCKETS:
                le = float(lab.get("le", "+Inf"))
                per = sample.buckets.setdefault(key, {})
                per[le] = per.get(le, 0.0) + s.value
    return sample


def _growth(new: float, old: float | None) -> float:
    """A counter's increase; a counter that went down was reset (the agent restarted): all of it is new."""
    if old is None or new < old:
        return new
    return new - old


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile``: linear interpolation within the bucket holding the q-th observation."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


class ServiceGraph:
    """Scrapes the agents in a background thread; :meth:`graph_json` is ``/api/v1/dashboard/graph``."""

    def __init__(
        self,
        targets: Callable[[], list[Target]],
        interval: float = 5.0,
        window: float = 60.0,
        timeout: float = 2.0,
        workers: int = 8,
        max_targets: int = 1000,
        max_bytes: int = 16 << 20,
        port: int = AGENT_STATUS_PORT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._targets = targets
        self.interval, self.window, self.timeout = interval, window, timeout
        self.max_targets, self.max_bytes, self.port = max_targets, max_bytes, port
        self._workers = workers
        self._lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._last_round: float | None = None
        self._skipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="service-graph", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="graph-scrape") as pool:
            while not self._stop.is_set():
                try:
                    self.scrape_round(pool)
                except Exception:  # one bad round must not end the graph
                    log.exception("service graph: scrape round failed")
                self._stop.wait(self.interval)

    def _fetch(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        # source=agent: the agent's own families only, not Envoy's (an older agent ignores it and sends all)
        url = f"http://{host}:{self.port}/stats/prometheus?source=agent"
        with _DIRECT.open(url, timeout=self.timeout) as resp:
            body: bytes = resp.read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            raise ValueError(f"exposition larger than {self.max_bytes} bytes")
        return body.decode("utf-8", "replace")

    def scrape_round(self, pool: ThreadPoolExecutor) -> None:
        targets = sorted(set(self._targets()))
        skipped = max(0, len(targets) - self.max_targets)
        targets = targets[: self.max_targets]
        futures = {key: (address, pool.submit(self._fetch, address)) for key, address in targets}
        now = self._clock()
        with self._lock:
            for gone in set(self._agents) - set(futures):
                del self._agents[gone]
        for key, (address, fut) in futures.items():
            try:
                sample: _Sample | None = parse_exposition(fut.result(timeout=self.timeout + 5), self._clock())
                error = None
            except Exception as exc:
                sample, error = None, f"{type(exc).__name__}: {exc}"
                log.debug("service graph: scraping %s (%s) failed: %s", key, address, error)
            with self._lock:
                agent = self._agents.get(key)
                if agent is None or agent.address != address:
                    agent = self._agents[key] = _Agent(address)
                agent.error = error
                if sample is not None:
                    agent.last_ok = sample.at
                    agent.samples.append(sample)
                    # keep one sample older than the window as the baseline of the oldest growth
                    while len(agent.samples) > 2 and agent.samples[1].at <= sample.at - self.window:
                        agent.samples.popleft()
        with self._lock:
            self._last_round, self._skipped = now, skipped

    def graph_json(self) -> dict[str, Any]:
        rates: dict[EdgeKey, list[float]] = {}
        buckets: dict[EdgeKey, dict[float, float]] = {}
        with self._lock:
            agents = {k: (a.address, a.last_ok, a.error, list(a.samples)) for k, a in self._agents.items()}
            last_round, skipped = self._last_round, self._skipped
        scrapes = []
        for key, (address, last_ok, error, samples) in sorted(agents.items()):
            scrapes.append({"workload": key, "address": address, "last_ok": last_ok, "error": error})
            if len(samples) < 2:
                continue
            old, new = samples[0], samples[-1]
            dt = new.at - old.at
            if dt <= 0:
                continue
            for edge, count in new.requests.items():
                r = rates.setdefault(edge, [0.0, 0.0, 0.0])
                grown = _growth(count, old.requests.get(edge))
                r[0] += grown / dt
                r[1] += _growth(new.errors.get(edge, 0.0), old.errors.get(edge)) / dt
                r[2] += count
            for edge, per in new.buckets.items():
                before = old.buckets.get(edge, {})
                acc = buckets.setdefault(edge, {})
                for le, count in per.items():
                    acc[le] = acc.get(le, 0.0) + _growth(count, before.get(le))
        edges: list[dict[str, Any]] = []
        for (sns, sw, dns, dw), (rps, eps, total) in sorted(rates.items()):
            p99 = quantile(0.99, buckets.get((sns, sw, dns, dw), {})) if rps > 0 else None
            edges.append({
                "source": f"{sns}/{sw}", "destination": f"{dns}/{dw}",
                "rps": round(rps, 3), "error_rate": round(eps / rps, 4) if rps > 0 else 0.0,
                "p99_ms": None if p99 is None else round(p99, 2), "requests_total": total,
            })  # fmt: skip
        nodes = sorted({e["source"] for e in edges} | {e["destination"] for e in edges})
        return {
            "source": f"scraped from the agents' :{self.port}/stats/prometheus",
            "interval_seconds": self.interval,
            "window_seconds": self.window,
            "last_round": last_round,
            "targets_skipped": skipped,
            "nodes": nodes,
            "edges": edges,
            "scrapes": scrapes,
        }
