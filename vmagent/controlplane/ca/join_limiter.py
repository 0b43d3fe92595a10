"""Per-source limit on failed joins (docs/reliability.md, "Hostile input").

A source address whose join tokens were refused ``max_failures`` times within ``window`` seconds is refused
outright (RESOURCE_EXHAUSTED, with the wait) until its oldest failure leaves the window, so guessing
tokens from one address is slow and cheap for the control plane. Successful joins are never limited.
Memory is bounded: at most ``max_sources`` addresses are tracked (the least recently failing is dropped).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_SOURCES = 10_000


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:...``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


class FailedJoinLimiter:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self.failed_total = 0
        self.refused_total = 0

    def retry_after(self, source: str) -> float | None:
        """Seconds ``source`` must wait before its next join is considered, or None if it may try now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(source)
            if times is None or len(times) < self._max:
                return None
            wait = self._window - (now - times[0])
            if wait <= 0:
                return None
            self.refused_total += 1
            return wait

    def failed(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            self.failed_total += 1
            times = self._failures.pop(source, None) or collections.deque(maxlen=self._max)
            times.append(now)
            self._failures[source] = times
            while len(self._failures) > self._max_sources:
                self._failures.popitem(last=False)
