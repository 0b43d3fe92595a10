"""Debounced push scheduling: coalesce bursts of config changes into one recomputation.

A push runs once the changes have been quiet for ``debounce`` seconds, but never later than
``max_delay`` seconds after the first change of the burst, so a steady trickle of changes cannot
starve the proxies. Scopes merge: a set of proxy keys, or ``None`` for every proxy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

Scope = set[str] | None


class Debouncer:
    """The timing rule alone, driven by explicit timestamps (no thread, no clock of its own)."""

    def __init__(self, debounce: float = 0.1, max_delay: float = 1.0) -> None:
        if debounce < 0 or max_delay < debounce:
            raise ValueError("need 0 <= debounce <= max_delay")
        self.debounce = debounce
        self.max_delay = max_delay
        self._first: float | None = None
        self._last = 0.0
        self._scope: Scope = set()

    @property
    def pending(self) -> bool:
        return self._first is not None

    def add(self, scope: Iterable[str] | None, now: float) -> None:
        """Record a change at ``now`` for ``scope`` (proxy keys, or None for all proxies)."""
        if self._first is None:
            self._first = now
        self._last = now
        if scope is None or self._scope is None:
            self._scope = None
        else:
            self._scope |= set(scope)

    def deadline(self) -> float | None:
        """When the pending changes are due: quiet for ``debounce``, capped at first + ``max_delay``."""
        if self._first is None:
            return None
        return min(self._last + self.debounce, self._first + self.max_delay)

    def take(self, now: float) -> tuple[bool, Scope]:
        """``(True, scope)`` and reset if due at ``now``; else ``(False, set())``."""
        due = self.deadline()
        if due is None or now < due:
            return False, set()
        scope, self._scope, self._first = self._scope, set(), None
        return True, scope


class PushScheduler:
    """Calls ``recompute(scope)`` from a background thread after debouncing :meth:`trigger` calls.

    ``recompute`` gets the merged scope (a set of proxy keys, or None for all). Changes arriving while
    it runs start the next burst. Exceptions from it are logged and do not stop the scheduler.
    """

    def __init__(
        self,
        recompute: Callable[[Scope], None],
        debounce: float = 0.1,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recompute = recompute
        self._clock = clock
        self._rule = Debouncer(debounce, max_delay)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="xds-push", daemon=True)
        self._thread.start()

    def trigger(self, scope: Iterable[str] | None = None) -> None:
        """Note a config change affecting ``scope`` (proxy keys; None = every proxy)."""
        with self._cond:
            if self._closed:
                return
            self._rule.add(scope, self._clock())
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; changes still waiting for their deadline are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    due = self._rule.deadline()
                    if due is None:
                        self._cond.wait()
                        continue
                    ready, scope = self._rule.take(self._clock())
                    if ready:
                        break
                    self._cond.wait(max(0.0, due - self._clock()))
            try:
                self._recompute(scope)
            except Exception:
                log.exception("xDS push recomputation failed")
