"""The control plane process: CA, tokens, certificate services and (as they land) registry and xDS."""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmagent.api import bootstrap_pb2_grpc, istio_ca_pb2_grpc
from vmagent.common.constants import CP_GRPC_PORT, CP_HTTP_PORT, CP_MTLS_PORT, DEFAULT_TRUST_DOMAIN
from vmagent.common.fsutil import atomic_write, ensure_dir
from vmagent.controlplane.ca import CaSettings, CertificateAuthority
from vmagent.controlplane.certrecords import CertRecords
from vmagent.controlplane.certservice import (
    BootstrapServicer,
    CertificateIssuer,
    GroupLookup,
    IstioCertificateServicer,
    MeshInfo,
)
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.groups import group_lookup_from_dir
from vmagent.controlplane.grpc_server import GrpcServer, server_credentials
from vmagent.controlplane.tokens import TokenAuthority

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/vmagent-cp")
MESH_ROOT_FILE = "mesh-root.pem"


@dataclass
class ServeOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    config_dir: Path | None = None
    listen: str = f"0.0.0.0:{CP_GRPC_PORT}"
    mtls_listen: str = f"0.0.0.0:{CP_MTLS_PORT}"
    http_listen: str = f"127.0.0.1:{CP_HTTP_PORT}"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ca_cert: Path | None = None
    ca_key: Path | None = None
    cert_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    max_cert_ttl: datetime.timedelta = datetime.timedelta(days=7)
    server_names: list[str] = field(default_factory=list)
    mesh_config: dict[str, Any] = field(default_factory=dict)


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
        self.db.close()


class ControlPlane:
    def __init__(self, opts: ServeOptions, groups: GroupLookup | None = None) -> None:
        self.opts = opts
        settings = CaSettings(opts.trust_domain, opts.cert_ttl, opts.max_cert_ttl)
        self.store = StateStore(opts.state_dir, settings, opts.ca_cert, opts.ca_key)
        self.groups = groups or group_lookup_from_dir(opts.config_dir)
        self.grpc = GrpcServer()
        self.grpc.bind(opts.listen, opts.mtls_listen, server_credentials(self.store.ca, opts.server_names))
        mesh = MeshInfo(opts.trust_domain, self.grpc.mtls_port, opts.mesh_config)
        self.issuer = CertificateIssuer(
            self.store.ca, self.store.tokens, self.store.records, self.groups, mesh
        )
        self.grpc.add(
            lambda s: istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
                IstioCertificateServicer(self.issuer), s
            )
        )
        self.grpc.add(
            lambda s: bootstrap_pb2_grpc.add_BootstrapServicer_to_server(BootstrapServicer(self.issuer), s)
        )
        self._stopped = threading.Event()

    @property
    def ca_hash(self) -> str:
        return self.store.ca.root_hash

    def start(self) -> None:
        self.grpc.start()
        log.info("control plane ready; mesh root %s", self.ca_hash)

    def stop(self) -> None:
        self.grpc.stop()
        self.store.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()
