"""The control plane's state dir: the CA, tokens and records stored in it, and the config sources.

Shared by ``serve`` (:mod:`.app`), the CA workers (:mod:`.ca.workers`) and the CLI's ``token``, so none
of them imports the composition root. The default path is in :mod:`.paths`.
"""

from __future__ import annotations

from pathlib import Path

from vmagent.common.fsutil import atomic_write, ensure_dir
from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority
from vmagent.controlplane.ca.certrecords import CertRecords
from vmagent.controlplane.ca.tokens import TokenAuthority
from vmagent.controlplane.config import ConfigDirectory, ConfigStore, StoreSource
from vmagent.controlplane.config.snapshot import ConfigSource
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.paths import MESH_ROOT_FILE


class StateStore:
    """The CA, token authority and certificate records of one state dir (shared by `serve` and the CLI)."""

    def __init__(
        self, state_dir: Path, settings: CaSettings, ca_cert: Path | None = None, ca_key: Path | None = None
    ) -> None:
        ensure_dir(state_dir, 0o700)
        self.state_dir = state_dir
        self.ca = CertificateAuthority.load_or_create(state_dir, settings, ca_cert, ca_key)
        atomic_write(state_dir / MESH_ROOT_FILE, self.ca.root_pem, 0o644)
        self.db = StateDb.open(state_dir)
        self.tokens = TokenAuthority.open(state_dir, self.db)
        self.records = CertRecords(self.db)

    def close(self) -> None:
        self.records.close()  # commits the issued-certificate rows still queued
        self.db.close()


def config_sources(
    config_dir: Path | None, state_dir: Path, cluster: ConfigSource | None = None
) -> list[ConfigSource]:
    """In precedence order: the watched directory, the cluster's Istio objects, what `vmagent-cp
    apply` stored. On a clash (same kind, namespace and name) the first wins; the other is reported."""
    sources: list[ConfigSource] = []
    if config_dir is not None:
        sources.append(ConfigDirectory(config_dir))
    if cluster is not None:
        sources.append(cluster)
    sources.append(StoreSource(ConfigStore.open(state_dir)))
    return sources
