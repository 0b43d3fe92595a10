"""Fixed-rate HTTP/1.1 load from Debian's load generators, run inside a network namespace, with every
request's start time and latency kept, so the benchmark computes its own percentiles and checks how
constant the offered rate really was.

Two generators (both from Debian, see ``DEBIAN_PACKAGES``):

* ``h2load`` (nghttp2-client), the default: ``--h1 -c CONNS --rps RATE/CONNS -D S --warm-up-time W
  --log-file F``; the log has one line per measured request: start time (microseconds since the
  epoch), status, microseconds to the end of the response. Resolution 1 us. Its ``--rps`` scheduler
  keeps the average exactly (requests that fall behind are sent as soon as the connection is free),
  but it wakes about every 10 ms, so each connection sends its 2-3 requests of that slot back to back.
* ``hey``: ``-c CONNS -q RATE/CONNS -z S -o csv``; one ticker per worker, so each connection sends
  exactly every CONNS/RATE seconds, all workers in step; a slow request delays (and may drop) ticks.
  Latencies are printed with 0.1 ms resolution only, too coarse for sub-millisecond differences;
  there is no warm-up phase (a separate short run serves as one).

Both measure a request from when it is written, not from when it was due (neither corrects for
coordinated omission); ``pacing`` says how far the starts were from an even schedule.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import pwd
import resource
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import percentile, rounded
from vmagent.lab.netns import Netns

GENERATORS = ("h2load", "hey")
DEBIAN_PACKAGES = {"h2load": "nghttp2-client", "hey": "hey"}


@dataclass(frozen=True)
class LoadSpec:
    """One run: ``rate`` requests/s in total over ``connections`` keep-alive connections to ``url``."""

    url: str
    rate: int
    connections: int
    duration_s: float
    warmup_s: float
    timeout_s: float = 5.0


@dataclass
class LoadRun:
    """What one run measured: per-request start offsets (s, from the first start) and latencies (ms) of
    the measured phase, status counts, failures, and the generator's CPU seconds."""

    tool: str
    spec: LoadSpec
    starts_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failed: int = 0
    cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    def latency(self) -> dict[str, float | int | None]:
        """count, mean and p50/p90/p99/p99.9/max of the latencies in ms (3 decimals: microseconds)."""
        v = self.latencies_ms
        if not v:
            return {"count": 0}
        return {
            "count": len(v),
            "mean": rounded(sum(v) / len(v)),
            "p50": rounded(percentile(v, 50)),
            "p90": rounded(percentile(v, 90)),
            "p99": rounded(percentile(v, 99)),
            "p999": rounded(percentile(v, 99.9)),
            "max": rounded(max(v)),
        }

    def pacing(self) -> dict[str, Any]:
        """How constant the offered load was: achieved rate over the measured phase; requests per 10 ms
        and per 100 ms window (an even schedule gives rate/100 and rate/10 in every window); the share
        of requests that started within 0.2 ms of the previous one (bursts); the gap between starts."""
        starts = sorted(self.starts_s)
        if len(starts) < 2:
            return {"requests": len(starts)}
        span = starts[-1] - starts[0]
        gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
        out: dict[str, Any] = {
            "requests": len(starts),
            "achieved_rps": rounded(len(starts) / self.spec.duration_s, 1),
            "span_s": rounded(span, 3),
            "burst_share": rounded(sum(1 for g in gaps_ms if g < 0.2) / len(gaps_ms), 3),
            "gap_ms": {
                "p50": rounded(percentile(gaps_ms, 50)),
                "p99": rounded(percentile(gaps_ms, 99)),
                "max": rounded(max(gaps_ms)),
                "even": rounded(1000 / self.spec.rate),
            },
        }
        for label, width in (("per_10ms", 0.010), ("per_100ms", 0.100)):
            windows = int(span / width)  # whole windows only
            if windows < 1:
                continue
            counts = Counter(int(s / width) for s in starts if s < windows * width)
            series = [counts.get(i, 0) for i in range(windows)]
            out[label] = {
                "expected": rounded(self.spec.rate * width, 1),
                "min": min(series),
                "p50": rounded(percentile(series, 50), 1),
                "max": max(series),
            }
        return out

    def summary(self) -> dict[str, Any]:
        total = self.ok + self.failed + sum(n for c, n in self.statuses.items() if not 200 <= c < 300)
        return {
            "latency_ms": self.latency(),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failed": self.failed,
            "requests": total,
            "pacing": self.pacing(),
            "loadgen_cpu_ms_per_request": rounded(self.cpu_s * 1000 / max(total, 1), 4),
        }


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(ru.ru_utime + ru.ru_stime)


