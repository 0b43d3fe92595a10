"""Auto-registered WorkloadEntries: their lifecycle, health and connection times, kept in SQLite.

One record per entry name (``GROUP-ADDRESS``, see :mod:`.workload_entry`). Its life:

* **register** (a stream's Register, also after every reconnect) creates the record or refreshes all of
  it from the group template and the agent's data; the registering stream becomes its *owner*. An
  address has one live owner: while its entry is connected and in EDS, only the certificate that
  registered it (or a renewal of that certificate) may register it again (a reconnect of the same VM
  takes over from its own stale stream); another certificate is refused (:class:`AddressTaken`), so it
  can neither take the entry's name and labels nor leave it. Reports, heartbeats, disconnects and
  leaves count only from the owning stream;
* **health**: with a probe in the group a new entry starts unhealthy ("waiting for the first probe
  result"); a refresh keeps the current health, so a reconnect does not flap the endpoint;
* **heartbeats** keep it in EDS: ``heartbeat_timeout`` seconds after the last heartbeat (or
  registration) it is *expired* and leaves EDS, whether or not its stream still looks open;
* **disconnect** records the time; ``grace_period`` seconds without a connection delete the record;
* **leave** deletes it at once (the agent asked to go).

Only records made here are ever deleted: operator-written WorkloadEntries live in the config store.
After a control-plane restart, records that were connected are marked disconnected as of their last
stored heartbeat (so grace periods continue from stored times), and no entry that was in EDS expires
before ``restart_window`` seconds have passed, giving every agent time to reconnect.

:meth:`WorkloadStore.reap` does the timeouts; :class:`Reaper` calls it in a thread. Subscribers
(``subscribe``) are called, outside the store's lock, after every change of what :meth:`entries`
returns (EDS-relevant state).
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vmagent.controlplane.db import StateDb, StoreWriteError
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.registry.workload_entry import (
    WORKLOAD_ENTRY_API_VERSION,
    AutoEntry,
    EntryParts,
    Registration,
    RegistrationRefused,
    build_entry,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# (live record, new registration) -> True when the registration's certificate is the record's or a renewal of it
SameHolder = Callable[["WorkloadRecord", Registration], bool]
WAITING_FOR_PROBE = "waiting for the first probe result"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS auto_workload_entries (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    grp TEXT NOT NULL,
    address TEXT NOT NULL,
    spec TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    has_probe INTEGER NOT NULL,
    healthy INTEGER NOT NULL,
    health_message TEXT NOT NULL,
    health_changed_at REAL,
    health_reported_at REAL,
    connected INTEGER NOT NULL,
    connected_at REAL,
    disconnected_at REAL,
    last_heartbeat REAL NOT NULL,
    expired INTEGER NOT NULL,
    session TEXT NOT NULL,
    hostname TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_expiry REAL,
    registered_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""
_COLUMNS = (
    "namespace", "name", "grp", "address", "spec", "labels", "annotations", "has_probe", "healthy",
    "health_message", "health_changed_at", "health_reported_at", "connected", "connected_at",
    "disconnected_at", "last_heartbeat", "expired", "session", "hostname", "spiffe_id", "cert_serial",
    "cert_expiry", "registered_at",
)  # fmt: skip


@dataclass(frozen=True)
class LifecycleSettings:
    """Timeouts of auto-registered entries (seconds). Defaults and their reasons are in docs/registration.md."""

    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    grace_period: float = 600.0
    restart_window: float = 30.0
    # A heartbeat is written to SQLite at most this often per entry (memory always has the latest).
    heartbeat_persist_interval: float = 30.0


@dataclass
class WorkloadRecord:
    namespace: str
    name: str
    group: str
    address: str
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    has_probe: bool
    healthy: bool
    health_message: str
    health_changed_at: float | None
    health_reported_at: float | None
    connected: bool
    connected_at: float | None
    disconnected_at: float | None
    last_heartbeat: float
    expired: bool
    session: str
    hostname: str
    spiffe_id: str
    cert_serial: str
    cert_expiry: float | None
    registered_at: float
    # Not stored: no expiry before this time (restart window), last heartbeat written to the db.
    expire_not_before: float = field(default=0.0, compare=False)
    persisted_heartbeat: float = field(default=0.0, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def row(self) -> tuple[object, ...]:
        return (
            self.namespace, self.name, self.group, self.address, json.dumps(self.spec, sort_keys=True),
            json.dumps(self.labels, sort_keys=True), json.dumps(self.annotations, sort_keys=True),
            int(self.has_probe), int(self.healthy), self.health_message, self.health_changed_at,
            self.health_reported_at, int(self.connected), self.connected_at, self.disconnected_at,
            self.last_heartbeat, int(self.expired), self.session, self.hostname, self.spiffe_id,
            self.cert_serial, self.cert_expiry, self.registered_at,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkloadRecord:
        d = dict(zip(_COLUMNS, row, strict=True))
        return cls(
            namespace=d["namespace"], name=d["name"], group=d["grp"], address=d["address"],
            spec=json.loads(d["spec"]), labels=json.loads(d["labels"]),
            annotations=json.loads(d["annotations"]), has_probe=bool(d["has_probe"]),
            healthy=bool(d["healthy"]), health_message=d["health_message"],
            health_changed_at=d["health_changed_at"], health_reported_at=d["health_reported_at"],
            connected=bool(d["connected"]), connected_at=d["connected_at"],
            disconnected_at=d["disconnected_at"], last_heartbeat=d["last_heartbeat"],
            expired=bool(d["expired"]), session=d["session"], hostname=d["hostname"],
            spiffe_id=d["spiffe_id"], cert_serial=d["cert_serial"], cert_expiry=d["cert_expiry"],
            registered_at=d["registered_at"], persisted_heartbeat=d["last_heartbeat"],
        )  # fmt: skip

    def eds_view(self) -> tuple[object, ...]:
        """What the registry sees of this record: a change here is an EDS change."""
        return (
            self.expired,
            json.dumps(self.spec, sort_keys=True),
            json.dumps(self.labels, sort_keys=True),
            json.dumps(self.annotations, sort_keys=True),
            self.has_probe,
            self.healthy,
        )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


class AddressTaken(RegistrationRefused):
    """The address belongs to a connected entry of another certificate (PERMISSION_DENIED)."""


class WorkloadStore:
    """The auto-registered entries, in memory and in ``db`` (table ``auto_workload_entries``).

    Thread-safe. ``clock`` returns wall-clock seconds since the epoch (stored times outlive restarts).
    """

    def __init__(
        self,
        db: StateDb,
        settings: LifecycleSettings | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._db = db
        self.settings = settings or LifecycleSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], WorkloadRecord] = {}
        self._by_address: dict[tuple[str, str], set[str]] = {}  # (namespace, address) -> entry names
        self._subscribers: list[Callable[[], None]] = []
        self._record_listeners: list[Callable[[], None]] = []
        db.execute(_SCHEMA)
        self._load()

    # -- setup ----------------------------------------------------------------------------------

    def _load(self) -> None:
        rows, _ = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM auto_workload_entries")  # noqa: S608
        now = self._clock()
        for row in rows:
            rec = WorkloadRecord.from_row(row)
            if rec.connected:
                # The previous process ended with this stream open: it was last seen at its last heartbeat.
                rec.connected = False
                rec.disconnected_at = rec.last_heartbeat
                self._write(rec)
            rec.expire_not_before = now + self.settings.restart_window
            self._put(rec)
        if rows:
            log.info("loaded %d auto-registered workload entries", len(rows))

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every change of :meth:`entries` (from the thread that made it)."""
        with self._lock:
            self._subscribers.append(callback)

    def on_record_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after any stored change of a record (connection times and health included,
        not only what EDS sees). It runs under the store's lock: it must only signal, e.g. set an event."""
        self._record_listeners.append(callback)

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb()
            except Exception:
                log.exception("workload store subscriber %r failed", cb)

    def _write(self, rec: WorkloadRecord) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        self._db.execute(
            f"INSERT OR REPLACE INTO auto_workload_entries ({', '.join(_COLUMNS)}) VALUES ({marks})",  # noqa: S608
            rec.row(),
        )
        rec.persisted_heartbeat = rec.last_heartbeat
        for cb in self._record_listeners:
            cb()

    def _put(self, rec: WorkloadRecord) -> None:
        self._records[rec.key] = rec
        self._by_address.setdefault((rec.namespace, rec.address), set()).add(rec.name)

    def _delete(self, rec: WorkloadRecord) -> None:
        self._db.execute(
            "DELETE FROM auto_workload_entries WHERE namespace = ? AND name = ?", (rec.namespace, rec.name)
        )
        self._records.pop(rec.key, None)
        names = self._by_address.get((rec.namespace, rec.address))
        if names is not None:
            names.discard(rec.name)
            if not names:
                del self._by_address[(rec.namespace, rec.address)]
        for cb in self._record_listeners:
            cb()

    # -- lifecycle ------------------------------------------------------------------------------

    def register(
        self,
        group: Mapping[str, Any],
        reg: Registration,
        session: str,
        same_holder: SameHolder | None = None,
    ) -> WorkloadRecord:
        """Create or refresh the entry of ``reg`` from ``group``; ``session`` becomes its owner.

        An address has one live owner: while an entry at ``reg.address`` (of any group of the namespace)
        is connected and in EDS, only the certificate that registered it or a renewal of it may register
        there again (``same_holder(record, reg)`` decides; without it, the same serial); anyone else
        gets AddressTaken. Raises RegistrationRefused for invalid data, StoreWriteError when the state
        store cannot be written (then nothing changes, in the store or in memory). Returns a copy of the
        stored record.
        """
        parts: EntryParts = build_entry(group, reg)
        now = self._clock()
        with self._lock:
            # Checked and claimed under one lock, so two registrations cannot both pass. The lineage
            # lookup (a renewed certificate) only runs when the serial differs.
            for n in self._by_address.get((reg.namespace, parts.address), ()):
                r = self._records[(reg.namespace, n)]
                if not r.connected or r.expired or r.cert_serial == reg.cert_serial:
                    continue
                if r.spiffe_id == reg.spiffe_id and same_holder is not None and same_holder(r, reg):
                    continue
                raise AddressTaken(
                    f"address {parts.address} in namespace {reg.namespace} belongs to the connected workload "
                    f"entry {r.namespace}/{r.name} of another certificate ({r.spiffe_id}, serial "
                    f"{r.cert_serial}); it is released when that workload leaves or its grace period ends"
                )
            old = self._records.get((reg.namespace, parts.name))
            rec = WorkloadRecord(
                namespace=reg.namespace,
                name=parts.name,
                group=reg.group,
                address=parts.address,
                spec=parts.spec,
                labels=parts.labels,
                annotations=parts.annotations,
                has_probe=parts.has_probe,
                healthy=not parts.has_probe,
                health_message=WAITING_FOR_PROBE if parts.has_probe else "",
                health_changed_at=now,
                health_reported_at=None,
                connected=True,
                connected_at=now,
                disconnected_at=None,
                last_heartbeat=now,
                expired=False,
                session=session,
                hostname=reg.hostname,
                spiffe_id=reg.spiffe_id,
                cert_serial=reg.cert_serial,
                cert_expiry=reg.cert_expiry,
                registered_at=now,
            )
            if old is not None:
                rec.registered_at = old.registered_at
                if old.has_probe == rec.has_probe:
                    rec.healthy = old.healthy
                    rec.health_message = old.health_message
                    rec.health_changed_at = old.health_changed_at
                    rec.health_reported_at = old.health_reported_at
                if old.session != session and old.connected:
                    log.warning(
                        "workload entry %s/%s taken over by a new connection (%s); the previous one is ignored",
                        rec.namespace,
                        rec.name,
                        reg.spiffe_id,
                    )
            try:
                self._write(rec)
            except sqlite3.Error as exc:  # rolled back by SQLite; the record is not put in memory either
                raise StoreWriteError(
                    f"the control plane cannot write its state store {self._db.path}: {exc}; the workload "
                    f"entry {rec.namespace}/{rec.name} was not registered, retry later"
                ) from exc
            self._put(rec)
            changed = old is None or old.eds_view() != rec.eds_view()
            result = replace(rec)
        log.info(
            "%s workload entry %s/%s (%s, %s)",
            "registered" if old is None else "refreshed",
            rec.namespace,
            rec.name,
            rec.address,
            reg.spiffe_id,
        )
        if changed:
            self._notify()
        return result

    def remove_where(self, revoked: Callable[[WorkloadRecord], bool], reason: str) -> list[WorkloadRecord]:
        """Delete every entry for which ``revoked(record)`` holds (e.g. its certificate was revoked)."""
        with self._lock:
            gone = [r for r in list(self._records.values()) if revoked(r)]
            for r in gone:
                self._delete(r)
        for r in gone:
            log.warning("deleted workload entry %s/%s: %s", r.namespace, r.name, reason)
        if any(not r.expired for r in gone):
            self._notify()
        return [replace(r) for r in gone]

    def at_address(self, namespace: str, address: str) -> list[WorkloadRecord]:
        """Copies of the entries of ``namespace`` at ``address`` (normalized text)."""
        with self._lock:
            names = sorted(self._by_address.get((namespace, address), ()))
            return [replace(self._records[(namespace, n)]) for n in names]

    def _owned(self, namespace: str, name: str, session: str) -> WorkloadRecord | None:
        rec = self._records.get((namespace, name))
        return rec if rec is not None and rec.session == session else None

    def report_health(self, namespace: str, name: str, session: str, healthy: bool, message: str) -> bool:
        """Record a health report of the owning stream; False when ``session`` no longer owns the entry."""
        now = self._clock()
        with self._lock:
            rec = self._owned(namespace, name, session)
            if rec is None:
                return False
            changed = rec.healthy != healthy
            if changed:
                rec.health_changed_at = now
            rec.healthy = healthy
            rec.health_message = message
            rec.health_reported_at = now
            rec.last_heartbeat = now
            came_back = rec.expired
            rec.expired = False
            self._write(rec)
        if changed:
            log.info(
                "workload %s/%s is %s: %s", namespace, name, "healthy" if healthy else "unhealthy", message
            )
        if changed or came_back:
            self._notify()
        return True

    def heartbeat(self, namespace: str, name: str, session: str) -> bool:
        """Record a heartbeat of the owning stream; False when ``session`` no longer owns the entry."""
        now = self._clock()
        with self._lock:
            rec = self._owned(namespace, name, session)
            if rec is None:
                return False
            rec.last_heartbeat = now
            came_back = rec.expired
            rec.expired = False
            if came_back or now - rec.persisted_heartbeat >= self.settings.heartbeat_persist_interval:
                try:
                    self._write(rec)
                except sqlite3.Error as exc:
                    # The heartbeat counts (kept in memory); storing it is retried at the next one, so
                    # a full disk does not end the streams of the workloads already registered.
                    log.warning(
                        "cannot store the heartbeat of %s/%s in %s: %s; retried at the next heartbeat",
                        namespace,
                        name,
                        self._db.path,
                        exc,
                    )
        if came_back:
            log.info("workload %s/%s is sending heartbeats again", namespace, name)
            self._notify()
        return True

    def disconnected(self, namespace: str, name: str, session: str) -> None:
        """The owning stream ended: record the time (the entry stays in EDS until its heartbeats time out)."""
        now = self._clock()
        with self._lock:
            rec = self._owned(namespace, name, session)
            if rec is None or not rec.connected:
                return
            rec.connected = False
            rec.disconnected_at = now
            self._write(rec)
        log.info("workload %s/%s disconnected", namespace, name)

    def leave(self, namespace: str, name: str, session: str) -> bool:
        """Delete the entry of the owning stream (graceful leave); False when not the owner."""
        with self._lock:
            rec = self._owned(namespace, name, session)
            if rec is None:
                return False
            self._delete(rec)
            was_in_eds = not rec.expired
        log.info("workload %s/%s left", namespace, name)
        if was_in_eds:
            self._notify()
        return True

    def reap(self) -> None:
        """Expire entries past their heartbeat timeout and delete those past the grace period."""
        s = self.settings
        now = self._clock()
        changed = False
        with self._lock:
            for rec in list(self._records.values()):
                if (
                    not rec.connected
                    and rec.disconnected_at is not None
                    and now - rec.disconnected_at >= s.grace_period
                ):
                    log.info(
                        "deleting auto-registered workload entry %s/%s: no connection for %.0fs",
                        rec.namespace,
                        rec.name,
                        now - rec.disconnected_at,
                    )
                    self._delete(rec)
                    changed = changed or not rec.expired
                    continue
                if (
                    not rec.expired
                    and now - rec.last_heartbeat >= s.heartbeat_timeout
                    and now >= rec.expire_not_before
                ):
                    log.warning(
                        "workload %s/%s leaves EDS: no heartbeat for %.0fs",
                        rec.namespace,
                        rec.name,
                        now - rec.last_heartbeat,
                    )
                    rec.expired = True
                    self._write(rec)
                    changed = True
        if changed:
            self._notify()

    # -- views ----------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> WorkloadRecord | None:
        with self._lock:
            rec = self._records.get((namespace, name))
            return replace(rec) if rec is not None else None

    def records(self) -> list[WorkloadRecord]:
        """Copies of every record, in EDS or not (what is published to a cluster)."""
        with self._lock:
            return sorted((replace(r) for r in self._records.values()), key=lambda r: r.key)

    def entries(self) -> list[ConfigObject]:
        """The entries in EDS as WorkloadEntry config objects (Istio's structure, with status)."""
        with self._lock:
            records = [replace(r) for r in self._records.values() if not r.expired]
        out: list[ConfigObject] = []
        for r in sorted(records, key=lambda r: r.key):
            status: dict[str, Any] = {}
            if r.has_probe:
                status["conditions"] = [
                    {
                        "type": "Healthy",
                        "status": "True" if r.healthy else "False",
                        "lastProbeTime": _iso(r.health_reported_at),
                        "lastTransitionTime": _iso(r.health_changed_at),
                        "message": r.health_message,
                    }
                ]
            out.append(
                AutoEntry(
                    kind="WorkloadEntry",
                    api_version=WORKLOAD_ENTRY_API_VERSION,
                    namespace=r.namespace,
                    name=r.name,
                    spec=r.spec,
                    labels=dict(r.labels),
                    annotations=dict(r.annotations),
                    source="registration",
                    status=status,
                )
            )
        return out

    def workloads_json(self) -> list[dict[str, Any]]:
        """Every record for the HTTP API and ``vmagent-cp workloads -o json`` (docs/registration.md)."""
        s = self.settings
        with self._lock:
            records = sorted((replace(r) for r in self._records.values()), key=lambda r: r.key)
        out = []
        for r in records:
            delete_at = (
                r.disconnected_at + s.grace_period
                if not r.connected and r.disconnected_at is not None
                else None
            )
            out.append(
                {
                    "namespace": r.namespace,
                    "group": r.group,
                    "name": r.name,
                    "address": r.address,
                    "hostname": r.hostname,
                    "spiffe_id": r.spiffe_id,
                    "labels": dict(r.labels),
                    "ports": dict(r.spec.get("ports", {})),
                    "network": r.spec.get("network", ""),
                    "locality": r.spec.get("locality", ""),
                    "weight": r.spec.get("weight", 0),
                    "health": "healthy" if r.healthy else "unhealthy",
                    "health_message": r.health_message,
                    "health_changed_at": _iso(r.health_changed_at),
                    "probe": r.has_probe,
                    "in_eds": not r.expired,
                    "connected": r.connected,
                    "connected_at": _iso(r.connected_at),
                    "disconnected_at": _iso(r.disconnected_at),
                    "last_heartbeat_at": _iso(r.last_heartbeat),
                    "registered_at": _iso(r.registered_at),
                    "delete_at": _iso(delete_at),
                    "cert_serial": r.cert_serial,
                    "cert_expiry": _iso(r.cert_expiry),
                }
            )
        return out


class Reaper:
    """A thread calling ``store.reap()`` every ``interval`` seconds (default: a quarter of the timeout, ≤ 1 s)."""

    def __init__(self, store: WorkloadStore, interval: float | None = None) -> None:
        self._store = store
        self._interval = interval or min(1.0, store.settings.heartbeat_timeout / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workload-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.reap()
            except Exception:
                log.exception("workload reaper failed")
