"""The VM's workload identity on disk: private key (0600), certificate chain and mesh root.

One ``IdentityStore`` is shared by rotation, the SDS server and the control-plane channel: they read
``current()`` and ``subscribe()`` to hear about a rotated certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vmagent.agent.paths import AgentPaths
from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write, ensure_dir
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
        return p.key_file.exists() and p.chain_file.exists() and p.root_file.exists()

    def load(self) -> Identity:
        """Read the identity from disk, finishing a replacement that a crash interrupted."""
        p = self._paths
        self._finish_pending()
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
        """Replace the identity on disk. The key is written 0600 before anything points at it."""
        if not ident.key_matches():
            raise VmagentError("refusing to store a certificate that does not match its key")
        p = self._paths
        ensure_dir(p.state_dir, 0o700)
        # Stage both halves, then rename: a crash between the renames is repaired by _finish_pending.
        atomic_write(self._pending(p.key_file), ident.key_pem, 0o600)
        atomic_write(self._pending(p.chain_file), ident.chain_pem, 0o644)
        atomic_write(p.root_file, ident.root_pem, 0o644)
        os.replace(self._pending(p.key_file), p.key_file)
        os.replace(self._pending(p.chain_file), p.chain_file)
        with self._lock:
            self._current = ident
            subscribers = list(self._subscribers)
        for cb in subscribers:
            cb(ident)

    @staticmethod
    def _pending(path: Path) -> Path:
        return path.with_name(path.name + ".next")

    def _finish_pending(self) -> None:
        p = self._paths
        key_next, chain_next = self._pending(p.key_file), self._pending(p.chain_file)
        if os.path.exists(chain_next):
            if os.path.exists(key_next):
                os.replace(key_next, p.key_file)
            os.replace(chain_next, p.chain_file)
        elif os.path.exists(key_next):
            # The chain was never staged: the old pair is still consistent, drop the orphan key.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key_next)
