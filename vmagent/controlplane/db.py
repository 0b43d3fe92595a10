"""The embedded SQLite state store: one database file in the state dir, shared by the CP's modules.

Each module owns its tables and creates them with ``CREATE TABLE IF NOT EXISTS`` on first use. WAL
mode lets the CLI (``token create``, ``revoke``) write while ``serve`` runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DB_NAME = "state.db"


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
        rows = conn.execute("PRAGMA database_list").fetchall()
        self.path = str(rows[0][2]) if rows else "?"  # the database file, for error messages

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
