"""Issued certificates and revocations, in the SQLite state store.

A revocation names either one certificate (by serial: one VM) or a whole identity (every VM of a
WorkloadGroup's service account). Renewals and xDS streams from a revoked certificate are refused, and
revocations survive restarts.

A revoked serial also revokes its **descendants**: every certificate issued by a renewal authenticated
with it, and theirs (the ``previous_serial`` lineage S1 -> S2 -> S3). So a stolen certificate cannot be
laundered by renewing it before the operator revokes the serial they saw. :meth:`CertRecords.is_revoked`
walks the lineage up from the serial asked about; the in-memory snapshot holds the revoked serials with
all their known descendants, and a renewal recorded here whose parent is in it joins it at once.

Issuance is on the hot path of the certificate services, so two things happen off it, in one
background thread per ``CertRecords`` (started on first use, stopped by :meth:`CertRecords.close`):

* **Write-behind of ``issued_certs``.** :meth:`CertRecords.record` queues the row; about 50 ms after
  the first row of a batch the thread inserts everything queued with one multi-row INSERT (one
  transaction) through the shared connection. It lets rows gather rather than wake (and take the GIL)
  for each, and it uses no second connection, which would make SQLite's file lock (with its sleeping
  busy handler) arbitrate between the two. Durability: a certificate is returned to its caller before
  its row is committed, so a crash of the control plane loses the rows of the last ~50 ms (a clean stop
  does not: :meth:`close` writes everything queued). The table is an audit record; nothing is
  authorised from it (revocation is by serial or identity in ``revocations``, written synchronously),
  and with ``synchronous=NORMAL`` a power loss could already lose the last commits. :meth:`issued`
  first waits for the rows queued before it, so a reader in the same process sees its own issuances.
* **A snapshot of ``revocations``** for :meth:`is_revoked_cached`, reloaded when the table changes,
  checked every ``refresh_interval`` (0.5 s): a revocation by ``vmagent-cp revoke`` (another process) is
  enforced on renewals within that interval; one made through this object at once. :meth:`is_revoked`
  still asks the database every time.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.db import StateDb

log = logging.getLogger(__name__)

_Row = tuple[str, str, str, str, float, float, str | None]
_INSERT = "INSERT OR REPLACE INTO issued_certs VALUES (?, ?, ?, ?, ?, ?, ?)"
_MAX_BATCH = 500  # rows per INSERT: 7 parameters each, well under SQLite's 32766

# Lineage walks stop after 100000 steps so a corrupt cycle cannot loop (a VM renewing twice a day for
# 100 years is well under it).

_ANCESTORS = """
WITH RECURSIVE chain(s, n) AS (
    SELECT ?, 0
    UNION
    SELECT c.previous_serial, chain.n + 1 FROM issued_certs c JOIN chain ON c.serial = chain.s
    WHERE c.previous_serial IS NOT NULL AND chain.n < 100000
)
SELECT s FROM chain ORDER BY n
"""
_REVOKED_ANCESTOR = """
WITH RECURSIVE chain(s, n) AS (
    SELECT ?, 0
    UNION
    SELECT c.previous_serial, chain.n + 1 FROM issued_certs c JOIN chain ON c.serial = chain.s
    WHERE c.previous_serial IS NOT NULL AND chain.n < 100000
)
SELECT 1 FROM revocations r JOIN chain ON r.kind = 'serial' AND r.value = chain.s LIMIT 1
"""
_DESCENDANTS = """
WITH RECURSIVE d(s, n) AS (
    SELECT ?, 0
    UNION
    SELECT c.serial, d.n + 1 FROM issued_certs c JOIN d ON c.previous_serial = d.s WHERE d.n < 100000
)
SELECT s FROM d WHERE n > 0
"""
_ALL_REVOKED_DESCENDANTS = """
WITH RECURSIVE d(s, n) AS (
    SELECT value, 0 FROM revocations WHERE kind = 'serial'
    UNION
    SELECT c.serial, d.n + 1 FROM issued_certs c JOIN d ON c.previous_serial = d.s WHERE d.n < 100000
)
SELECT DISTINCT s FROM d WHERE n > 0
"""

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS issued_certs (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        hostname TEXT NOT NULL DEFAULT '',
        via TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL,
        previous_serial TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS issued_certs_spiffe ON issued_certs (spiffe_id)",
    "CREATE INDEX IF NOT EXISTS issued_certs_previous ON issued_certs (previous_serial)",
    """CREATE TABLE IF NOT EXISTS revocations (
        kind TEXT NOT NULL CHECK (kind IN ('serial', 'identity')),
        value TEXT NOT NULL,
        revoked_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (kind, value)
    )""",
]


class WriteLock:
    """Serialises the certificate path's writes to one state database across threads and processes
    (``serve`` and its CA workers), with ``flock`` on a file beside the database.

    SQLite alone would let them race for its write lock, and a writer that finds the database locked
    sleeps 1, 2, 5, 10... ms before trying again: a burst of joins served by several processes then
    spends its time asleep. A process waiting on ``flock`` wakes as soon as the holder lets go.
    """

    def __init__(self, db_file: Path | None) -> None:
        """``db_file=None`` (an in-memory database): between threads only."""
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if db_file is not None:
            self._fd = os.open(f"{db_file}-ca-write.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> WriteLock:
        self._thread_lock.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def serial_hex(serial: int) -> str:
    return f"{serial:x}"


@dataclass(frozen=True)
class IssuedCert:
    serial: str
    spiffe_id: str
    hostname: str
    via: str
    issued_at: float
    not_after: float
    previous_serial: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "identity": self.spiffe_id,
            "hostname": self.hostname,
            "via": self.via,
            "issued_at": _iso(self.issued_at),
            "not_after": _iso(self.not_after),
            "previous_serial": self.previous_serial,
        }


class CertRecords:
    """Issued certificates and revocations of one state database (see the module docstring)."""

    def __init__(
        self,
        db: StateDb,
        write_behind: bool = True,
        refresh_interval: float = 0.5,
        batch_delay: float = 0.05,
    ) -> None:
        """``write_behind=False`` commits every :meth:`record` before it returns; otherwise rows are
        committed about ``batch_delay`` seconds after the first of a batch was queued."""
        self._db = db
        self._batch_delay = batch_delay
        for stmt in _SCHEMA:
            db.execute(stmt)
        # Taken around every write of the certificate path: the batches below, revocations and (by the
        # certificate service) token use counts.
        self.write_lock = WriteLock(_db_file(db))
        self._write_behind = write_behind
        self._refresh_interval = refresh_interval
        self._queue: queue.SimpleQueue[_Row | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._queued = self._committed = 0
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()
        self._closed = False
        # The revocation snapshot: generation (max rowid), revoked identity URIs, revoked serials.
        self._rev_generation: int | None = None
        self._rev_identities: frozenset[str] = frozenset()
        self._rev_serials: frozenset[str] = frozenset()

    # -- issued certificates ----------------------------------------------------------------------

    def record(
        self,
        leaf: x509.Certificate,
        identity: SpiffeId,
        via: str,
        hostname: str = "",
        previous_serial: int | None = None,
    ) -> None:
        """Record an issued certificate (queued for the background writer unless write-behind is off)."""
        row: _Row = (
            serial_hex(leaf.serial_number),
            identity.uri,
            hostname,
            via,
            time.time(),
            leaf.not_valid_after_utc.timestamp(),
            serial_hex(previous_serial) if previous_serial is not None else None,
        )
        if previous_serial is not None:
            with self._lock:  # a renewal of a revoked certificate (raced with the revocation) is revoked too
                if row[6] in self._rev_serials:
                    self._rev_serials = self._rev_serials | {row[0]}
        if self._write_behind:
            with self._lock:  # ordered with close(): a row is either queued before its sentinel or direct
                if not self._closed:
                    self._start_thread_locked()
                    self._queued += 1
                    self._queue.put(row)
                    return
        self._db.execute(_INSERT, row)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued before this call is committed; False if ``timeout`` ran out."""
        with self._written:
            target = self._queued
            if self._committed >= target:
                return True
            self._hurry.set()
            return self._written.wait_for(lambda: self._committed >= target, timeout)

    def close(self) -> None:
        """Commit what is queued and stop the background thread (later records are written directly)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
                self._hurry.set()
        if thread is not None:
            thread.join(60)
        self.write_lock.close()

    def _start_thread_locked(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="cert-records", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        stopping = False
        next_refresh = time.monotonic() + self._refresh_interval
        while not stopping:
            timeout = max(0.0, next_refresh - time.monotonic())
            rows: list[_Row] = []
            try:
                item = self._queue.get(timeout=timeout)
                if item is not None and self._batch_delay > 0 and self._queue.qsize() < _MAX_BATCH:
                    # Let a batch gather instead of waking (and taking the GIL) for every row;
                    # flush() and close() cut the wait short.
                    self._hurry.wait(self._batch_delay)
                    self._hurry.clear()
                while True:
                    if item is None:
                        stopping = True
                    else:
                        rows.append(item)
                    if len(rows) >= _MAX_BATCH:
                        break
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if rows:
                self._commit(rows)
            if time.monotonic() >= next_refresh:
                if self._rev_generation is not None:  # the snapshot is in use
                    self._refresh_revocations()
                next_refresh = time.monotonic() + self._refresh_interval

    def _commit(self, rows: list[_Row]) -> None:
        sql = _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (len(rows) - 1)
        params = tuple(v for row in rows for v in row)
        delay = 0.05
        while True:
            try:
                with self.write_lock:
                    self._db.execute(sql, params)  # one statement: one transaction for the batch
                break
            except sqlite3.Error as exc:  # e.g. locked past busy_timeout: keep the rows, try again
                log.error("cannot record %d issued certificates (will retry): %s", len(rows), exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._written:
            self._committed += len(rows)
            self._written.notify_all()

    # -- revocations ------------------------------------------------------------------------------
    def revoke_serial(self, serial: str, reason: str = "") -> None:
        serial = serial.lower().removeprefix("0x").replace(":", "")
        try:
            int(serial, 16)
        except ValueError as exc:
            raise VmagentError(f"{serial!r} is not a hexadecimal certificate serial") from exc
        serial = serial.lstrip("0") or "0"
        with self.write_lock:
            self._db.execute(
                "INSERT OR IGNORE INTO revocations VALUES ('serial', ?, ?, ?)", (serial, time.time(), reason)
            )
        descendants = self.descendants(serial)
        with self._lock:
            self._rev_serials = self._rev_serials | {serial} | descendants

    def descendants(self, serial: str) -> frozenset[str]:
        """Serials issued (directly or through further renewals) by renewing certificate ``serial``."""
        self.flush()
        rows, _ = self._db.execute(_DESCENDANTS, (serial,))
        return frozenset(str(r[0]) for r in rows)

    def lineage(self, serial: int) -> list[str]:
        """``serial`` (hex) and the serials it was renewed from, newest first."""
        self.flush()
        rows, _ = self._db.execute(_ANCESTORS, (serial_hex(serial),))
        return [str(r[0]) for r in rows]

    def descends_from(self, serial: int, ancestor: str) -> bool:
        """True when certificate ``serial`` is ``ancestor`` (hex) or was renewed from it, at any depth."""
        return ancestor.lower() in self.lineage(serial)

    def revoke_identity(self, identity: SpiffeId, reason: str = "") -> None:
        with self.write_lock:
            self._db.execute(
                "INSERT OR IGNORE INTO revocations VALUES ('identity', ?, ?, ?)",
                (identity.uri, time.time(), reason),
            )
        with self._lock:
            self._rev_identities = self._rev_identities | {identity.uri}

    def is_revoked(self, identity: SpiffeId, serial: int) -> bool:
        """True when ``identity``, certificate ``serial`` or any certificate it was renewed from is revoked."""
        rows, _ = self._db.execute(
            "SELECT 1 FROM revocations WHERE (kind = 'identity' AND value = ?) OR (kind = 'serial' AND value = ?)",
            (identity.uri, serial_hex(serial)),
        )
        if rows:
            return True
        rows, _ = self._db.execute("SELECT 1 FROM revocations WHERE kind = 'serial' LIMIT 1")
        if not rows:
            return False
        self.flush()
        rows, _ = self._db.execute(_REVOKED_ANCESTOR, (serial_hex(serial),))
        return bool(rows)

    def generation(self) -> int:
        """Changes whenever a revocation is added (by any process): cheap to poll."""
        rows, _ = self._db.execute("SELECT coalesce(max(rowid), 0) FROM revocations")
        generation: int = int(rows[0][0])  # type: ignore[call-overload]
        return generation

    def is_revoked_cached(self, identity: SpiffeId, serial: int) -> bool:
        """Like :meth:`is_revoked`, from the in-memory snapshot: no database access after the first call
        (which loads it and starts the refreshing thread), so it may run on an event loop."""
        if self._rev_generation is None:
            self._load_revocations()
        return identity.uri in self._rev_identities or serial_hex(serial) in self._rev_serials

    def _load_revocations(self) -> None:
        rows, _ = self._db.execute("SELECT coalesce(max(rowid), 0) FROM revocations")
        generation = int(rows[0][0])  # type: ignore[call-overload]
        kinds, _ = self._db.execute("SELECT kind, value FROM revocations")
        self._set_revocations(generation, kinds)
        with self._lock:
            self._start_thread_locked()

    def _refresh_revocations(self) -> None:
        try:
            found, _ = self._db.execute("SELECT coalesce(max(rowid), 0) FROM revocations")
            generation = int(found[0][0])  # type: ignore[call-overload]
            if generation == self._rev_generation:
                return
            rows, _ = self._db.execute("SELECT kind, value FROM revocations")
        except sqlite3.Error as exc:
            log.error("cannot reload revocations (keeping the previous list): %s", exc)
            return
        self._set_revocations(generation, rows)

    def _set_revocations(self, generation: int, rows: list[tuple[object, ...]]) -> None:
        identities = frozenset(str(v) for k, v in rows if k == "identity")
        serials = frozenset(str(v) for k, v in rows if k == "serial")
        if serials:
            found, _ = self._db.execute(_ALL_REVOKED_DESCENDANTS)
            serials = serials | frozenset(str(r[0]) for r in found)
        with self._lock:  # never drop one made through this object meanwhile
            self._rev_identities = identities | self._rev_identities
            self._rev_serials = serials | self._rev_serials
            self._rev_generation = generation

    def revocations(self) -> list[dict[str, object]]:
        rows, _ = self._db.execute(
            "SELECT kind, value, revoked_at, reason FROM revocations ORDER BY revoked_at"
        )
        return [{"kind": k, "value": v, "revoked_at": _iso(float(t)), "reason": r} for k, v, t, r in rows]  # type: ignore[arg-type]

    def issued(self, identity: str | None = None) -> list[IssuedCert]:
        self.flush()
        q = "SELECT * FROM issued_certs"
        args: tuple[str, ...] = ()
        if identity:
            q, args = q + " WHERE spiffe_id = ?", (identity,)
        rows, _ = self._db.execute(q + " ORDER BY issued_at", args)
        return [IssuedCert(*r) for r in rows]  # type: ignore[arg-type]


def _db_file(db: StateDb) -> Path | None:
    """The file behind ``db``, or None for an in-memory database."""
    rows, _ = db.execute("PRAGMA database_list")
    for _seq, name, file in rows:
        if name == "main" and file:
            return Path(str(file))
    return None


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")
