"""Exponential backoff with jitter, shared by every retry loop of both sides."""

from __future__ import annotations

import random
import threading


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling up to ``maximum``; ``reset()`` after success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, jitter: float = 0.2) -> None:
        self._initial = initial
        self._maximum = maximum
        self._jitter = jitter
        self._next = initial
        self._lock = threading.Lock()

    def next(self) -> float:
        with self._lock:
            delay = self._next
            self._next = min(self._maximum, self._next * 2)
        return delay * (1 + random.uniform(-self._jitter, self._jitter))

    def reset(self) -> None:
        with self._lock:
            self._next = self._initial
