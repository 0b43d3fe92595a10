"""The agent/control-plane wire contract (vmagent.common.wire): the node id both sides read and write."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmagent.agent.envoy_bootstrap import BootstrapParams
from vmagent.common import wire
from vmagent.common.wire import NodeId, format_node_id, parse_node_id


@pytest.mark.parametrize(
    "node",
    [
        NodeId("sidecar", "10.0.0.5", "web-1", "prod", "cluster.local"),
        NodeId("router", "fd00::7", "ingress", "istio-system", "mesh.example"),
        NodeId("sidecar", "192.168.1.2", "db.primary", "data", "cluster.local"),  # a dotted VM name
    ],
)
def test_node_id_round_trips(node: NodeId) -> None:
    text = format_node_id(node.proxy_type, node.ip, node.name, node.namespace, node.dns_domain)
    assert str(node) == text
    assert parse_node_id(text) == node


def test_node_id_is_istios_format() -> None:
    assert (
        format_node_id("sidecar", "10.0.0.5", "web-1", "prod", "cluster.local")
        == "sidecar~10.0.0.5~web-1.prod~prod.svc.cluster.local"
    )


def test_the_agents_bootstrap_writes_what_the_control_plane_parses() -> None:
    params = BootstrapParams(
        node_ip="10.1.2.3",
        name="vm-7",
        namespace="shop",
        xds_socket=Path("/x"),
        sds_socket=Path("/s"),
        dns_domain="corp.local",
        proxy_type=wire.ROUTER,
    )
    assert parse_node_id(params.node_id) == NodeId("router", "10.1.2.3", "vm-7", "shop", "corp.local")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sidecar~10.0.0.5~web.prod",  # three parts
        "gateway~10.0.0.5~web.prod~prod.svc.cluster.local",  # unknown proxy type
        "sidecar~10.0.0.5~.prod~prod.svc.cluster.local",  # no name
        "sidecar~10.0.0.5~web~prod.svc.cluster.local~x",  # five parts
    ],
)
def test_malformed_node_ids_name_the_expected_format(bad: str) -> None:
    with pytest.raises(ValueError, match=r"TYPE~IP~NAME\.NAMESPACE~NAMESPACE\.svc\.DOMAIN"):
        parse_node_id(bad)
