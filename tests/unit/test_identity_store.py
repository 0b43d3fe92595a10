"""The agent's identity on disk: save/load, file modes, crash repair, mismatched keys refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.join import make_csr
from vmagent.agent.paths import AgentPaths
from vmagent.agent.state_commit import JOURNAL_NAME, LOCK_NAME, recover
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId, chain_pem, generate_key, key_pem
from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority

WEB = SpiffeId("cluster.local", "demo", "web")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"), CaSettings())


def _identity(ca: CertificateAuthority, algorithm: str = "ec-p256") -> Identity:
    key = generate_key(algorithm)
    chain = ca.sign_workload_csr(make_csr(key), WEB)
    return Identity(key_pem(key), chain_pem(chain), ca.root_pem)


@pytest.fixture
def paths(tmp_path: Path) -> AgentPaths:
    return AgentPaths(tmp_path / "etc", tmp_path / "state", tmp_path / "run")


def _files(paths: AgentPaths) -> set[str]:
    """The state dir's files, less the commit lock (``state_commit.LOCK_NAME``)."""
    if not paths.state_dir.exists():
        return set()
    return {p.name for p in paths.state_dir.iterdir()} - {LOCK_NAME}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_identity_loads_back_with_a_private_key_file(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    ident = _identity(ca)
    old_umask = os.umask(0)  # even a permissive umask must not expose the key
    try:
        IdentityStore(paths).save(ident)
    finally:
        os.umask(old_umask)
    assert _mode(paths.key_file) == 0o600
    assert _mode(paths.state_dir) == 0o700
    assert _mode(paths.chain_file) == 0o644
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}

    loaded = IdentityStore(paths).load()
    assert loaded == ident
    assert loaded.spiffe_id == WEB
    assert loaded.serial == ident.leaf.serial_number
    assert loaded.not_after == ident.leaf.not_valid_after_utc
    assert not loaded.expired()


def test_an_rsa_identity_round_trips(ca: CertificateAuthority, paths: AgentPaths) -> None:
    ident = _identity(ca, "rsa-2048")
    IdentityStore(paths).save(ident)
    assert IdentityStore(paths).load() == ident


def test_save_replaces_the_identity_and_tells_subscribers(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    store = IdentityStore(paths)
    first, second = _identity(ca), _identity(ca)
    store.save(first)
    heard: list[int] = []
    store.subscribe(lambda ident: heard.append(ident.serial))
    store.save(second)
    assert heard == [second.serial]
    assert store.current() == second
    assert IdentityStore(paths).load() == second
    assert _mode(paths.key_file) == 0o600


def test_a_certificate_for_another_key_is_refused_and_nothing_is_written(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    a, b = _identity(ca), _identity(ca)
    mixed = Identity(a.key_pem, b.chain_pem, ca.root_pem)
    with pytest.raises(VmagentError, match="does not match its key"):
        IdentityStore(paths).save(mixed)
    assert _files(paths) == set()

    store = IdentityStore(paths)
    store.save(a)
    with pytest.raises(VmagentError, match="does not match its key"):
        store.save(mixed)
    assert IdentityStore(paths).load() == a
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}


def test_mismatched_files_on_disk_are_refused(ca: CertificateAuthority, paths: AgentPaths) -> None:
    a, b = _identity(ca), _identity(ca)
    IdentityStore(paths).save(a)
    paths.chain_file.write_bytes(b.chain_pem)  # e.g. an operator copied the wrong file
    with pytest.raises(VmagentError, match=r"key\.pem does not match the certificate in .*cert-chain\.pem"):
        IdentityStore(paths).load()


def test_a_missing_identity_says_to_join_first(paths: AgentPaths) -> None:
    store = IdentityStore(paths)
    assert not store.exists()
    with pytest.raises(VmagentError, match=r"no workload identity .* run `vmagent join` first"):
        store.load()


# -- a crash in the middle of save -------------------------------------------------------------------
# save() writes key.pem.next, cert-chain.pem.next and root-cert.pem.next, then the journal (the commit
# point), then renames each and removes the journal. load() ends with the old identity when the crash came
# before the journal and with the new one after it, whichever renames were done.


def _stage(paths: AgentPaths, ident: Identity) -> list[tuple[str, str]]:
    renames = []
    for final, data in ((paths.key_file, ident.key_pem), (paths.chain_file, ident.chain_pem)):
        nxt = final.with_name(final.name + ".next")
        nxt.write_bytes(data)
        os.chmod(nxt, 0o600)
        renames.append((str(nxt), str(final)))
    return renames


def _journal(paths: AgentPaths, renames: list[tuple[str, str]]) -> None:
    (paths.state_dir / JOURNAL_NAME).write_text(json.dumps({"renames": renames}))


def test_crash_after_the_commit_point_and_one_rename_is_rolled_forward(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    renames = _stage(paths, new)
    _journal(paths, renames)
    os.replace(*renames[0])  # the key renamed, then the crash
    assert paths.key_file.read_bytes() == new.key_pem and paths.chain_file.read_bytes() == old.chain_pem

    loaded = IdentityStore(paths).load()
    assert loaded == new
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}
    assert _mode(paths.key_file) == 0o600


def test_crash_after_the_commit_point_before_any_rename_installs_the_new_identity(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _journal(paths, _stage(paths, new))
    assert IdentityStore(paths).load() == new
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}


def test_crash_before_the_commit_point_keeps_the_old_identity(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _stage(paths, new)  # both staged, but no journal: not committed
    (paths.state_dir / ".key.pem.next.abc123").write_bytes(b"half a key")  # an interrupted temp file
    assert IdentityStore(paths).load() == old
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}


def test_recovery_is_idempotent_and_reports_what_it_did(ca: CertificateAuthority, paths: AgentPaths) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _journal(paths, _stage(paths, new))
    assert recover(paths) == "rolled forward"
    assert recover(paths) == ""
    assert IdentityStore(paths).load() == new
