"""The SQLite config store (what ``vmagent-cp apply`` writes) and a source that follows it.

Objects live in ``config_objects`` (one row per kind/namespace/name, spec as JSON); ``config_generation``
holds a counter bumped by every committed change, so a watcher in another process notices changes with
one cheap query.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmagent.controlplane.config.polling import PollingSource
from vmagent.controlplane.db import StoreWriteError, db_path, open_db
from vmagent.controlplane.model import ConfigObject

Key = tuple[str, str, str]
STORE_SOURCE = "store"
log = logging.getLogger(__name__)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS config_objects (
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        api_version TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        spec TEXT NOT NULL,
        applied_from TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (kind, namespace, name))""",
    """CREATE TABLE IF NOT EXISTS config_generation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO config_generation (id, generation) VALUES (1, 0)",
)


@dataclass(frozen=True)
class ApplyResult:
    created: int
    updated: int
    unchanged: int


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ConfigStore:
    """Validated objects kept in the state database. Safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        with self._lock:
            for stmt in _SCHEMA:
                self._conn.execute(stmt)

    @classmethod
    def open(cls, state_dir: Path) -> ConfigStore:
        return cls(open_db(state_dir))

    def _write_failed(self, exc: sqlite3.Error) -> StoreWriteError:
        """Roll back what SQLite left of the transaction; the error to raise, naming the file."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        return StoreWriteError(
            f"cannot write the state store {db_path(self._conn)}: {exc}; nothing was stored (the objects "
            "stored before are unchanged and still served); free space and run the command again"
        )

    def apply(self, objects: Sequence[ConfigObject], applied_from: str = "") -> ApplyResult:
        """Insert or replace ``objects`` in one transaction (all or nothing). Raises StoreWriteError when
        the store cannot be written (e.g. its disk is full); then nothing is stored."""
        created = updated = unchanged = 0
        now = time.time()
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for obj in objects:
                    row = (obj.api_version, _dump(obj.labels), _dump(obj.annotations), _dump(obj.spec))
                    old = cur.execute(
                        "SELECT api_version, labels, annotations, spec FROM config_objects "
                        "WHERE kind=? AND namespace=? AND name=?",
                        obj.key,
                    ).fetchone()
                    if old is not None and tuple(old) == row:
                        unchanged += 1
                        continue
                    cur.execute(
                        "INSERT OR REPLACE INTO config_objects VALUES (?,?,?,?,?,?,?,?,?)",
                        (*obj.key, *row, applied_from or obj.source, now),
                    )
                    if old is None:
                        created += 1
                    else:
                        updated += 1
                if created or updated:
                    cur.execute("UPDATE config_generation SET generation = generation + 1 WHERE id = 1")
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._write_failed(exc) from exc
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        return ApplyResult(created, updated, unchanged)

    def delete(self, keys: Iterable[Key]) -> int:
        """Delete the objects named by (kind, namespace, name); returns how many existed."""
        deleted = 0
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    cur.execute("DELETE FROM config_objects WHERE kind=? AND namespace=? AND name=?", key)
                    deleted += cur.rowcount
                if deleted:
                    cur.execute("UPDATE config_generation SET generation = generation + 1 WHERE id = 1")
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._write_failed(exc) from exc
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        return deleted

    def generation(self) -> int:
        """A number that changes whenever a change to the stored objects is committed."""
        with self._lock:
            row = self._conn.execute("SELECT generation FROM config_generation WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def list_objects(self) -> list[ConfigObject]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, namespace, name, api_version, labels, annotations, spec FROM config_objects "
                "ORDER BY kind, namespace, name"
            ).fetchall()
        return [
            ConfigObject(
                kind=r[0],
                namespace=r[1],
                name=r[2],
                api_version=r[3],
                labels=json.loads(r[4]),
                annotations=json.loads(r[5]),
                spec=json.loads(r[6]),
                source=STORE_SOURCE,
            )
            for r in rows
        ]


class StoreSource(PollingSource):
    """Follows a ``ConfigStore`` (also changes made by other processes) by polling its generation."""

    name = "state store"

    def __init__(self, store: ConfigStore, interval: float = 0.2) -> None:
        self._store = store
        super().__init__(interval)
        self._objects: dict[Key, ConfigObject] = {}
        self._generation = -1
        self._errors: list[str] = []

    def poll(self) -> bool:
        """Reload when the store's generation moved; True when the objects changed."""
        try:
            gen = self._store.generation()
            if gen == self._generation:
                return False
            objects = {o.key: o for o in self._store.list_objects()}
        except sqlite3.Error as exc:
            with self._lock:
                self._errors = [f"state store: cannot read config: {exc}"]
            log.error("state store: cannot read config: %s", exc)
            return False
        with self._lock:
            self._errors = []
            self._generation = gen
            changed = objects != self._objects
            self._objects = objects
            subscribers = list(self._subscribers)
        if changed:
            for cb in subscribers:
                cb()
        return changed

    def objects(self) -> dict[Key, ConfigObject]:
        with self._lock:
            return dict(self._objects)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)
