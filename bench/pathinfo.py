"""What the translation puts on a request's path, read from the two Envoys' /config_dump.

For the client (outbound) side: the ``0.0.0.0_PORT`` listener's listener filters and, per filter chain
with an http_connection_manager, its HTTP filters (in order), access logs, tracing and the settings that
cost per request; the route that serves HOST (retry policy, timeout) and the outbound cluster (transport
socket, upstream HTTP protocol, circuit breakers). For the server (inbound) side: ``virtualInbound``'s
listener filters and the chains for PORT. Everything is reported as read, so a reader can compare it
with Istio's sidecar chains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from vmagent.lab.mesh import VmHost

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def config_dump(ns: VmHost, resource: str) -> list[dict[str, Any]]:
    """The ``resource`` entries of the Envoy admin /config_dump of VM ``ns`` (over its admin socket)."""
    doc = json.loads(ns.envoy_admin(f"/config_dump?resource={resource}", timeout=10))
    return list(doc.get("configs") or [])


def _listeners(ns: VmHost) -> dict[str, dict[str, Any]]:
    out = {}
    for entry in config_dump(ns, "dynamic_listeners"):
        lst = (entry.get("active_state") or {}).get("listener") or {}
        if lst.get("name"):
            out[str(lst["name"])] = lst
    return out


def _chains(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from listener.get("filter_chains") or []
    if listener.get("default_filter_chain"):
        yield listener["default_filter_chain"]


def _type(cfg: dict[str, Any]) -> str:
    return str(cfg.get("@type", "")).rsplit("/", 1)[-1]


def chain_summary(chain: dict[str, Any]) -> dict[str, Any]:
    """Name, match, network filters and (when it has one) the HTTP connection manager's request path."""
    out: dict[str, Any] = {
        "name": chain.get("name", ""),
        "match": chain.get("filter_chain_match", {}),
        "transport_socket": (chain.get("transport_socket") or {}).get("name", "raw_buffer"),
        "network_filters": [f.get("name") for f in chain.get("filters") or []],
    }
    for f in chain.get("filters") or []:
        cfg = f.get("typed_config") or {}
        if _type(cfg) != HCM_TYPE:
            continue
        out["http_filters"] = [h.get("name") for h in cfg.get("http_filters") or []]
        out["access_log"] = [a.get("name") for a in cfg.get("access_log") or []]
        out["tracing"] = "tracing" in cfg
        for key in (
            "codec_type", "generate_request_id", "use_remote_address", "forward_client_cert_details",
            "normalize_path", "merge_slashes", "stream_idle_timeout", "request_timeout",
        ):  # fmt: skip
            if key in cfg:
                out[key] = cfg[key]
        out["route"] = "rds:" + str(cfg["rds"].get("route_config_name")) if "rds" in cfg else "inline"
    return out


def _port_chains(listener: dict[str, Any], port: int) -> list[dict[str, Any]]:
    out = []
    for chain in _chains(listener):
        match = chain.get("filter_chain_match") or {}
        if int(match.get("destination_port", 0) or 0) == port:
            out.append(chain_summary(chain))
    return out


def _route_for(ns: VmHost, host: str, port: int) -> dict[str, Any]:
    for entry in config_dump(ns, "dynamic_route_configs"):
        rc = entry.get("route_config") or {}
        for vh in rc.get("virtual_hosts") or []:
            if host in (vh.get("domains") or []) or f"{host}:{port}" in (vh.get("domains") or []):
                routes = vh.get("routes") or []
                first = routes[0] if routes else {}
                return {
                    "route_config": rc.get("name"),
                    "virtual_host": vh.get("name"),
                    "domains": len(vh.get("domains") or []),
                    "routes": len(routes),
                    "typed_per_filter_config": sorted((first.get("typed_per_filter_config") or {}).keys()),
                    "action": {
                        k: v
                        for k, v in (first.get("route") or {}).items()
                        if k in ("cluster", "timeout", "retry_policy", "max_stream_duration")
                    },
                    "request_headers_to_add": len(first.get("request_headers_to_add") or []),
                }
    return {}


def _cluster(ns: VmHost, name: str) -> dict[str, Any]:
    for entry in config_dump(ns, "dynamic_active_clusters"):
        c = entry.get("cluster") or {}
        if c.get("name") != name:
            continue
        ts = c.get("transport_socket") or {}
        matches = c.get("transport_socket_matches") or []
        tls_sockets = [m.get("transport_socket") or {} for m in matches] + [ts]
        alpn = [
            p
            for t in tls_sockets
            for p in ((t.get("typed_config") or {}).get("common_tls_context") or {}).get("alpn_protocols", [])
        ]
        return {
            "name": name,
            "transport_socket": ts.get("name", "raw_buffer"),
            "transport_socket_matches": [
                {
                    "name": m.get("name"),
                    "match": m.get("match"),
                    "socket": (m.get("transport_socket") or {}).get("name"),
                }
                for m in matches
            ],
            "alpn": alpn,
            "typed_extension_protocol_options": sorted(
                (c.get("typed_extension_protocol_options") or {}).keys()
            ),
            "http_protocol_options": (c.get("typed_extension_protocol_options") or {}),
            "circuit_breakers": c.get("circuit_breakers", {}),
            "outlier_detection": "outlier_detection" in c,
            "lb_policy": c.get("lb_policy", "ROUND_ROBIN"),
        }
    return {"name": name, "missing": True}


def request_path(client: VmHost, server: VmHost, port: int, host: str) -> dict[str, Any]:
    """The outbound (client) and inbound (server) request path for ``host:port``."""
    out_listeners = _listeners(client)
    outbound_listener = out_listeners.get(f"0.0.0.0_{port}", {})
    http_chains = [chain_summary(c) for c in _chains(outbound_listener) if "http_filters" in chain_summary(c)]
    outbound: dict[str, Any] = {
        "listener": f"0.0.0.0_{port}",
        "listener_filters": [f.get("name") for f in outbound_listener.get("listener_filters") or []],
        "listener_access_log": [a.get("name") for a in outbound_listener.get("access_log") or []],
        "http_chains": http_chains,
        "route": _route_for(client, host, port),
    }
    if http_chains:
        outbound["http_filters"] = http_chains[0]["http_filters"]
    cluster_name = (outbound["route"].get("action") or {}).get("cluster") or f"outbound|{port}||{host}"
    outbound["cluster"] = _cluster(client, str(cluster_name))
    in_listener = _listeners(server).get("virtualInbound", {})
    chains = _port_chains(in_listener, port)
    inbound: dict[str, Any] = {
        "listener": "virtualInbound",
        "listener_filters": [f.get("name") for f in in_listener.get("listener_filters") or []],
        "listener_access_log": [a.get("name") for a in in_listener.get("access_log") or []],
        "chains": chains,
    }
    http = [c for c in chains if "http_filters" in c]
    if http:
        inbound["http_filters"] = http[0]["http_filters"]
    inbound["cluster"] = _cluster(server, f"inbound|{port}||")
    return {"outbound": outbound, "inbound": inbound}
