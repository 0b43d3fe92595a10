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
