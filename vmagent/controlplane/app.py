"""The control plane process: CA, tokens, config, registry, xDS and the HTTP API."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import grpc

from vmagent.api import bootstrap_pb2_grpc, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import chain_pem, key_pem
from vmagent.controlplane.ca.authority import CaSettings
from vmagent.controlplane.ca.certservice import (
    AsyncIstioCertificateServicer,
    BootstrapServicer,
    CertificateIssuer,
    IstioCertificateServicer,
    MeshInfo,
)
from vmagent.controlplane.ca.sa_tokens import ServiceAccountTokens
from vmagent.controlplane.ca.workers import CaWorkers, WorkerSpec
from vmagent.controlplane.config import ConfigSet
from vmagent.controlplane.dashboard import UI_FILES, Dashboard, ui_file
from vmagent.controlplane.grpc_limits import join_port_options, mtls_port_options
from vmagent.controlplane.grpc_server import (
    SERVER_CERT_TTL,
    ThreadedServer,
    is_ip,
    join_address,
    server_credentials,
)
from vmagent.controlplane.inject.cabundle import CaBundlePatcher
from vmagent.controlplane.inject.namespaces import NamespaceLabels
from vmagent.controlplane.inject.review import Injector
from vmagent.controlplane.inject.rootcert import RootCertPublisher
from vmagent.controlplane.inject.server import WebhookServer
from vmagent.controlplane.kube.client import KubeClient
from vmagent.controlplane.kube.informer import Informer
from vmagent.controlplane.kube.istio_source import IstioKubeSource
from vmagent.controlplane.kube.lease import LEASE_NAME, LeaseElector
from vmagent.controlplane.kube.publisher import WorkloadEntryPublisher, published_by
from vmagent.controlplane.kube.services import KubeServiceRegistry
from vmagent.controlplane.mesh import MeshController, Translate
from vmagent.controlplane.metrics import PROMETHEUS_CONTENT_TYPE, ControlPlaneMetrics
from vmagent.controlplane.options import ServeOptions
from vmagent.controlplane.proxies import ProxyBinder
from vmagent.controlplane.registry.registration import RegistrationServicer
from vmagent.controlplane.registry.services import (
    AggregateRegistry,
    ConfigRegistry,
    ServiceRegistry,
    workload_group_document,
)
from vmagent.controlplane.registry.workload_store import Reaper, WorkloadStore
from vmagent.controlplane.revocation_watch import RevocationWatcher
from vmagent.controlplane.service_graph import ServiceGraph
from vmagent.controlplane.snapshots import Translator, mesh_options
from vmagent.controlplane.state import StateStore, config_sources
from vmagent.controlplane.translate.tracing import provider_ref_issues
from vmagent.controlplane.web import HttpApi
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.push import PushScheduler
from vmagent.controlplane.xds.runner import DEFAULT_OPTIONS, AioServerThread
from vmagent.controlplane.xds.server import AdsServer
from vmagent.controlplane.xds.status import StatusRegistry

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(self, opts: ServeOptions, translate: Translate | None = None) -> None:
        self.opts = opts
        settings = CaSettings(opts.trust_domain, opts.cert_ttl, opts.max_cert_ttl)
        self.store = StateStore(opts.state_dir, settings, opts.ca_cert, opts.ca_key)
        self.kube: KubeClient | None = None
        self.kube_config: IstioKubeSource | None = None
        self.elector: LeaseElector | None = None
        self.controller_id = opts.controller_id or os.environ.get("POD_NAME") or socket.gethostname()
        if opts.kubeconfig is not None or opts.in_cluster:
            self.kube = KubeClient.from_config(opts.kubeconfig, opts.in_cluster)
            # Replicas elect the one that writes validation status; it rewrites them all when it takes over.
            self.elector = LeaseElector(
                self.kube,
                opts.lease_namespace or os.environ.get("POD_NAMESPACE") or "istio-system",
                LEASE_NAME,
                self.controller_id,
                on_change=self._leading_changed,
            )
            elector = self.elector
            # Entries this control plane publishes are its own store's: not read back as config.
            self.kube_config = IstioKubeSource(
                self.kube,
                write_status=elector.is_leader,
                skip=lambda o: published_by(o, self.controller_id),
            )
        self.configs = ConfigSet(config_sources(opts.config_dir, opts.state_dir, self.kube_config))
        self.workloads = WorkloadStore(self.store.db, opts.lifecycle)
        self.registry = ConfigRegistry(
            self.configs, opts.trust_domain, extra_workload_entries=self.workloads.entries
        )
        self.workloads.subscribe(self.registry.notify_changed)
        self.kube_services: KubeServiceRegistry | None = None
        self.services: ServiceRegistry = self.registry
        if self.kube is not None:
            self.kube_services = KubeServiceRegistry(
                self.kube, opts.trust_domain, self.registry.workload_entries, opts.cluster_domain
            )
            self.registry.subscribe(self.kube_services.notify_changed)  # VMs behind Services
            self.services = AggregateRegistry([self.registry, self.kube_services])
        self.publisher: WorkloadEntryPublisher | None = None
        if self.kube is not None and self.kube_config is not None:
            kube_config = self.kube_config
            self.publisher = WorkloadEntryPublisher(
                self.kube,
                self.workloads,
                self.controller_id,
                current=lambda: kube_config.cached("WorkloadEntry"),
                group=lambda ns, name: kube_config.cached("WorkloadGroup").get((ns, name)),
            )
        self.reaper = Reaper(self.workloads)
        self.cache = SnapshotCache()
        self.translator = Translator(self.configs, mesh_options(opts.trust_domain, opts.mesh_config))
        records = self.store.records
        self.binder = ProxyBinder(
            opts.trust_domain, self.workloads.at_address, self.configs.snapshot, records.descends_from,
            pods_at=self.kube_services.pods_at if self.kube_services is not None else None,
        )  # fmt: skip
        self.mesh = MeshController(
            self.cache, self.services.services, translate or self.translator, binder=self.binder
        )
        self.services.subscribe(lambda: self.mesh.changed(None))
        if self.kube_services is not None:  # a pod's proxy bound again (an empty scope: pushed if it changed)
            self.kube_services.subscribe_pods(lambda: self.mesh.changed(set()))
        self.metrics = ControlPlaneMetrics(
            lambda: self.ads.status(),
            self.workloads.workloads_json,
            self.config_errors,
            lambda: len(self.configs.snapshot()),
            join_failures=lambda: (
                self.issuer.join_limiter.failed_total,
                self.issuer.join_limiter.refused_total,
            ),
        )
        self.ads = AdsServer(
            self.cache,
            self.mesh.on_proxy_connected,
            self.mesh.on_proxy_disconnected,
            registry=StatusRegistry(observer=self.metrics),
            is_revoked=self.store.records.is_revoked,
        )
        self.mesh.on_refused = self.ads.disconnect
        self.registration = RegistrationServicer(
            self.workloads,
            self.group_lookup,
            opts.trust_domain,
            name_table=lambda ns: self.translator.name_table(self.services.services(), ns),
            wait_pushed=lambda timeout: self.mesh.wait_pushed(timeout, self._all_synced),
            is_revoked=self.store.records.is_revoked,
            same_holder=lambda rec, reg: self.binder.same_lineage(int(reg.cert_serial, 16), rec.cert_serial),
            on_registration=self.metrics.registration,
        )
        # A burst of registrations changes the registry once per VM: send name tables once per burst.
        self._names = PushScheduler(self._send_names, debounce=0.1, max_delay=1.0)
        self.services.subscribe(self._push_names)
        tls_creds, mtls_creds = server_credentials(self.store.ca, opts.server_names)
        self._mtls_creds = mtls_creds
        self.issuer = CertificateIssuer(
            self.store.ca, self.store.tokens, self.store.records, self.group_lookup,
            MeshInfo(opts.trust_domain, 0, opts.mesh_config), observer=self.metrics,
            sa_tokens=ServiceAccountTokens(self.kube, opts.trust_domain) if self.kube is not None else None,
        )  # fmt: skip
        self.tls_server = ThreadedServer(
            opts.listen, tls_creds, self._configure_tls, options=join_port_options(DEFAULT_OPTIONS)
        )
        self.mtls_server = AioServerThread(
            opts.mtls_listen, mtls_creds, self._configure_mtls, options=mtls_port_options(DEFAULT_OPTIONS)
        )
        self.revocations = RevocationWatcher(
            records.generation,
            records.is_revoked,
            [
                lambda revoked, reason: self.ads.disconnect_where(lambda _k, i, s: revoked(i, s), reason),
                self.registration.disconnect_where,
            ],
            lambda: [(str(w["spiffe_id"]), str(w["cert_serial"])) for w in self.workloads.workloads_json()],
            self._remove_entries,
        )
        self.http = HttpApi(opts.http_listen)
        self.http.add_json("/api/v1/proxies", self.ads.status)
        self.http.add_json("/api/v1/workloads", self.workloads.workloads_json)
        self.http.add_text("/metrics", PROMETHEUS_CONTENT_TYPE, self.metrics.render)
        self.http.add_json("/api/v1/config/errors", self.config_errors)
        self.http.add_json("/api/v1/config/warnings", self.configs.warnings)
        self.http.add_json("/api/v1/kubernetes", self.kube_status)
        self.http.add_json("/api/v1/certificates", lambda: [c.as_json() for c in self.store.records.issued()])
        self.http.add_json("/api/v1/revocations", self.store.records.revocations)
        self.http.add_json("/api/v1/server", self.server_json)
        self.graph = ServiceGraph(self._scrape_targets, interval=opts.graph_scrape_interval or 5.0)
        self.dashboard = Dashboard(
            self.workloads.workloads_json, self.ads.status, self.mesh.proxies.all,
            lambda: self.configs.snapshot().all(), self.config_errors, self.configs.warnings,
            self.graph.graph_json,
        )  # fmt: skip
        self.http.add_json("/api/v1/dashboard/workloads", self.dashboard.workloads_json)
        self.http.add_json("/api/v1/dashboard/config", self.dashboard.config_json)
        self.http.add_json("/api/v1/dashboard/graph", self.dashboard.graph_json)
        for name, ctype in UI_FILES.items():
            self.http.add_text(f"/ui/{name}", ctype, lambda n=name: ui_file(n))  # type: ignore[misc]
        self.http.add_text("/ui", UI_FILES["index.html"], lambda: ui_file("index.html"))
        self.http.add_text("/", UI_FILES["index.html"], lambda: ui_file("index.html"))
        self.ca_workers: CaWorkers | None = None
        self.webhook: WebhookServer | None = None
        self.ca_bundle: CaBundlePatcher | None = None
        self.root_cert: RootCertPublisher | None = None
        if self.kube is not None and opts.inject_listen:
            self._make_webhook(self.kube)
        self._stopped = threading.Event()

    def webhook_names(self) -> list[str]:
        """The DNS names the API server may use for the control plane's Service (the webhook certificate)."""
        o = self.opts
        ns = os.environ.get("POD_NAMESPACE") or o.lease_namespace or "vmagent-system"
        svc = f"{o.service_name}.{ns}"
        return [
            f"{svc}.svc",
            f"{svc}.svc.{o.cluster_domain}",
            svc,
            o.service_name,
            CP_SERVER_NAME,
            "localhost",
        ]

    def _make_webhook(self, kube: KubeClient) -> None:
        injector = Injector(self.opts.sidecar, NamespaceLabels(kube), observer=self.metrics)
        dns = self.webhook_names() + [n for n in self.opts.server_names if not is_ip(n)]
        ips = ["127.0.0.1", "::1"] + [n for n in self.opts.server_names if is_ip(n)]
        key, chain = self.store.ca.issue_server_cert(dns, ips, SERVER_CERT_TTL)
        try:
            self.webhook = WebhookServer(
                self.opts.inject_listen, injector, chain_pem(chain), key_pem(key), self.opts.state_dir
            )
        except (ValueError, OSError) as exc:
            raise VmagentError(f"--inject-listen {self.opts.inject_listen}: {exc}") from exc
        if self.elector is not None:
            self.ca_bundle = CaBundlePatcher(
                kube, self.store.ca.root_pem, self.elector.is_leader, self.opts.webhook_config
            )
            self.root_cert = RootCertPublisher(kube, self.store.ca.root_pem, self.elector.is_leader)

    def _remove_entries(self, callers: set[tuple[str, str]], reason: str) -> int:
        return len(self.workloads.remove_where(lambda r: (r.spiffe_id, r.cert_serial) in callers, reason))

    def _scrape_targets(self) -> list[tuple[str, str]]:
        """The connected VMs whose :15020 the service graph scrapes."""
        return [
            (f"{w['namespace']}/{w['name']}", str(w["address"]))
            for w in self.workloads.workloads_json()
            if w.get("connected") and w.get("address")
        ]

    def server_json(self) -> dict[str, Any]:
        """What `vmagent-cp token create` needs from the running server (``/api/v1/server``): its state
        and config dirs, the address VMs join at, and the WorkloadGroups it knows."""
        return {
            "state_dir": str(self.opts.state_dir.resolve()),
            "config_dir": str(self.opts.config_dir.resolve()) if self.opts.config_dir else None,
            "trust_domain": self.opts.trust_domain,
            "listen": self.opts.listen,
            "join_address": join_address(self.opts.listen),
            "workload_groups": sorted(f"{g.namespace}/{g.name}" for g in self.configs.list("WorkloadGroup")),
        }

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
        if self.elector is not None:
            self.elector.start()
        self.configs.start()
        if self.kube_services is not None:
            self.kube_services.start()
        self._wait_kube_synced()
        if self.publisher is not None and self.kube_config is not None:
            self.publisher.resource = self.kube_config.resource("WorkloadEntry")
            self.publisher.start()
            self.publisher.trigger()
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
        if self.webhook is not None:
            self.webhook.start()
        for writer in (self.ca_bundle, self.root_cert):
            if writer is not None:
                writer.start()
        self.http.start()
        if self.opts.graph_scrape_interval > 0:
            self.graph.start()
        for err in self.config_errors():
            log.error("config: %s", err)
        log.info(
            "control plane ready: join (TLS) on %s, mutual TLS on %s, HTTP on %s; mesh root %s",
            self.opts.listen, self.opts.mtls_listen, self.opts.http_listen, self.ca_hash,
        )  # fmt: skip

    def config_errors(self) -> list[str]:
        """The config sources' problems, and Telemetry tracing providers MeshConfig does not define."""
        refs = provider_ref_issues(self.configs.list("Telemetry"), self.translator.mesh.tracing)
        return [*self.configs.errors(), *(str(i) for i in refs)]

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.http.stop()
        self.graph.stop()
        if self.webhook is not None:
            self.webhook.stop()
        for writer in (self.ca_bundle, self.root_cert):
            if writer is not None:
                writer.stop()
        if self.ca_workers is not None:
            self.ca_workers.stop()
        self.tls_server.stop()
        self.mtls_server.stop()
        self.revocations.stop()
        self._names.close()
        self.registration.close()
        self.reaper.stop()
        self.mesh.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.kube_services is not None:
            self.kube_services.stop()
        self.configs.stop()
        if self.elector is not None:
            self.elector.stop()
        if self.kube is not None:
            self.kube.close()
        self.store.close()
        self._stopped.set()

    def _leading_changed(self, leading: bool) -> None:
        for writer in (self.ca_bundle, self.root_cert):
            if leading and writer is not None:
                writer.trigger()
        if leading and self.kube_config is not None:
            kube_config = self.kube_config
            threading.Thread(target=kube_config.resync_status, name="status-resync", daemon=True).start()

    def kube_status(self) -> dict[str, Any]:
        """The cluster link for the HTTP API: per watched kind, its state, lists and events."""
        if self.kube is None:
            return {"enabled": False}
        informers: list[Informer] = []
        if self.kube_config is not None:
            informers.extend(self.kube_config.informers.values())
        if self.kube_services is not None:
            informers.extend(self.kube_services.informers)
        return {
            "enabled": True,
            "server": self.kube.host,
            "controller": self.controller_id,
            "leader": self.elector.is_leader() if self.elector is not None else False,
            "lease_holder": self.elector.holder if self.elector is not None else "",
            "resources": [
                {
                    "resource": str(i.resource),
                    "version": i.resource.version,
                    "state": i.state,
                    "synced": i.synced.is_set(),
                    "lists": i.lists,
                    "events": i.events,
                    "error": i.last_error,
                }
                for i in informers
            ],
            "published_writes": self.publisher.writes if self.publisher is not None else 0,
            "injection": {
                "listen": self.opts.inject_listen if self.webhook is not None else "",
                "port": self.webhook.port if self.webhook is not None else 0,
                "webhook_config": self.opts.webhook_config,
                "ca_bundle_writes": self.ca_bundle.writes if self.ca_bundle is not None else 0,
                "ca_bundle_error": self.ca_bundle.last_error if self.ca_bundle is not None else "",
                "root_cert_writes": self.root_cert.writes if self.root_cert is not None else 0,
                "root_cert_error": self.root_cert.last_error if self.root_cert is not None else "",
            },
            "pushes": self.mesh.pushes,
        }

    def _wait_kube_synced(self) -> None:
        """Give the cluster's first lists a bounded time, so the first pushes are complete; an
        unreachable API server does not stop the control plane from serving (it keeps retrying)."""
        if self.kube_config is None or self.kube_services is None:
            return
        timeout = self.opts.kube_sync_timeout
        if not (self.kube_config.wait_synced(timeout) and self.kube_services.wait_synced(timeout)):
            log.warning(
                "Kubernetes API at %s not listed within %.0f s; serving without it until it answers",
                self.kube.host if self.kube else "?",
                timeout,
            )

    def wait(self) -> None:
        self._stopped.wait()
