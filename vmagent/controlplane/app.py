"""The control plane process: CA, tokens, config, registry, xDS and the HTTP API."""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from vmagent.api import bootstrap_pb2_grpc, istio_ca_pb2_grpc
from vmagent.common.constants import CP_GRPC_PORT, CP_HTTP_PORT, CP_MTLS_PORT, DEFAULT_TRUST_DOMAIN
from vmagent.common.fsutil import atomic_write, ensure_dir
from vmagent.controlplane.ca import CaSettings, CertificateAuthority
from vmagent.controlplane.caworkers import CaWorkers, WorkerSpec
from vmagent.controlplane.certrecords import CertRecords
from vmagent.controlplane.certservice import (
    AsyncIstioCertificateServicer,
    BootstrapServicer,
    CertificateIssuer,
    IstioCertificateServicer,
    MeshInfo,
)
from vmagent.controlplane.config import ConfigDirectory, ConfigSet, ConfigStore, StoreSource
from vmagent.controlplane.config.snapshot import ConfigSource
from vmagent.controlplane.db import StateDb
from vmagent.controlplane.grpc_limits import join_port_options, mtls_port_options
from vmagent.controlplane.grpc_server import ThreadedServer, server_credentials
from vmagent.controlplane.mesh import MeshController, Translate
from vmagent.controlplane.metrics import PROMETHEUS_CONTENT_TYPE, ControlPlaneMetrics
from vmagent.controlplane.registration import RegistrationServicer
from vmagent.controlplane.registry import ConfigRegistry, workload_group_document
from vmagent.controlplane.revocation_watch import RevocationWatcher
from vmagent.controlplane.snapshots import Translator, mesh_options
from vmagent.controlplane.tokens import TokenAuthority
from vmagent.controlplane.web import HttpApi
from vmagent.controlplane.workload_store import LifecycleSettings, Reaper, WorkloadStore
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.push import PushScheduler
from vmagent.controlplane.xds.runner import DEFAULT_OPTIONS, AioServerThread
from vmagent.controlplane.xds.server import AdsServer

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
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    ca_workers: int = 0  # extra processes serving the join port (see caworkers.py)


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


def config_sources(config_dir: Path | None, state_dir: Path) -> list[ConfigSource]:
    """The watched directory (wins on a clash) and what `vmagent-cp apply` stored."""
    sources: list[ConfigSource] = []
    if config_dir is not None:
        sources.append(ConfigDirectory(config_dir))
    sources.append(StoreSource(ConfigStore.open(state_dir)))
    return sources


