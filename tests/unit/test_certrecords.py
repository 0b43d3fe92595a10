"""Issued certificates and revocations in the SQLite state store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness import wait_for
from vmagent.agent.join import make_csr
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId, generate_key
from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority
from vmagent.controlplane.ca.certrecords import CertRecords, serial_hex
from vmagent.controlplane.db import DB_NAME, StateDb

WEB = SpiffeId("cluster.local", "demo", "web")
DB = SpiffeId("cluster.local", "demo", "db")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ca = CertificateAuthority.load_or_create(path, CaSettings())
        self.db: StateDb | None = None

        self.records: CertRecords | None = None

    def open(self, **kwargs: float | bool) -> CertRecords:
        self.close()
        self.db = StateDb.open(self.path)
        self.records = CertRecords(self.db, **kwargs)  # type: ignore[arg-type]
        return self.records

    def close(self) -> None:
        if self.records is not None:
            self.records.close()
            self.records = None
        if self.db is not None:
            self.db.close()
            self.db = None

    def leaf(self, identity: SpiffeId) -> x509.Certificate:
        return self.ca.sign_workload_csr(make_csr(generate_key()), identity)[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    yield s
    s.close()


def test_issued_certificates_are_listed_with_their_history(store: Store) -> None:
    records = store.open()
    first, second = store.leaf(WEB), store.leaf(WEB)
    records.record(first, WEB, via="join", hostname="vm-1")
    records.record(second, WEB, via="renew", previous_serial=first.serial_number)
    records.record(store.leaf(DB), DB, via="join", hostname="vm-2")
    issued = records.issued(WEB.uri)
    assert [(c.serial, c.via, c.hostname, c.previous_serial) for c in issued] == [
        (serial_hex(first.serial_number), "join", "vm-1", None),
        (serial_hex(second.serial_number), "renew", "", serial_hex(first.serial_number)),
    ]
    assert issued[1].not_after == second.not_valid_after_utc.timestamp()
    assert issued[1].as_json()["identity"] == WEB.uri
    assert len(records.issued()) == 3


def test_revoking_a_serial_refuses_that_certificate_only(store: Store) -> None:
    records = store.open()
    revoked, other = store.leaf(WEB), store.leaf(WEB)
    assert not records.is_revoked(WEB, revoked.serial_number)
    records.revoke_serial(serial_hex(revoked.serial_number), reason="vm-1 decommissioned")
    assert records.is_revoked(WEB, revoked.serial_number)
    assert not records.is_revoked(WEB, other.serial_number)
    assert records.revocations() == [
        {
            "kind": "serial",
            "value": serial_hex(revoked.serial_number),
            "revoked_at": records.revocations()[0]["revoked_at"],
            "reason": "vm-1 decommissioned",
        }
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda s: f"{s:X}",  # upper case
        lambda s: f"0x{s:x}",
        lambda s: ":".join(f"{s:040x}"[i : i + 2] for i in range(0, 40, 2)),  # openssl style, zero-padded
    ],
    ids=["upper", "0x", "colons-and-leading-zeros"],
)
def test_a_serial_is_recognised_however_it_is_written(store: Store, spelling: object) -> None:
    records = store.open()
    leaf = store.leaf(WEB)
    records.revoke_serial(spelling(leaf.serial_number))  # type: ignore[operator]
    assert records.is_revoked(WEB, leaf.serial_number)


def test_a_serial_that_is_not_hexadecimal_is_refused(store: Store) -> None:
    records = store.open()
    with pytest.raises(VmagentError, match="'zz-top' is not a hexadecimal certificate serial"):
        records.revoke_serial("zz-top")
    assert records.revocations() == []


def test_revoking_an_identity_refuses_every_certificate_of_it(store: Store) -> None:
    records = store.open()
    records.revoke_identity(WEB, reason="compromised")
    assert records.is_revoked(WEB, store.leaf(WEB).serial_number)
    assert records.is_revoked(WEB, store.leaf(WEB).serial_number)
    assert not records.is_revoked(DB, store.leaf(DB).serial_number)
    # Same namespace and account in another trust domain is another identity.
    assert not records.is_revoked(SpiffeId("other.domain", "demo", "web"), 1)


def test_revocations_survive_reopening_the_database(store: Store) -> None:
    records = store.open()
    leaf = store.leaf(DB)
    records.revoke_identity(WEB)
    records.revoke_serial(serial_hex(leaf.serial_number))
    records.revoke_identity(WEB)  # twice: still one entry
    store.close()

    reopened = store.open()
    assert reopened.is_revoked(WEB, 12345)
    assert reopened.is_revoked(DB, leaf.serial_number)
    assert not reopened.is_revoked(DB, leaf.serial_number + 1)
    assert sorted((r["kind"], r["value"]) for r in reopened.revocations()) == [
        ("identity", WEB.uri),
        ("serial", serial_hex(leaf.serial_number)),
    ]


def test_a_revocation_written_by_another_connection_is_seen_at_once(store: Store) -> None:
    # `vmagent-cp revoke` writes through its own connection while `serve` keeps its open.
    serving = store.open()
    cli_db = StateDb.open(store.path)
    try:
        CertRecords(cli_db).revoke_identity(DB)
    finally:
        cli_db.close()
    assert serving.is_revoked(DB, 1)


# -- write-behind of issued certificates and the revocation snapshot ---------------------------------


def _serials_seen_by_another_connection(store: Store) -> set[str]:
    conn = sqlite3.connect(store.path / DB_NAME)
    try:
        return {r[0] for r in conn.execute("SELECT serial FROM issued_certs")}
    finally:
        conn.close()


def test_issued_sees_every_certificate_recorded_before_it_from_any_thread(store: Store) -> None:
    # A long batch delay: issued() must not wait for it, and must not miss a row queued before it.
    records = store.open(batch_delay=30.0)
    leaves = [store.leaf(WEB) for _ in range(4)]
    threads = [
        threading.Thread(target=lambda leaf=leaf: records.record(leaf, WEB, via="renew")) for leaf in leaves
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {c.serial for c in records.issued(WEB.uri)} == {serial_hex(c.serial_number) for c in leaves}
    assert _serials_seen_by_another_connection(store) == {serial_hex(c.serial_number) for c in leaves}


def test_rows_still_queued_are_written_by_close_and_survive_reopening(store: Store) -> None:
    records = store.open(batch_delay=30.0)
    leaf = store.leaf(DB)
    records.record(leaf, DB, via="join", hostname="vm-9")
    store.close()  # a clean stop: CertRecords.close() then the database
    assert _serials_seen_by_another_connection(store) == {serial_hex(leaf.serial_number)}
    reopened = store.open()
    assert [(c.serial, c.hostname) for c in reopened.issued()] == [(serial_hex(leaf.serial_number), "vm-9")]


def test_written_behind_rows_reach_the_database_without_anyone_asking(store: Store) -> None:
    records = store.open(batch_delay=0.05)
    leaf = store.leaf(WEB)
    records.record(leaf, WEB, via="renew", previous_serial=7)
    wait_for(
        lambda: serial_hex(leaf.serial_number) in _serials_seen_by_another_connection(store),
        timeout=10,
        what="the queued row to be committed by the background writer",
    )
    assert records.issued()[0].previous_serial == "7"


def test_without_write_behind_a_record_is_committed_before_record_returns(store: Store) -> None:
    records = store.open(write_behind=False)
    leaf = store.leaf(WEB)
    records.record(leaf, WEB, via="join")
    assert _serials_seen_by_another_connection(store) == {serial_hex(leaf.serial_number)}


def test_the_cached_revocation_check_sees_its_own_revocations_at_once(store: Store) -> None:
    records = store.open()
    leaf = store.leaf(WEB)
    assert not records.is_revoked_cached(WEB, leaf.serial_number)
    records.revoke_serial(f"0x{leaf.serial_number:X}")
    assert records.is_revoked_cached(WEB, leaf.serial_number)
    assert not records.is_revoked_cached(WEB, leaf.serial_number + 1)
    records.revoke_identity(DB)
    assert records.is_revoked_cached(DB, 1)
    assert not records.is_revoked_cached(SpiffeId("other.domain", "demo", "db"), 1)


def test_the_cached_revocation_check_sees_a_cli_revocation_within_the_refresh_interval(store: Store) -> None:
    serving = store.open(refresh_interval=0.1)
    assert not serving.is_revoked_cached(DB, 1)  # loads the snapshot and starts refreshing it
    cli_db = StateDb.open(store.path)
    try:
        cli = CertRecords(cli_db)
        cli.revoke_identity(DB)
        cli.revoke_serial("abc")
    finally:
        cli_db.close()
    wait_for(lambda: serving.is_revoked_cached(DB, 1), timeout=10, what="the identity revocation")
    assert serving.is_revoked_cached(WEB, 0xABC)
    assert not serving.is_revoked_cached(WEB, 0xABD)


def test_a_snapshot_loaded_after_revocations_has_them(store: Store) -> None:
    first = store.open()
    first.revoke_identity(WEB)
    store.close()
    assert store.open().is_revoked_cached(WEB, 42)


def test_a_revoked_serial_revokes_its_renewals_at_any_depth_also_those_recorded_later(store: Store) -> None:
    serving = store.open(refresh_interval=0.1)
    s1, s2, s3, other = (store.leaf(WEB) for _ in range(4))
    serving.record(s1, WEB, via="join")
    serving.record(s2, WEB, via="renew", previous_serial=s1.serial_number)
    serving.record(other, WEB, via="join")
    assert not serving.is_revoked_cached(WEB, s2.serial_number)  # loads the snapshot
    cli_db = StateDb.open(store.path)  # `vmagent-cp revoke` in another process
    try:
        CertRecords(cli_db).revoke_serial(serial_hex(s1.serial_number))
    finally:
        cli_db.close()
    wait_for(lambda: serving.is_revoked_cached(WEB, s2.serial_number), 10, what="the child's revocation")
    assert serving.is_revoked(WEB, s2.serial_number)
    # A renewal that raced the revocation (issued from s2 afterwards) is revoked as well.
    serving.record(s3, WEB, via="renew", previous_serial=s2.serial_number)
    assert serving.is_revoked_cached(WEB, s3.serial_number) and serving.is_revoked(WEB, s3.serial_number)
    assert serving.lineage(s3.serial_number) == [serial_hex(s.serial_number) for s in (s3, s2, s1)]
    assert serving.descends_from(s3.serial_number, serial_hex(s1.serial_number))
    assert not serving.descends_from(s1.serial_number, serial_hex(s3.serial_number))
    # Unrelated certificates of the same identity are not.
    assert not serving.is_revoked(WEB, other.serial_number)
    assert not serving.is_revoked_cached(WEB, other.serial_number)
