"""The agent's identity on disk: save/load, file modes, crash repair, mismatched keys refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.join import make_csr
from vmagent.agent.paths import AgentPaths
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
    return {p.name for p in paths.state_dir.iterdir()} if paths.state_dir.exists() else set()


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
# save() writes key.pem.next and cert-chain.pem.next, then renames the key, then the chain. load()
# must end with a matching pair whichever step the crash interrupted.


def _stage(paths: AgentPaths, ident: Identity, key: bool = True, chain: bool = True) -> None:
    if key:
        paths.key_file.with_name("key.pem.next").write_bytes(ident.key_pem)
        os.chmod(paths.key_file.with_name("key.pem.next"), 0o600)
    if chain:
        paths.chain_file.with_name("cert-chain.pem.next").write_bytes(ident.chain_pem)


def test_crash_after_the_key_rename_is_completed_on_load(ca: CertificateAuthority, paths: AgentPaths) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _stage(paths, new)
    os.replace(paths.key_file.with_name("key.pem.next"), paths.key_file)  # then the crash
    assert paths.key_file.read_bytes() == new.key_pem and paths.chain_file.read_bytes() == old.chain_pem

    loaded = IdentityStore(paths).load()
    assert loaded == new
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}
    assert _mode(paths.key_file) == 0o600


def test_crash_before_any_rename_installs_the_staged_pair(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _stage(paths, new)
    assert IdentityStore(paths).load() == new
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}


def test_crash_before_the_chain_was_staged_keeps_the_old_pair(
    ca: CertificateAuthority, paths: AgentPaths
) -> None:
    old, new = _identity(ca), _identity(ca)
    IdentityStore(paths).save(old)
    _stage(paths, new, chain=False)
    assert IdentityStore(paths).load() == old
    assert _files(paths) == {"key.pem", "cert-chain.pem", "root-cert.pem"}
