"""Issued certificates and revocations, in the SQLite state store.

A revocation names either one certificate (by serial: one VM) or a whole identity (every VM of a
WorkloadGroup's service account). Renewals and xDS streams from a revoked certificate are refused, and
revocations survive restarts.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

from cryptography import x509

from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.db import StateDb

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
    """CREATE TABLE IF NOT EXISTS revocations (
        kind TEXT NOT NULL CHECK (kind IN ('serial', 'identity')),
        value TEXT NOT NULL,
        revoked_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (kind, value)
    )""",
]


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
    def __init__(self, db: StateDb) -> None:
        self._db = db
        for stmt in _SCHEMA:
            db.execute(stmt)

    def record(
        self,
        leaf: x509.Certificate,
        identity: SpiffeId,
        via: str,
        hostname: str = "",
        previous_serial: int | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO issued_certs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                serial_hex(leaf.serial_number),
                identity.uri,
                hostname,
                via,
                time.time(),
                leaf.not_valid_after_utc.timestamp(),
                serial_hex(previous_serial) if previous_serial is not None else None,
            ),
        )

    def revoke_serial(self, serial: str, reason: str = "") -> None:
        serial = serial.lower().removeprefix("0x").replace(":", "")
        try:
            int(serial, 16)
        except ValueError as exc:
            raise VmagentError(f"{serial!r} is not a hexadecimal certificate serial") from exc
        self._db.execute(
            "INSERT OR IGNORE INTO revocations VALUES ('serial', ?, ?, ?)",
            (serial.lstrip("0") or "0", time.time(), reason),
        )

    def revoke_identity(self, identity: SpiffeId, reason: str = "") -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO revocations VALUES ('identity', ?, ?, ?)",
            (identity.uri, time.time(), reason),
        )

    def is_revoked(self, identity: SpiffeId, serial: int) -> bool:
        rows, _ = self._db.execute(
            "SELECT 1 FROM revocations WHERE (kind = 'identity' AND value = ?) OR (kind = 'serial' AND value = ?)",
            (identity.uri, serial_hex(serial)),
        )
        return bool(rows)

    def revocations(self) -> list[dict[str, object]]:
        rows, _ = self._db.execute(
            "SELECT kind, value, revoked_at, reason FROM revocations ORDER BY revoked_at"
        )
        return [{"kind": k, "value": v, "revoked_at": _iso(float(t)), "reason": r} for k, v, t, r in rows]  # type: ignore[arg-type]

    def issued(self, identity: str | None = None) -> list[IssuedCert]:
        q = "SELECT * FROM issued_certs"
        args: tuple[str, ...] = ()
        if identity:
            q, args = q + " WHERE spiffe_id = ?", (identity,)
        rows, _ = self._db.execute(q + " ORDER BY issued_at", args)
        return [IssuedCert(*r) for r in rows]  # type: ignore[arg-type]


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")
