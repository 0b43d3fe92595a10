"""Istio's request metrics: every listener's HTTP connection managers and tcp_proxies log to the agent.

Upstream Envoy has no ``istio.stats`` filter, so the metrics are made by the agent: each HTTP connection
manager gets Envoy's gRPC access logger ``envoy.access_loggers.http_grpc`` and each tcp_proxy
``envoy.access_loggers.tcp_grpc``, both sending to the static cluster ``vmagent-als`` (the agent's
AccessLogService on a Unix socket, added by the agent's bootstrap). The agent aggregates the entries into
``istio_requests_total`` and the other families (``vmagent/agent/request_metrics.py``).

What the control plane adds, the agent cannot know by itself and Envoy does not put in an entry, goes in
the logger's ``log_name`` (a JSON object, sent once per stream in the stream's identifier, not per entry):

* ``reporter``: ``destination`` on the inbound listener, ``source`` on the outbound ones;
* ``peers`` (inbound only): SPIFFE principal -> ``[workload, app, version]`` from the WorkloadGroups, so
  that the destination side names the calling workload from the principal of the client's verified
  mesh certificate (a principal that several groups share gives no workload: ``unknown``).

Nothing the client sends in a header decides a peer label. Like access logs, this is a pass over the
translated listeners (the listener translation stays unaware of it). MeshConfig
``defaultProviders.metrics: []`` turns it off (absent: on, as Istio's ``prometheus`` default provider).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from google.protobuf.message import Message

from vmagent.common import constants
from vmagent.common.errors import ConfigError
from vmagent.controlplane.specs import WorkloadGroup
from vmagent.controlplane.translate.accesslog import with_loggers
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.protos import typed

HTTP_LOGGER = "envoy.access_loggers.http_grpc"
TCP_LOGGER = "envoy.access_loggers.tcp_grpc"
# Request headers added to each HTTP entry: only to tell gRPC from plain HTTP (request_protocol).
LOGGED_REQUEST_HEADERS = ("content-type",)


def parse_metrics_enabled(mesh_config: Mapping[str, Any], source: str) -> bool:
    """MeshConfig ``defaultProviders.metrics``: absent means on; a list without ``prometheus`` means off."""
    providers = mesh_config.get("defaultProviders")
    if providers is None:
        return True
    if not isinstance(providers, Mapping):
        raise ConfigError(f"{source}: defaultProviders: expected a mapping")
    unknown = sorted(set(providers) - {"metrics", "tracing", "accessLogging"})
    if unknown:
        raise ConfigError(f"{source}: defaultProviders.{unknown[0]}: unknown field")
    metrics = providers.get("metrics")
    if metrics is None:
        return True
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{source}: defaultProviders.metrics: expected a list of provider names")
    for name in metrics:
        if name != "prometheus":
            raise ConfigError(
                f"{source}: defaultProviders.metrics: {name!r} is not a known provider (only prometheus)"
            )
    return "prometheus" in metrics


def peer_table(configs: ConfigLookup, trust_domain: str) -> dict[str, list[str]]:
    """SPIFFE principal -> ``[workload, app, version]`` for every WorkloadGroup whose principal is its own.

    The principal of a VM is ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`` (the group's
    ``template.serviceAccount``, ``default`` when absent); the workload is the group's name (Istio's
    workload name for VMs), app and version its ``app`` / ``version`` labels. Principals shared by two
    groups are left out.
    """
    found: dict[str, list[str]] = {}
    shared: set[str] = set()
    for group in configs.list("WorkloadGroup"):
        spec = group.spec_as(WorkloadGroup)
        sa = spec.template.service_account or "default"
        labels = spec.metadata.labels
        principal = f"spiffe://{trust_domain}/ns/{group.namespace}/sa/{sa}"
        if principal in found:
            shared.add(principal)
            continue
        found[principal] = [group.name, str(labels.get("app", "")), str(labels.get("version", ""))]
    return {p: found[p] for p in sorted(found) if p not in shared}


def log_name(reporter: str, peers: Mapping[str, list[str]] | None = None) -> str:
    """The ``log_name`` the agent reads the reporter (and the peer table) from: compact, sorted JSON."""
    doc: dict[str, Any] = {"reporter": reporter}
    if peers is not None:
        doc["peers"] = dict(peers)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _common(name: str) -> als_pb2.CommonGrpcAccessLogConfig:
    return als_pb2.CommonGrpcAccessLogConfig(
        log_name=name,
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=constants.ALS_CLUSTER)
        ),
        transport_api_version=config_source_pb2.V3,
    )


def http_logger(name: str) -> accesslog_pb2.AccessLog:
    cfg = als_pb2.HttpGrpcAccessLogConfig(
        common_config=_common(name), additional_request_headers_to_log=list(LOGGED_REQUEST_HEADERS)
    )
    return accesslog_pb2.AccessLog(name=HTTP_LOGGER, typed_config=typed(cfg))


def tcp_logger(name: str) -> accesslog_pb2.AccessLog:
    cfg = als_pb2.TcpGrpcAccessLogConfig(common_config=_common(name))
    return accesslog_pb2.AccessLog(name=TCP_LOGGER, typed_config=typed(cfg))


def with_request_metrics(listeners: dict[str, Message], peers: Mapping[str, list[str]]) -> dict[str, Message]:
    """Copies of ``listeners`` whose HTTP connection managers and tcp_proxies log to the agent.

    The reporter is ``destination`` on INBOUND listeners (with ``peers``), ``source`` on the others.
    The inputs are shared between proxies and are not changed.
    """

    def loggers_for(
        listener: listener_pb2.Listener,
    ) -> tuple[accesslog_pb2.AccessLog, accesslog_pb2.AccessLog]:
        inbound = listener.traffic_direction == base_pb2.INBOUND
        lname = log_name("destination", peers) if inbound else log_name("source")
        return http_logger(lname), tcp_logger(lname)

    return with_loggers(listeners, loggers_for)
