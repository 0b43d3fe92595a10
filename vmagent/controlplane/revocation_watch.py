"""Ends everything a revoked certificate still has open: its streams and its endpoints.

`vmagent-cp revoke` writes to the state store from another process. This watcher polls the store's
revocation generation (one cheap query, every ``interval`` seconds, 0.2 by default) and, when it
changed, checks every caller the control plane still serves against the revocations (by identity, by
serial and by the serial's renewal lineage, see :mod:`.ca.certrecords`):

1. the auto-registered entries registered with a revoked certificate are deleted (they leave EDS with
   the next push, well within a second);
2. every ADS stream and every registration stream of a revoked certificate ends with
   PERMISSION_DENIED and the reason.

Reconnects are then refused at authentication and renewals at the certificate service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId

log = logging.getLogger(__name__)

IsRevoked = Callable[[SpiffeId, int], bool]
# (selected(identity, serial), reason) -> how many streams were told to end
DisconnectWhere = Callable[[IsRevoked, str], int]
# entries as (spiffe id, serial hex) pairs; remove(pairs, reason) deletes those and returns how many
EntryCallers = Callable[[], list[tuple[str, str]]]
RemoveEntries = Callable[[set[tuple[str, str]], str], int]


class RevocationWatcher:
    def __init__(
        self,
        generation: Callable[[], int],
        is_revoked: IsRevoked,
        disconnects: list[DisconnectWhere],
        entry_callers: EntryCallers,
        remove_entries: RemoveEntries,
        interval: float = 0.2,
    ) -> None:
        self._generation = generation
        self._is_revoked = is_revoked
        self._disconnects = disconnects
        self._entry_callers = entry_callers
        self._remove_entries = remove_entries
        self._interval = interval
        self._seen: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int:
        """Run :meth:`check` when the revocations changed since the last poll; return streams ended."""
        generation = self._generation()
        if generation == self._seen:
            return 0
        ended = self.check()
        self._seen = generation
        return ended

    def check(self) -> int:
        """Delete revoked entries and end revoked streams now; return how many streams were ended."""
        answers: dict[tuple[SpiffeId, int], bool] = {}

        def revoked(identity: SpiffeId, serial: int) -> bool:
            key = (identity, serial)
            if key not in answers:
                answers[key] = self._is_revoked(identity, serial)
            return answers[key]

        gone: set[tuple[str, str]] = set()
        for uri, serial_text in self._entry_callers():
            try:
                if revoked(SpiffeId.parse(uri), int(serial_text, 16)):
                    gone.add((uri, serial_text))
            except (VmagentError, ValueError):
                continue  # an entry without a recorded certificate: nothing to match
        if gone:
            n = self._remove_entries(gone, "its certificate has been revoked")
            log.warning("removed %d workload entries of revoked certificates", n)
        ended = 0
        for disconnect in self._disconnects:
            ended += disconnect(revoked, "the certificate of this workload has been revoked")
        if ended:
            log.warning("ended %d streams of revoked certificates", ended)
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
                self.poll()
            except Exception:
                log.exception("revocation watch failed")