class LoadGenerator:
    """Runs ``tool`` in a namespace as ``user``; ``scratch`` is a directory that user may write."""

    def __init__(self, tool: str, scratch: Path, user: str | None = "nobody") -> None:
        if tool not in GENERATORS:
            raise ValueError(f"unknown load generator {tool!r} (known: {', '.join(GENERATORS)})")
        self.tool = tool
        self.user = user
        self.scratch = scratch
        self._count = 0

    @staticmethod
    def make_scratch(user: str | None) -> Path:
        """A fresh directory under the system temp dir that ``user`` owns (h2load's log is written there)."""
        path = Path(tempfile.mkdtemp(prefix="vmagent-bench-loadgen-"))
        path.chmod(0o755)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def run(self, ns: Netns, spec: LoadSpec) -> LoadRun:
        """One measured run (with its warm-up) against ``spec.url`` from inside ``ns``."""
        if spec.rate % spec.connections:
            raise ValueError(f"rate {spec.rate} is not a multiple of {spec.connections} connections")
        if self.tool == "h2load":
            return self._h2load(ns, spec)
        return self._hey(ns, spec)

    def _h2load(self, ns: Netns, spec: LoadSpec) -> LoadRun:
        self._count += 1
        log = self.scratch / f"h2load-{self._count}.tsv"
        cmd = [
            "h2load", "--h1", "-c", str(spec.connections), "-t", "1",
            "--rps", str(spec.rate // spec.connections),
            "-D", f"{spec.duration_s:g}", "--warm-up-time", f"{spec.warmup_s:g}",
            "-N", f"{spec.timeout_s:g}",
            f"--log-file={log}", spec.url,
        ]  # fmt: skip
        cpu0 = _children_cpu()
        ns.run(cmd, user=self.user, timeout=spec.duration_s + spec.warmup_s + spec.timeout_s + 30)
        out = LoadRun("h2load", spec, cpu_s=_children_cpu() - cpu0)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
        log.unlink()
        parsed = [(int(r[0]), int(r[1]), int(r[2])) for r in rows if len(r) >= 3]
        if not parsed:
            return out
        first = min(start for start, _, _ in parsed)
        for start, status, micros in parsed:
            if status <= 0:  # h2load logs -1 for a stream that failed
                out.failed += 1
                continue
            out.statuses[status] += 1
            if 200 <= status < 300:
                out.starts_s.append((start - first) / 1e6)
                out.latencies_ms.append(micros / 1000)
        return out

    def _hey(self, ns: Netns, spec: LoadSpec) -> LoadRun:
        base = ["hey", "-c", str(spec.connections), "-q", str(spec.rate // spec.connections)]
        base += ["-t", f"{max(1, round(spec.timeout_s))}", "-disable-compression"]
        if spec.warmup_s > 0:
            ns.run([*base, "-z", f"{spec.warmup_s:g}s", spec.url], user=self.user, timeout=spec.warmup_s + 30)
        cpu0 = _children_cpu()
        r = ns.run(
            [*base, "-z", f"{spec.duration_s:g}s", "-o", "csv", spec.url],
            user=self.user,
            timeout=spec.duration_s + spec.timeout_s + 30,
        )
        out = LoadRun("hey", spec, cpu_s=_children_cpu() - cpu0)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        offsets = [float(row["offset"]) for row in rows if row.get("offset")]
        first = min(offsets) if offsets else 0.0
        for row in rows:
            try:
                status = int(row["status-code"])
            except (KeyError, ValueError):
                out.failed += 1
                continue
            out.statuses[status] += 1
            if 200 <= status < 300:
                out.starts_s.append(float(row["offset"]) - first)
                out.latencies_ms.append(float(row["response-time"]) * 1000)
        # hey's csv lists only requests that got a response; errors are in its summary, not here
        return out

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]
