"""Ends the live xDS streams of a workload identity once it is revoked.

`vmagent-cp revoke` writes to the state store from another process; this watcher polls the store and,
for each newly revoked identity, disconnects its proxies. Their reconnects are then refused at
authentication, so a revoked VM stops receiving config within about a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class RevocationWatcher:
    def __init__(
        self,
        revoked_identities: Callable[[], set[str]],
        connected: Callable[[], list[tuple[str, str]]],
        disconnect: Callable[[str, str], int],
        interval: float = 1.0,
    ) -> None:
        """``connected()`` lists (proxy key, SPIFFE id) pairs; ``disconnect(key, reason)`` ends a proxy's streams."""
        self._revoked = revoked_identities
        self._connected = connected
        self._disconnect = disconnect
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> int:
        """Disconnect every connected proxy whose identity is revoked; return how many streams ended."""
        revoked = self._revoked()
        ended = 0
        for key, identity in self._connected():
            if identity in revoked:
                n = self._disconnect(key, f"workload identity {identity} has been revoked")
                if n:
                    log.warning("disconnected revoked workload %s (%s)", identity, key)
                ended += n
        return ended

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="revocation-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:
                log.exception("revocation watch failed")
