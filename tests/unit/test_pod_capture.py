"""The init step's capture settings from a pod's Istio annotations (a downward API annotations file)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from vmagent.agent.pod_capture import pod_capture_config, read_annotations
from vmagent.common.errors import ConfigError


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "annotations"
    path.write_text(text)
    return path


def test_istio_annotations_override_the_config_section(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        'kubectl.kubernetes.io/restartedAt="2026-01-01T00:00:00Z"\n'
        'traffic.sidecar.istio.io/includeInboundPorts="8080,9090"\n'
        'traffic.sidecar.istio.io/excludeInboundPorts="9090"\n'
        'traffic.sidecar.istio.io/excludeOutboundPorts="5432, 6379"\n'
        'traffic.sidecar.istio.io/includeOutboundIPRanges="10.96.0.0/12,10.244.0.0/16"\n'
        'traffic.sidecar.istio.io/excludeOutboundIPRanges="10.96.0.1/32"\n',
    )
    cfg = pod_capture_config(path, {"exclude_outbound_ports": [22], "backend": "nft"})
    assert cfg.enabled and not cfg.dns
    assert cfg.backend == "nft"
    assert cfg.include_inbound_ports == (8080, 9090)
    assert cfg.exclude_inbound_ports == (9090,)
    assert cfg.exclude_outbound_ports == (5432, 6379)  # the annotation replaces the section's list
    assert cfg.include_outbound_cidrs == (
        ipaddress.ip_network("10.96.0.0/12"),
        ipaddress.ip_network("10.244.0.0/16"),
    )
    assert cfg.exclude_outbound_cidrs == (ipaddress.ip_network("10.96.0.1/32"),)


def test_star_and_no_annotations(tmp_path: Path) -> None:
    cfg = pod_capture_config(_file(tmp_path, 'traffic.sidecar.istio.io/includeInboundPorts="*"\n'), None)
    assert cfg.include_inbound_ports == "*"
    assert cfg.include_outbound_cidrs == "*"
    assert pod_capture_config(_file(tmp_path, ""), None).exclude_inbound_ports == ()


def test_a_bad_value_names_the_annotation_and_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, 'traffic.sidecar.istio.io/excludeOutboundPorts="5432,http"\n')
    with pytest.raises(
        ConfigError,
        match=r"annotations: traffic.sidecar.istio.io/excludeOutboundPorts\[1\]: 'http' is not a port number",
    ):
        pod_capture_config(path, None)
    path = _file(tmp_path, 'traffic.sidecar.istio.io/includeOutboundIPRanges="10.0.0.1/8"\n')
    with pytest.raises(ConfigError, match=r"includeOutboundIPRanges.*host bits set"):
        pod_capture_config(path, None)


def test_a_file_that_is_not_a_downward_api_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"annotations:2: expected key=\"value\""):
        read_annotations(_file(tmp_path, 'a="b"\nnot an annotation\n'))
    with pytest.raises(ConfigError, match="cannot read the pod's annotations"):
        read_annotations(tmp_path / "missing")
