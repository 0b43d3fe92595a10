"""The capture section: defaults, parsing, and the exact message for every kind of bad input."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from vmagent.agent.capture_config import CaptureConfig, ProxyIds, load_capture_config
from vmagent.common.errors import ConfigError

SRC = "/etc/vmagent/config.yaml"


def parse(data: Any) -> CaptureConfig:
    return CaptureConfig.from_mapping(data, SRC)


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


def test_defaults_are_safe() -> None:
    cfg = CaptureConfig()
    assert cfg.enabled and cfg.inbound
    assert cfg.include_inbound_ports == "*"
    assert cfg.exclude_inbound_ports == ()
    assert cfg.include_outbound_cidrs == "*"
    assert cfg.exclude_outbound_cidrs == ()
    assert cfg.exclude_outbound_ports == ()
    assert cfg.dns is True  # mesh names resolve after a plain join (opt-out: capture.dns: false)
    assert cfg.ipv6 is None
    assert cfg.backend == "auto"
    assert cfg.proxy_user == "vmagent-proxy"


def test_absent_section_gives_defaults_with_source() -> None:
    cfg = parse(None)
    assert cfg == CaptureConfig()
    assert cfg.source == SRC


def test_full_section_is_parsed() -> None:
    cfg = parse(
        {
            "enabled": False,
            "inbound": True,
            "include_inbound_ports": [8080, "9090"],
            "exclude_inbound_ports": [15000, 15000, 9000],
            "include_outbound_cidrs": ["10.0.0.0/8", "fd00::/8", "192.0.2.1"],
            "exclude_outbound_cidrs": ["10.9.0.0/16"],
            "exclude_outbound_ports": [5432],
            "dns": True,
            "ipv6": False,
            "backend": "legacy",
            "proxy_user": "envoy",
        }
    )
    assert cfg.enabled is False
    assert cfg.include_inbound_ports == (8080, 9090)
    assert cfg.exclude_inbound_ports == (15000, 9000)  # duplicates dropped, order kept
    assert cfg.include_outbound_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    )
    assert cfg.exclude_outbound_cidrs == (ipaddress.ip_network("10.9.0.0/16"),)
    assert cfg.exclude_outbound_ports == (5432,)
    assert (cfg.dns, cfg.ipv6, cfg.backend, cfg.proxy_user) == (True, False, "legacy", "envoy")


@pytest.mark.parametrize("value", ["*", ["*"]])
def test_star_means_all(value: Any) -> None:
    cfg = parse({"include_inbound_ports": value, "include_outbound_cidrs": value})
    assert cfg.include_inbound_ports == "*"
    assert cfg.include_outbound_cidrs == "*"


def test_ipv6_auto_spelled_out() -> None:
    assert parse({"ipv6": "auto"}).ipv6 is None
    assert parse({"ipv6": True}).ipv6 is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"exclude_inbound_ports": [22, 80, "ab"]},
            "capture.exclude_inbound_ports[2]: 'ab' is not a port number",
        ),
        (
            {"exclude_outbound_ports": [70000]},
            "capture.exclude_outbound_ports[0]: port 70000 is out of range (1-65535)",
        ),
        (
            {"include_inbound_ports": [8080, 0]},
            "capture.include_inbound_ports[1]: port 0 is out of range (1-65535)",
        ),
        ({"exclude_inbound_ports": [True]}, "capture.exclude_inbound_ports[0]: True is not a port number"),
        ({"exclude_inbound_ports": [1.5]}, "capture.exclude_inbound_ports[0]: 1.5 is not a port number"),
        (
            {"exclude_outbound_ports": 80},
            "capture.exclude_outbound_ports: expected a list of port numbers, got a number 80",
        ),
        (
            {"include_inbound_ports": "all"},
            "capture.include_inbound_ports: expected a list of port numbers, got a string 'all'",
        ),
        (
            {"exclude_outbound_cidrs": ["10.0.0.0/8", "10.0.0.300/8"]},
            "capture.exclude_outbound_cidrs[1]: '10.0.0.300/8' is not an IP address or CIDR",
        ),
        (
            {"include_outbound_cidrs": ["10.1.2.3/8"]},
            "capture.include_outbound_cidrs[0]: '10.1.2.3/8' has host bits set (did you mean '10.0.0.0/8'?)",
        ),
        (
            {"exclude_outbound_cidrs": [42]},
            "capture.exclude_outbound_cidrs[0]: 42 is not an IP address or CIDR",
        ),
        (
            {"backend": "iptables"},
            "capture.backend: unknown backend 'iptables' (expected auto, nft or legacy)",
        ),
        ({"dns": "yes"}, "capture.dns: expected true or false, got 'yes'"),
        ({"ipv6": "maybe"}, "capture.ipv6: expected true or false or auto, got 'maybe'"),
        ({"proxy_user": ""}, "capture.proxy_user: expected a user name, got ''"),
        ({"dns_port": 53}, "capture.dns_port: unknown field (known: "),
        (["dns"], "capture: expected a mapping, got a list"),
    ],
)
def test_bad_input_names_file_object_and_field(data: Any, message: str) -> None:
    text = error_of(data)
    assert text.startswith(f"{SRC}: {message}"), text


def test_missing_proxy_user_is_a_clear_error() -> None:
    def lookup(user: str) -> ProxyIds:
        raise KeyError(user)

    cfg = parse({"proxy_user": "no-such-proxy"})
    with pytest.raises(ConfigError) as info:
        cfg.proxy_ids(lookup)
    assert str(info.value) == (
        f"{SRC}: capture.proxy_user: user 'no-such-proxy' (or its primary group) does not exist on this "
        "machine; create it (useradd --system no-such-proxy) or set capture.proxy_user"
    )


def test_proxy_ids_are_looked_up_for_real() -> None:
    ids = parse({"proxy_user": "root"}).proxy_ids()
    assert (ids.user, ids.uid, ids.gid) == ("root", 0, 0)
    with pytest.raises(ConfigError, match="user 'vmcap-surely-absent-user'"):
        parse({"proxy_user": "vmcap-surely-absent-user"}).proxy_ids()


def test_load_missing_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_capture_config(tmp_path / "config.yaml")
    assert cfg == CaptureConfig()
    assert cfg.source == str(tmp_path / "config.yaml")


def test_load_reads_the_capture_section(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("trust_domain: cluster.local\ncapture:\n  dns: true\n  exclude_inbound_ports: [9000]\n")
    cfg = load_capture_config(path)
    assert cfg.dns is True
    assert cfg.exclude_inbound_ports == (9000,)


def test_load_without_capture_section(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("trust_domain: cluster.local\n")
    assert load_capture_config(path) == CaptureConfig()


def test_load_bad_values_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("capture:\n  exclude_inbound_ports: [22, 80, ab]\n")
    with pytest.raises(ConfigError) as info:
        load_capture_config(path)
    assert str(info.value) == f"{path}: capture.exclude_inbound_ports[2]: 'ab' is not a port number"


def test_load_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("capture:\n  dns: [true\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML at line \d+"):
        load_capture_config(path)


def test_load_non_mapping_document(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("- capture\n")
    with pytest.raises(ConfigError, match=rf"^{path}: the agent config must be a mapping, got a list$"):
        load_capture_config(path)
