"""The embedded SQLite state store: one database file in the state dir, shared by the CP's modules.

Each module owns its tables and creates them with ``CREATE TABLE IF NOT EXISTS`` on first use. WAL
mode lets the CLI (``token create``, ``revoke``) write while ``serve`` runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vmagent.common.errors import VmagentError

DB_NAME = "state.db"


class StoreWriteError(VmagentError):
    """A write to the state store failed (e.g. ``database or disk is full``); SQLite rolled it back, so
    nothing of it is stored. The message names the database file, the reason and what was not stored."""


def db_path(conn: sqlite3.Connection) -> str:
    """The database file of ``conn``, for error messages."""
    rows = conn.execute("PRAGMA database_list").fetchall()
    return str(rows[0][2]) if rows else "?"


def open_db(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the state database; safe to call from several threads and processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / DB_NAME
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    path.chmod(0o600)
    return conn


class StateDb:
    """A connection shared by the server's threads: one statement at a time, results fetched eagerly."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        import threading

        self._conn = conn
        self._lock = threading.Lock()
        self.path = db_path(conn)  # the database file, for error messages

    @classmethod
    def open(cls, state_dir: Path) -> StateDb:
        return cls(open_db(state_dir))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> tuple[list[tuple[object, ...]], int]:
        """Run one statement; return (rows, rowcount)."""
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.fetchall(), cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
