"""What the polling config sources share: subscribers and a background poll thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PollingSource:
    """Subclasses implement ``poll() -> bool`` and call their ``_subscribers`` when their objects changed."""

    name = "source"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        raise NotImplementedError

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def start(self) -> None:
        """Load once (before returning), then keep polling in a daemon thread until ``stop()``."""
        self.poll()
        if self._thread is None:
            self._stop.clear()
            name = f"config-watch-{self.name.replace(' ', '-')}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:
                log.exception("%s watch failed", self.name)
