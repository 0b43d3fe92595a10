"""The ``dns:`` config section: defaults, validation messages naming file and field, building proxies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_dns_helpers import addresses, ask
from vmagent.agent.dns_config import DnsConfig
from vmagent.agent.dns_table import NameTable
from vmagent.common.errors import ConfigError

SRC = "/etc/vmagent/config.yaml"


def test_defaults() -> None:
    config = DnsConfig.from_mapping(None, SRC)
    assert (config.enabled, config.listen, config.port, config.upstreams) == (
        True,
        ("127.0.0.1",),
        15053,
        None,
    )


def test_full_section() -> None:
    config = DnsConfig.from_mapping(
        {
            "enabled": False,
            "listen": ["127.0.0.1", "::1"],
            "port": 5353,
            "upstreams": ["10.0.0.2", "[fd00::2]:53"],
            "ttl": 5,
            "upstream_timeout": 1,
        },
        SRC,
    )
    assert config.listen == ("127.0.0.1", "::1")
    assert config.upstreams == ("10.0.0.2", "[fd00::2]:53")
    assert config.resolved_upstreams() == ["10.0.0.2", "[fd00::2]:53"]
    assert (config.enabled, config.port, config.ttl, config.upstream_timeout) == (False, 5353, 5, 1.0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"upstreams": ["10.0.0.2", "ns1.example"]},
            "dns.upstreams[1]: DNS upstream 'ns1.example' is not valid",
        ),
        ({"upstreams": "10.0.0.2:0"}, "dns.upstreams[0]: DNS upstream '10.0.0.2:0' has an invalid port"),
        ({"listen": ["localhost"]}, "dns.listen[0]: 'localhost' is not an IP address"),
        ({"listen": []}, "dns.listen: needs at least one address"),
        ({"port": "15053"}, "dns.port: expected a port number 1-65535, got '15053'"),
        ({"port": 70000}, "dns.port: expected a port number"),
        ({"ttl": -1}, "dns.ttl: expected seconds"),
        ({"upstream_timeout": 0}, "dns.upstream_timeout: expected seconds"),
        ({"enabled": "yes"}, "dns.enabled: expected true or false"),
        ({"upstream": ["10.0.0.2"]}, "dns.upstream: unknown field (known: enabled, listen, port"),
    ],
)
def test_bad_values_name_the_file_and_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        DnsConfig.from_mapping(section, SRC)
    assert str(err.value).startswith(f"{SRC}: ")
    assert message in str(err.value)


def test_upstreams_default_to_the_hosts_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.0.0.53\n")
    config = DnsConfig.from_mapping({"resolv_conf": str(conf)}, SRC)
    assert config.resolved_upstreams() == ["10.0.0.53"]


def test_build_gives_one_working_proxy_per_listen_address() -> None:
    table = NameTable()
    table.replace({"db.mesh.example": ["10.1.0.2"]})
    config = DnsConfig(listen=("127.0.0.1", "::1"), port=0, upstreams=())
    proxies = config.build(table)
    assert [p.listen_host for p in proxies] == ["127.0.0.1", "::1"]
    for proxy in proxies:
        with proxy:
            assert addresses(ask("db.mesh.example", "A", proxy.port, host=proxy.listen_host)) == ["10.1.0.2"]
