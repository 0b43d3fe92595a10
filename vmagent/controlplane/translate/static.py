"""A proxy's resources as one static Envoy bootstrap, for checking them with ``envoy --mode validate``.

EDS clusters become STATIC clusters carrying their ClusterLoadAssignment, RDS references are replaced
by the route configuration inline, HTTP filters discovered over ECDS (WasmPlugins) get their extension
configuration inline, and a static ``sds-grpc`` cluster (gRPC over a Unix socket) lets the
SDS references resolve (and ``vmagent-als`` the request-metrics access loggers'). Secrets themselves are
not needed to validate. The admin address is a Unix socket like the agent's (``envoy/admin.sock`` next to
the SDS socket): validate mode never opens it, but the bootstrap stays what a proxy would run, with no TCP
admin port.
"""

from __future__ import annotations

from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from vmagent.common import constants
from vmagent.common.wire import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE
from vmagent.controlplane.translate.build import Resources
from vmagent.controlplane.translate.clusters import HTTP_OPTIONS
from vmagent.controlplane.translate.protos import duration, typed
from vmagent.controlplane.translate.proxy import MeshOptions

_HCM_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def _inline_routes(
    listener: listener_pb2.Listener, routes: dict[str, Any], extensions: dict[str, Any]
) -> listener_pb2.Listener:
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in [*out.filter_chains, out.default_filter_chain]:
        for f in chain.filters:
            if f.typed_config.type_url != _HCM_URL:
                continue
            cfg = hcm.HttpConnectionManager()
            f.typed_config.Unpack(cfg)
            if cfg.HasField("rds"):
                name = cfg.rds.route_config_name
                rc = routes.get(name)
                if rc is None:
                    raise ValueError(
                        f"listener {listener.name} uses route {name!r}, which is not in the resources"
                    )
                cfg.route_config.CopyFrom(rc)
            for hf in cfg.http_filters:
                if hf.HasField("config_discovery"):
                    ext = extensions.get(hf.name)
                    if ext is None:
                        raise ValueError(
                            f"listener {listener.name} uses extension config {hf.name!r}, which is not in the resources"
                        )
                    hf.typed_config.CopyFrom(ext.typed_config)
            f.typed_config.CopyFrom(typed(cfg))
    return out


def _static_cluster(cluster: cluster_pb2.Cluster, endpoints: dict[str, Any]) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster()
    out.CopyFrom(cluster)
    if out.type == cluster_pb2.Cluster.EDS:
        cla = endpoints.get(out.eds_cluster_config.service_name or out.name)
        out.ClearField("eds_cluster_config")
        out.type = cluster_pb2.Cluster.STATIC
        assignment = endpoint_pb2.ClusterLoadAssignment()
        if cla is not None:
            assignment.CopyFrom(cla)
        assignment.cluster_name = out.name
        out.load_assignment.CopyFrom(assignment)
    return out


def _sds_cluster(name: str, socket_path: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[
                        ec.LbEndpoint(
                            endpoint=ec.Endpoint(
                                address=address_pb2.Address(pipe=address_pb2.Pipe(path=socket_path))
                            )
                        )
                    ]
                )
            ],
        ),
    )
    h2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    c.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(typed(h2))
    return c


def static_bootstrap(
    resources: Resources,
    mesh: MeshOptions,
    sds_socket: str = "/run/vmagent/sds.sock",
    admin_socket: str | None = None,
    als_socket: str = "/run/vmagent/als.sock",
    node_id: str = "validate",
) -> bootstrap_pb2.Bootstrap:
    """Everything in ``resources`` as static resources of one bootstrap.

    ``admin_socket``: default ``envoy/admin.sock`` in the SDS socket's directory.
    """
    if admin_socket is None:
        admin_socket = sds_socket.rsplit("/", 1)[0] + "/envoy/admin.sock"
    routes = resources.get(ROUTE, {})
    extensions = resources.get(EXTENSION_CONFIG, {})
    endpoints = resources.get(ENDPOINT, {})
    clusters = [_static_cluster(c, endpoints) for _, c in sorted(resources.get(CLUSTER, {}).items())]
    clusters.append(_sds_cluster(mesh.sds_cluster, sds_socket))
    if mesh.request_metrics:  # the agent's AccessLogService (gRPC over a Unix socket, like SDS)
        clusters.append(_sds_cluster(constants.ALS_CLUSTER, als_socket))
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster="validate"),
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(pipe=address_pb2.Pipe(path=admin_socket, mode=0o600))
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[
                _inline_routes(lst, routes, extensions)
                for _, lst in sorted(resources.get(LISTENER, {}).items())
            ],
            clusters=clusters,
        ),
    )