class ControlPlane:
    def __init__(self, opts: ServeOptions, translate: Translate | None = None) -> None:
        self.opts = opts
        settings = CaSettings(opts.trust_domain, opts.cert_ttl, opts.max_cert_ttl)
        self.store = StateStore(opts.state_dir, settings, opts.ca_cert, opts.ca_key)
        self.configs = ConfigSet(config_sources(opts.config_dir, opts.state_dir))
        self.workloads = WorkloadStore(self.store.db, opts.lifecycle)
        self.registry = ConfigRegistry(
            self.configs, opts.trust_domain, extra_workload_entries=self.workloads.entries
        )
        self.workloads.subscribe(self.registry.notify_changed)
        self.reaper = Reaper(self.workloads)
        self.cache = SnapshotCache()
        self.translator = Translator(self.configs, mesh_options(opts.trust_domain, opts.mesh_config))
        self.mesh = MeshController(self.cache, self.registry.services, translate or self.translator)
        self.registry.subscribe(lambda: self.mesh.changed(None))
        self.ads = AdsServer(
            self.cache,
            self.mesh.on_proxy_connected,
            self.mesh.on_proxy_disconnected,
            is_revoked=self.store.records.is_revoked,
        )
        self.registration = RegistrationServicer(
            self.workloads,
            self.group_lookup,
            opts.trust_domain,
            name_table=lambda ns: self.translator.name_table(self.registry.services(), ns),
            wait_pushed=lambda timeout: self.mesh.wait_pushed(timeout, self._all_synced),
            is_revoked=self.store.records.is_revoked,
        )
        # A burst of registrations changes the registry once per VM: send name tables once per burst.
        self._names = PushScheduler(self._send_names, debounce=0.1, max_delay=1.0)
        self.registry.subscribe(self._push_names)
        tls_creds, mtls_creds = server_credentials(self.store.ca, opts.server_names)
        self._mtls_creds = mtls_creds
        self.issuer = CertificateIssuer(
            self.store.ca, self.store.tokens, self.store.records, self.group_lookup,
            MeshInfo(opts.trust_domain, 0, opts.mesh_config),
        )  # fmt: skip
        self.tls_server = ThreadedServer(
            opts.listen, tls_creds, self._configure_tls, options=join_port_options(DEFAULT_OPTIONS)
        )
        self.mtls_server = AioServerThread(
            opts.mtls_listen, mtls_creds, self._configure_mtls, options=mtls_port_options(DEFAULT_OPTIONS)
        )
        self.revocations = RevocationWatcher(
            lambda: {str(r["value"]) for r in self.store.records.revocations() if r["kind"] == "identity"},
            lambda: [(p.key, p.identity.uri) for p in self.mesh.proxies.all()],
            self.ads.disconnect,
        )
        self.http = HttpApi(opts.http_listen)
        self.http.add_json("/api/v1/proxies", self.ads.status)
        self.http.add_json("/api/v1/workloads", self.workloads.workloads_json)
        self.metrics = ControlPlaneMetrics(
            self.ads.status,
            self.workloads.workloads_json,
            self.configs.errors,
            lambda: len(self.configs.snapshot()),
            lambda: self.mesh.pushes,
            join_failures=lambda: (
                self.issuer.join_limiter.failed_total,
                self.issuer.join_limiter.refused_total,
            ),
        )
        self.http.add_text("/metrics", PROMETHEUS_CONTENT_TYPE, self.metrics.render)
        self.http.add_json("/api/v1/config/errors", self.configs.errors)
        self.http.add_json("/api/v1/certificates", lambda: [c.as_json() for c in self.store.records.issued()])
        self.http.add_json("/api/v1/revocations", self.store.records.revocations)
        self.ca_workers: CaWorkers | None = None
        self._stopped = threading.Event()

    def _push_names(self) -> None:
        self._names.trigger(None)

    def _send_names(self, _scope: set[str] | None) -> None:
        self.registration.push_name_table()

    def _all_synced(self) -> bool:
        return all(p.get("state") == "synced" for p in self.ads.status())

    def group_lookup(self, namespace: str, name: str) -> dict[str, Any] | None:
        return workload_group_document(self.configs, namespace, name)

    def _configure_tls(self, server: grpc.Server) -> None:
        istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
            IstioCertificateServicer(self.issuer), server
        )
        bootstrap_pb2_grpc.add_BootstrapServicer_to_server(BootstrapServicer(self.issuer), server)

    def _configure_mtls(self, server: grpc.aio.Server) -> None:
        istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
            AsyncIstioCertificateServicer(self.issuer), server
        )
        self.ads.add_to_server(server)
        self.registration.add_to_server(server)

    @property
    def ca_hash(self) -> str:
        return self.store.ca.root_hash

    def start(self) -> None:
        self.configs.start()
        self.reaper.start()
        self.revocations.start()
        mtls_port = self.mtls_server.start()
        self.issuer.mesh = MeshInfo(self.opts.trust_domain, mtls_port, self.opts.mesh_config)
        tls_port = self.tls_server.start()
        if self.opts.ca_workers > 0:
            self.ca_workers = CaWorkers(
                WorkerSpec.for_options(self.opts, tls_port, mtls_port), self.opts.ca_workers
            )
            self.ca_workers.start()
        self.http.start()
        for err in self.configs.errors():
            log.error("config: %s", err)
        log.info(
            "control plane ready: join (TLS) on %s, mutual TLS on %s, HTTP on %s; mesh root %s",
            self.opts.listen, self.opts.mtls_listen, self.opts.http_listen, self.ca_hash,
        )  # fmt: skip

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.http.stop()
        if self.ca_workers is not None:
            self.ca_workers.stop()
        self.tls_server.stop()
        self.mtls_server.stop()
        self.revocations.stop()
        self._names.close()
        self.registration.close()
        self.reaper.stop()
        self.mesh.close()
        self.configs.stop()
        self.store.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()
