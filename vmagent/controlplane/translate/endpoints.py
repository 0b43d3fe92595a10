"""ClusterLoadAssignments from the registry's endpoints.

Only healthy endpoints are sent (an unhealthy endpoint leaves EDS). Endpoints are grouped by locality
(``region/zone/subzone``), carry their weight, and — when the cluster does automatic mutual TLS — the
``tlsMode: istio`` metadata that selects the TLS transport socket for mesh workloads.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from vmagent.controlplane.model import Endpoint, Port, Service
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.protos import filter_metadata, socket_address, u32
from vmagent.controlplane.translate.services import endpoint_port, is_mesh_endpoint


def parse_locality(text: str) -> base_pb2.Locality:
    parts = [*text.split("/"), "", "", ""][:3]
    return base_pb2.Locality(region=parts[0], zone=parts[1], sub_zone=parts[2])


# The registry hands out the same Service and Endpoint objects until they change, so an assignment is
# built again only for the services that changed (a big cluster's EndpointSlice change touches one of
# thousands). One entry per cluster name, replaced when its service or endpoints are other objects (so
# the memo does not grow with churn); dropped whole past _MEMO_MAX clusters. Callers share the messages
# and must not modify them.
_MEMO: dict[
    tuple[str, Port, bool], tuple[Service, tuple[Endpoint, ...], endpoint_pb2.ClusterLoadAssignment]
] = {}
_MEMO_MAX = 50_000


def load_assignment(
    cluster_name: str, service: Service, port: Port, endpoints: Sequence[Endpoint], tls_metadata: bool
) -> endpoint_pb2.ClusterLoadAssignment:
    """The assignment of ``cluster_name``: healthy ``endpoints`` by locality, sorted for stable versions."""
    key = (cluster_name, port, tls_metadata)
    eps = tuple(endpoints)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is service and hit[1] == eps:
        return hit[2]
    msg = _build_assignment(cluster_name, service, port, eps, tls_metadata)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = (service, eps, msg)
    return msg


def _build_assignment(
    cluster_name: str, service: Service, port: Port, endpoints: Sequence[Endpoint], tls_metadata: bool
) -> endpoint_pb2.ClusterLoadAssignment:
    by_locality: dict[str, list[ec.LbEndpoint]] = {}
    seen: set[tuple[str, int]] = set()
    for ep in sorted(endpoints, key=lambda e: (e.locality, names.sort_key_ip(e.address), e.workload_name)):
        if not ep.healthy or not ep.address:
            continue
        target = endpoint_port(ep, port)
        if (ep.address, target) in seen:
            continue
        seen.add((ep.address, target))
        lb = ec.LbEndpoint(
            endpoint=ec.Endpoint(address=socket_address(ep.address, target)),
            load_balancing_weight=u32(max(1, ep.weight)),
        )
        if tls_metadata and is_mesh_endpoint(service, ep):
            lb.metadata.CopyFrom(filter_metadata(names.TRANSPORT_SOCKET_MATCH, {"tlsMode": "istio"}))
        by_locality.setdefault(ep.locality, []).append(lb)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            ec.LocalityLbEndpoints(locality=parse_locality(loc), lb_endpoints=eps)
            for loc, eps in sorted(by_locality.items())
        ],
    )
