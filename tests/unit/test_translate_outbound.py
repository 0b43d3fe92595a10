"""Outbound translation: clusters, TLS, endpoints, listeners and routes for typical services."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.translate import (
    ConfigIndex,
    MeshOptions,
    ProxyInfo,
    all_messages,
    build_proxy_resources,
)
from vmagent.controlplane.translate.build import Resources
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

PROXY = ProxyInfo(namespace="demo", labels={"app": "web"}, ip_addresses=("10.0.0.2",))
API_SA = "spiffe://cluster.local/ns/demo/sa/api"


def api(**kw: object) -> Service:
    base: dict[str, object] = {
        "hostname": "api.demo.svc.cluster.local",
        "namespace": "demo",
        "ports": (Port(8080, "HTTP", "http"),),
        "resolution": "STATIC",
        "location": "MESH_INTERNAL",
        "endpoints": (
            Endpoint("10.0.0.3", ports={"http": 9080}, service_account=API_SA, labels={"version": "v1"}),
            Endpoint("10.0.0.4", ports={"http": 9080}, service_account=API_SA, healthy=False),
        ),
    }
    base.update(kw)
    return Service(**base)  # type: ignore[arg-type]


def build(
    *services: Service, mesh: MeshOptions | None = None, configs: list[ConfigObject] | None = None
) -> Resources:
    return build_proxy_resources(PROXY, list(services), ConfigIndex(configs or []), mesh or MeshOptions())


def tcp_cluster(chain_filter: object) -> str:
    cfg = tcp_proxy_pb2.TcpProxy()
    chain_filter.typed_config.Unpack(cfg)  # type: ignore[attr-defined]
    return cfg.cluster


def test_static_service_is_eds_with_healthy_endpoints_on_their_named_port() -> None:
    res = build(api())
    c = res[CLUSTER]["outbound|8080||api.demo.svc.cluster.local"]
    assert c.type == cluster_pb2.Cluster.EDS
    cla = res[ENDPOINT]["outbound|8080||api.demo.svc.cluster.local"]
    addrs = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for group in cla.endpoints
        for e in group.lb_endpoints
    ]
    assert addrs == [("10.0.0.3", 9080)]  # the unhealthy 10.0.0.4 left EDS


def test_mesh_endpoints_get_istio_mutual_with_spiffe_san_and_sni() -> None:
    c = build(api())[CLUSTER]["outbound|8080||api.demo.svc.cluster.local"]
    tls_match = c.transport_socket_matches[0]
    assert dict(tls_match.match) == {"tlsMode": "istio"}
    ctx = tls_pb2.UpstreamTlsContext()
    tls_match.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "outbound_.8080_._.api.demo.svc.cluster.local"
    common = ctx.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    sds = common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source
    assert sds.grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"
    cvc = common.combined_validation_context
    assert cvc.validation_context_sds_secret_config.name == "ROOTCA"
    assert [m.matcher.exact for m in cvc.default_validation_context.match_typed_subject_alt_names] == [API_SA]
    assert list(common.alpn_protocols) == ["http/1.1"]


def test_mesh_external_gets_no_tls_unless_a_rule_says_so() -> None:
    ext = Service(
        "httpbin.example.com",
        "demo",
        (Port(80, "HTTP", "http"),),
        resolution="DNS",
        location="MESH_EXTERNAL",
        endpoints=(Endpoint("httpbin.example.com", ports={"http": 80}),),
    )
    c = build(ext)[CLUSTER]["outbound|80||httpbin.example.com"]
    assert c.type == cluster_pb2.Cluster.STRICT_DNS
    assert not c.transport_socket_matches and not c.HasField("transport_socket")
    dr = ConfigObject(
        "DestinationRule",
        "networking.istio.io/v1",
        "demo",
        "httpbin",
        {"host": "httpbin.example.com", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}},
    )
    c = build(ext, configs=[dr])[CLUSTER]["outbound|80||httpbin.example.com"]
    ctx = tls_pb2.UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "httpbin.example.com"


def test_destination_rule_subsets_and_disable() -> None:
    dr = ConfigObject(
        "DestinationRule",
        "networking.istio.io/v1",
        "demo",
        "api",
        {
            "host": "api",
            "trafficPolicy": {"tls": {"mode": "DISABLE"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
        },
    )
    res = build(api(), configs=[dr])
    assert "outbound|8080|v1|api.demo.svc.cluster.local" in res[CLUSTER]
    whole = res[CLUSTER]["outbound|8080||api.demo.svc.cluster.local"]
    assert not whole.transport_socket_matches and not whole.HasField("transport_socket")


def test_resolution_none_is_original_dst() -> None:
    svc = api(resolution="NONE", endpoints=())
    c = build(svc)[CLUSTER]["outbound|8080||api.demo.svc.cluster.local"]
    assert c.type == cluster_pb2.Cluster.ORIGINAL_DST and c.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED


def test_http_routes_by_host_with_vips_and_allow_any() -> None:
    res = build(api(addresses=("240.240.0.10",)))
    rc = res[ROUTE]["8080"]
    vh = {v.name: list(v.domains) for v in rc.virtual_hosts}
    assert "api" in vh["api.demo.svc.cluster.local:8080"]
    assert "240.240.0.10:8080" in vh["api.demo.svc.cluster.local:8080"]
    assert vh["allow_any"] == ["*"]
    assert rc.virtual_hosts[-1].routes[0].route.cluster == "PassthroughCluster"


def test_registry_only_blocks_unknown_destinations() -> None:
    res = build(api(), mesh=MeshOptions(outbound_traffic_policy="REGISTRY_ONLY"))
    assert tcp_cluster(res[LISTENER]["virtualOutbound"].filter_chains[0].filters[0]) == "BlackHoleCluster"
    assert tcp_cluster(res[LISTENER]["0.0.0.0_8080"].default_filter_chain.filters[0]) == "BlackHoleCluster"
    block = res[ROUTE]["8080"].virtual_hosts[-1]
    assert block.name == "block_all" and block.routes[0].direct_response.status == 502
    allow = build(api())
    assert tcp_cluster(allow[LISTENER]["virtualOutbound"].filter_chains[0].filters[0]) == "PassthroughCluster"


def test_virtual_outbound_hands_over_to_unbound_port_listeners() -> None:
    res = build(api())
    vo = res[LISTENER]["virtualOutbound"]
    assert vo.address.socket_address.port_value == 15001 and vo.use_original_dst.value
    assert [f.name for f in vo.listener_filters] == ["envoy.filters.listener.original_dst"]
    port = res[LISTENER]["0.0.0.0_8080"]
    assert not port.bind_to_port.value


def test_tcp_services_are_matched_by_vip_or_endpoint_ips_and_conflicts_keep_the_first() -> None:
    db = Service(
        "db.demo.svc.cluster.local",
        "demo",
        (Port(5432, "TCP", "tcp"),),
        addresses=("240.240.0.20",),
        endpoints=(Endpoint("10.0.0.5"),),
    )
    a = Service(
        "a.demo.svc.cluster.local", "demo", (Port(5432, "TCP", "tcp"),), endpoints=(Endpoint("10.0.0.6"),)
    )
    b = Service(
        "b.demo.svc.cluster.local",
        "demo",
        (Port(5432, "TCP", "tcp"),),
        endpoints=(Endpoint("10.0.0.6"), Endpoint("10.0.0.7")),
    )
    lst = build(db, a, b)[LISTENER]["0.0.0.0_5432"]
    got = {
        c.name: [f"{r.address_prefix}/{r.prefix_len.value}" for r in c.filter_chain_match.prefix_ranges]
        for c in lst.filter_chains
    }
    assert got == {
        "outbound|5432||a.demo.svc.cluster.local": ["10.0.0.6/32"],
        "outbound|5432||b.demo.svc.cluster.local": ["10.0.0.7/32"],
        "outbound|5432||db.demo.svc.cluster.local": ["240.240.0.20/32"],
    }
    assert not lst.listener_filters  # plain TCP needs no inspection


def test_duplicate_domains_are_dropped_not_sent_twice() -> None:
    one = api(addresses=("240.240.0.10",))
    two = Service(
        "zzz.demo.svc.cluster.local", "demo", (Port(8080, "HTTP", "http"),), addresses=("240.240.0.10",)
    )
    rc = build(one, two)[ROUTE]["8080"]
    domains = [d for vh in rc.virtual_hosts for d in vh.domains]
    assert len(domains) == len(set(domains))


def test_export_to_hides_services_from_other_namespaces() -> None:
    hidden = Service("p.other.svc.cluster.local", "other", (Port(80, "HTTP", "http"),), export_to=(".",))
    res = build(hidden)
    assert not any("p.other" in n for n in res[CLUSTER])


def test_output_is_deterministic_and_fits_a_snapshot() -> None:
    svcs = [
        api(addresses=("240.240.0.10",)),
        Service("db.demo.svc.cluster.local", "demo", (Port(5432, "TCP", "tcp"),)),
    ]
    first = Snapshot.from_messages(all_messages(build(*svcs)))
    second = Snapshot.from_messages(all_messages(build(*reversed(svcs))))
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert first.version(t) == second.version(t)


def test_gateway_mode_gets_clusters_only_for_now() -> None:
    from dataclasses import replace

    res = build_proxy_resources(replace(PROXY, mode="gateway"), [api()], ConfigIndex(), MeshOptions())
    assert res[LISTENER] == {} and res[ROUTE] == {}
    assert "outbound|8080||api.demo.svc.cluster.local" in res[CLUSTER]
