"""The VM's workload identity on disk: private key (0600), certificate chain and mesh root.

One ``IdentityStore`` is shared by rotation, the SDS server and the control-plane channel: they read
``current()`` and ``subscribe()`` to hear about a rotated certificate.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vmagent.agent.paths import AgentPaths
from vmagent.agent.state_commit import commit, recover
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import SpiffeId, load_chain, load_key, spiffe_ids

_PUB = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Identity:
    key_pem: bytes
    chain_pem: bytes
    root_pem: bytes

    @cached_property
    def chain(self) -> list[x509.Certificate]:
        return load_chain(self.chain_pem)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @cached_property
    def root(self) -> x509.Certificate:
        return load_chain(self.root_pem)[0]

    @property
    def spiffe_id(self) -> SpiffeId:
        ids = spiffe_ids(self.leaf)
        if not ids:
            raise VmagentError("the workload certificate carries no SPIFFE id")
        return SpiffeId.parse(ids[0])

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def expired(self, now: datetime.datetime | None = None) -> bool:
        return (now or datetime.datetime.now(datetime.UTC)) >= self.not_after

    def key_matches(self) -> bool:
        key = load_key(self.key_pem)
        return key.public_key().public_bytes(*_PUB) == self.leaf.public_key().public_bytes(*_PUB)


class IdentityStore:
    """Reads and atomically replaces the identity files under the agent's state dir."""

    def __init__(self, paths: AgentPaths) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._current: Identity | None = None
        self._subscribers: list[Callable[[Identity], None]] = []

    @property
    def paths(self) -> AgentPaths:
        return self._paths

    def exists(self) -> bool:
        p = self._paths
        try:
            recover(p)
        except PermissionError:
            pass
        return p.key_file.exists() and p.chain_file.exists() and p.root_file.exists()

    def load(self) -> Identity:
        """Read the identity from disk, finishing a replacement that a crash interrupted."""
        p = self._paths
        try:
            recover(p)  # finish or undo a replacement a crash interrupted
        except PermissionError:
            pass  # a reader without write access (e.g. `vmagent status` as a user) reads what is there
        try:
            ident = Identity(p.key_file.read_bytes(), p.chain_file.read_bytes(), p.root_file.read_bytes())
        except FileNotFoundError as exc:
            raise VmagentError(
                f"no workload identity in {p.state_dir} (missing {exc.filename}); run `vmagent join` first"
            ) from exc
        if not ident.key_matches():
            raise VmagentError(f"{p.key_file} does not match the certificate in {p.chain_file}")
        with self._lock:
            self._current = ident
        return ident

    def current(self) -> Identity:
        with self._lock:
            cur = self._current
        return cur if cur is not None else self.load()

    def subscribe(self, callback: Callable[[Identity], None]) -> None:
        """Call ``callback(identity)`` after every ``save``."""
        with self._lock:
            self._subscribers.append(callback)

    def save(self, ident: Identity) -> None:
        """Replace key, chain and root on disk as one step (``state_commit``); the key is written 0600.

        A write that fails (e.g. the disk is full) raises ``VmagentError`` naming the file and leaves the
        current identity in force, on disk and in memory.
        """
        if not ident.key_matches():
            raise VmagentError("refusing to store a certificate that does not match its key")
        commit(self._paths, identity_files(self._paths, ident))
        with self._lock:
            self._current = ident
            subscribers = list(self._subscribers)
        for cb in subscribers:
            cb(ident)


def identity_files(paths: AgentPaths, ident: Identity) -> list[tuple[Path, bytes | str, int]]:
    """The files of an identity, for ``state_commit.commit``."""
    return [
        (paths.key_file, ident.key_pem, 0o600),
        (paths.chain_file, ident.chain_pem, 0o644),
        (paths.root_file, ident.root_pem, 0o644),
    ]
