"""A background round run every ``period`` seconds while this replica holds the Lease (and at once when
it takes it): the shape of the injection side's cluster writers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class LeaderLoop:
    def __init__(
        self, name: str, round_: Callable[[], object], is_leader: Callable[[], bool], period: float
    ) -> None:
        self.name = name
        self._round = round_
        self.is_leader = is_leader
        self.period = period
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def trigger(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.is_leader():
                try:
                    self._round()
                except Exception:  # a bug in one round must not end the loop
                    log.exception("%s: round failed", self.name)
            self._wake.wait(self.period)
            self._wake.clear()
