"""What ``vmagent-cp serve`` is told (its command-line options as one value)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmagent.common.constants import CP_GRPC_PORT, CP_HTTP_PORT, CP_MTLS_PORT, DEFAULT_TRUST_DOMAIN
from vmagent.controlplane.inject.cabundle import WEBHOOK_CONFIG_NAME
from vmagent.controlplane.inject.template import SidecarSettings
from vmagent.controlplane.paths import DEFAULT_STATE_DIR
from vmagent.controlplane.registry.workload_store import LifecycleSettings


@dataclass
class ServeOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    config_dir: Path | None = None
    listen: str = f"0.0.0.0:{CP_GRPC_PORT}"
    mtls_listen: str = f"0.0.0.0:{CP_MTLS_PORT}"
    http_listen: str = f"127.0.0.1:{CP_HTTP_PORT}"
    graph_scrape_interval: float = 5.0  # the dashboard's scrapes of the agents' :15020 (0: none)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ca_cert: Path | None = None
    ca_key: Path | None = None
    cert_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    max_cert_ttl: datetime.timedelta = datetime.timedelta(days=7)
    server_names: list[str] = field(default_factory=list)
    mesh_config: dict[str, Any] = field(default_factory=dict)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    ca_workers: int = 0  # extra processes serving the join port (see ca/workers.py)
    kubeconfig: Path | None = None  # a Kubernetes API server as config source and service registry
    in_cluster: bool = False  # the same through the pod's service account
    cluster_domain: str = "cluster.local"
    kube_sync_timeout: float = 10.0  # how long start() waits for the first list of every kind
    controller_id: str = ""  # names this control plane on the WorkloadEntries it writes (default: host name)
    lease_namespace: str = ""  # where the replicas' Lease lives (default: $POD_NAMESPACE, else istio-system)
    # The sidecar injection webhook (HTTPS, /inject), served only with a cluster; "" turns it off.
    inject_listen: str = ""
    sidecar: SidecarSettings = field(default_factory=SidecarSettings)
    webhook_config: str = WEBHOOK_CONFIG_NAME  # the MutatingWebhookConfiguration whose caBundle it keeps
    service_name: str = (
        "vmagent-cp"  # the Service in front of the control plane (the webhook certificate's name)
    )
