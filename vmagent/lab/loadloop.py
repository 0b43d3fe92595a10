"""A paced HTTP/1.1 request loop for failover tests: ``python -m vmagent.lab.loadloop --url URL ...``.

Runs inside a lab VM as an ordinary user (its connections go through capture like any client's).
``--workers`` threads share one schedule of ``--rate`` requests per second for at most ``--requests``
requests and ``--duration`` seconds; each keeps one keep-alive connection (a new one after an error).
It prints ``progress OK FAILED`` about once a second, and at the end the report as one JSON line:
requests sent, answered 200, failures by kind (and when, in seconds from the start), achieved rate,
latency maximum, and which VM (the echo app's ``name``) answered how many.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any


class Loop:
    def __init__(self, url: str, rate: float, requests: int, duration: float, timeout: float) -> None:
        u = urllib.parse.urlsplit(url)
        self.host = u.hostname or "localhost"
        self.port = u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.interval = 1.0 / rate
        self.requests = requests
        self.deadline = time.monotonic() + duration
        self.timeout = timeout
        self.lock = threading.Lock()
        self.next_slot = time.monotonic()
        self.sent = 0
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.failure_times: list[float] = []
        self.answered_by: Counter[str] = Counter()
        self.max_latency = 0.0
        self.t0 = time.monotonic()
        self.last_done = self.t0  # when the last worker finished (its last request answered or failed)

    def _slot(self) -> float | None:
        """The time this worker's next request is due, or None when the loop is over."""
        with self.lock:
            if self.sent >= self.requests or time.monotonic() >= self.deadline:
                return None
            self.sent += 1
            due = max(self.next_slot, time.monotonic() - 1.0)  # no burst to catch up more than 1 s
            self.next_slot = due + self.interval
            return due

    def worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while (due := self._slot()) is not None:
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            start = time.monotonic()
            kind = ""
            name = ""
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    name = str(json.loads(body).get("name", "?"))
                else:
                    kind = f"http {resp.status}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                kind = type(e).__name__
            latency = time.monotonic() - start
            if kind:
                conn.close()
                conn = None
            with self.lock:
                self.max_latency = max(self.max_latency, latency)
                if kind:
                    self.failures[kind] += 1
                    self.failure_times.append(round(start - self.t0, 3))
                else:
                    self.ok += 1
                    self.answered_by[name] += 1
        if conn is not None:
            conn.close()
        with self.lock:
            self.last_done = max(self.last_done, time.monotonic())

    def report(self, elapsed: float) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "failure_times_s": self.failure_times[:50],
            "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(self.sent / elapsed, 1) if elapsed > 0 else 0.0,
            "max_latency_s": round(self.max_latency, 3),
            "answered_by": dict(self.answered_by),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmagent.lab.loadloop", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=250.0, help="requests per second (default 250)")
    p.add_argument("--requests", type=int, default=5000, help="at most this many requests (default 5000)")
    p.add_argument("--duration", type=float, default=20.0, help="at most this many seconds (default 20)")
    p.add_argument("--workers", type=int, default=16, help="concurrent connections (default 16)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)")
    args = p.parse_args(argv)
    loop = Loop(args.url, args.rate, args.requests, args.duration, args.timeout)
    threads = [threading.Thread(target=loop.worker, daemon=True) for _ in range(args.workers)]
    for t in threads:
        t.start()
    end = time.monotonic() + args.duration + args.timeout + 10
    while any(t.is_alive() for t in threads) and time.monotonic() < end:
        time.sleep(1.0)
        with loop.lock:
            print(f"progress {loop.ok} {sum(loop.failures.values())}", flush=True)
    # The loop ran until its last worker finished, not until this once-a-second poll noticed it.
    end_at = time.monotonic() if any(t.is_alive() for t in threads) else loop.last_done
    print(json.dumps(loop.report(end_at - loop.t0)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
