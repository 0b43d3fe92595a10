"""`vmagent-cp serve`."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from vmagent.common.constants import (
    CP_GRPC_PORT,
    CP_HTTP_PORT,
    CP_MTLS_PORT,
    DEFAULT_TRUST_DOMAIN,
    INJECT_PORT,
)
from vmagent.common.durations import duration_arg
from vmagent.controlplane.app import ControlPlane
from vmagent.controlplane.inject.cabundle import WEBHOOK_CONFIG_NAME
from vmagent.controlplane.inject.template import DEFAULT_SIDECAR_IMAGE, SidecarSettings
from vmagent.controlplane.options import ServeOptions
from vmagent.controlplane.paths import DEFAULT_STATE_DIR
from vmagent.controlplane.registry.workload_store import LifecycleSettings
from vmagent.controlplane.snapshots import mesh_options


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the control plane",
        description="Run the control plane: mesh CA, join, registry and xDS. The first start creates the "
        "root CA and the token key in the state dir; later starts reuse them.",
    )
    p.add_argument("--config-dir", type=Path, help="watched directory of Istio YAML (WorkloadGroups, ...)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument(
        "--listen",
        default=f"0.0.0.0:{CP_GRPC_PORT}",
        help="gRPC over TLS for joining VMs (token-authenticated); default: %(default)s",
    )
    p.add_argument(
        "--mtls-listen",
        default=f"0.0.0.0:{CP_MTLS_PORT}",
        help="gRPC over mutual TLS: renewals, registration, ADS; default: %(default)s",
    )
    p.add_argument(
        "--http-listen",
        default=f"127.0.0.1:{CP_HTTP_PORT}",
        help="metrics, health, the JSON API and the web dashboard (/ui); default: %(default)s",
    )
    p.add_argument(
        "--graph-scrape-interval",
        type=duration_arg,
        default="5s",
        help="how often the dashboard's service graph scrapes each connected VM's :15020/stats/prometheus "
        "(2 s timeout, 8 at a time); 0 turns scraping off; default: 5s",
    )
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="default: %(default)s")
    p.add_argument(
        "--ca-cert", type=Path, help="operator CA certificate (then its chain up to the root), PEM"
    )
    p.add_argument("--ca-key", type=Path, help="the key of --ca-cert, PEM")
    p.add_argument(
        "--cert-ttl", type=duration_arg, default="24h", help="default workload cert lifetime (24h)"
    )
    p.add_argument("--max-cert-ttl", type=duration_arg, default="7d", help="longest lifetime granted (7d)")
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        dest="server_names",
        help="extra DNS name or IP for the server certificate (repeatable)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=duration_arg,
        default="15s",
        help="an auto-registered VM whose heartbeats stop this long leaves EDS (15s)",
    )
    p.add_argument(
        "--grace-period",
        type=duration_arg,
        default="10m",
        help="a disconnected auto-registered VM is deleted after this long (10m)",
    )
    p.add_argument(
        "--mesh-config",
        type=Path,
        help="YAML with Istio MeshConfig fields: outboundTrafficPolicy.mode, rootNamespace, "
        "accessLogFile, accessLogEncoding (TEXT|JSON), accessLogFormat, defaultProviders, "
        "extensionProviders (zipkin, opentelemetry), defaultConfig.tracing, enableTracing",
    )
    p.add_argument(
        "--ca-workers",
        type=int,
        default=0,
        metavar="N",
        help="also serve joins (the --listen port) from N extra processes, for more signing cores (0)",
    )
    kube = p.add_mutually_exclusive_group()
    kube.add_argument(
        "--kubeconfig",
        type=Path,
        help="also take Istio objects, Services, EndpointSlices and Pods from this cluster "
        "(see docs/kubernetes.md)",
    )
    kube.add_argument("--in-cluster", action="store_true", help="the same with the pod's service account")
    p.add_argument(
        "--lease-namespace",
        default="",
        help="namespace of the Lease that picks the replica writing status (default: $POD_NAMESPACE, "
        "else istio-system)",
    )
    p.add_argument(
        "--cluster-domain",
        default="cluster.local",
        help="DNS domain of the cluster's Services (NAME.NS.svc.DOMAIN); default: %(default)s",
    )
    inject = p.add_argument_group("sidecar injection (with --kubeconfig or --in-cluster; docs/kubernetes.md)")
    inject.add_argument(
        "--inject-listen",
        default=f"0.0.0.0:{INJECT_PORT}",
        help="HTTPS address of the sidecar injection webhook (path /inject), served only with a cluster; "
        "'' turns it off; default: %(default)s",
    )
    inject.add_argument(
        "--sidecar-image",
        default=DEFAULT_SIDECAR_IMAGE,
        help="image of the injected init and sidecar containers (`make image`); default: %(default)s",
    )
    inject.add_argument(
        "--sidecar-ca-address",
        default=SidecarSettings.ca_address,
        help="where injected sidecars get certificates (the TLS port); default: %(default)s",
    )
    inject.add_argument(
        "--sidecar-xds-address",
        default=SidecarSettings.xds_address,
        help="where injected sidecars get xDS (the mutual-TLS port); default: %(default)s",
    )
    inject.add_argument(
        "--webhook-config",
        default=WEBHOOK_CONFIG_NAME,
        help="MutatingWebhookConfiguration whose caBundle the Lease holder keeps; default: %(default)s",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmagent.common.errors import VmagentError

    mesh_config: dict[str, Any] = {}
    if args.mesh_config is not None:
        import yaml

        try:
            loaded = yaml.safe_load(args.mesh_config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise VmagentError(f"cannot read --mesh-config {args.mesh_config}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise VmagentError(f"{args.mesh_config}: expected a mapping of MeshConfig fields")
        mesh_config = loaded
        mesh_options(args.trust_domain, mesh_config, source=str(args.mesh_config))  # errors name the file
    opts = ServeOptions(
        state_dir=args.state_dir,
        config_dir=args.config_dir,
        listen=args.listen,
        mtls_listen=args.mtls_listen,
        http_listen=args.http_listen,
        graph_scrape_interval=args.graph_scrape_interval.total_seconds(),
        trust_domain=args.trust_domain,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        cert_ttl=args.cert_ttl,
        max_cert_ttl=args.max_cert_ttl,
        server_names=args.server_names,
        mesh_config=mesh_config,
        ca_workers=args.ca_workers,
        kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        cluster_domain=args.cluster_domain,
        lease_namespace=args.lease_namespace,
        inject_listen=args.inject_listen,
        sidecar=SidecarSettings(
            image=args.sidecar_image,
            ca_address=args.sidecar_ca_address,
            xds_address=args.sidecar_xds_address,
            trust_domain=args.trust_domain,
            cluster_domain=args.cluster_domain,
        ),
        webhook_config=args.webhook_config,
        lifecycle=LifecycleSettings(
            heartbeat_interval=min(5.0, args.heartbeat_timeout.total_seconds() / 3),
            heartbeat_timeout=args.heartbeat_timeout.total_seconds(),
            grace_period=args.grace_period.total_seconds(),
        ),
    )
    cp = ControlPlane(opts)
    signal.signal(signal.SIGTERM, lambda *_: cp.stop())
    signal.signal(signal.SIGINT, lambda *_: cp.stop())
    cp.start()
    cp.wait()
    return 0
