"""The agent config sections parsed by the daemon: safe defaults and errors naming file and field."""

from __future__ import annotations

import pytest

from vmagent.agent.sections import parse_envoy, parse_identity, parse_registration, parse_status
from vmagent.common.errors import ConfigError

SRC = "/etc/vmagent/config.yaml"


def test_defaults() -> None:
    assert parse_envoy(None, SRC).run_as == "vmagent-proxy"
    assert parse_status(None, SRC).port == 15020
    assert parse_envoy(None, SRC).admin_tcp() is None  # the admin API is a Unix socket by default
    assert parse_envoy({"admin_address": "127.0.0.1:15000"}, SRC).admin_tcp() == ("127.0.0.1", 15000)
    assert parse_registration(None, SRC).enabled is True
    assert parse_identity(None, SRC).key_algorithm == "ec-p256"


@pytest.mark.parametrize(
    ("parse", "data", "message"),
    [
        (
            parse_envoy,
            {"prometheus_port": 70000},
            f"{SRC}: envoy.prometheus_port: 70000 is not a port number",
        ),
        (
            parse_envoy,
            {"admin_port": 15000},
            f"{SRC}: envoy.admin_port: no longer supported: Envoy's admin API",
        ),
        (
            parse_envoy,
            {"admin_address": "localhost"},
            f"{SRC}: envoy.admin_address: 'localhost' is not HOST:PORT",
        ),
        (parse_envoy, {"log_level": "loud"}, f"{SRC}: envoy.log_level: 'loud' is not an Envoy log level"),
        (parse_envoy, {"colour": 1}, f"{SRC}: envoy.colour: unknown field"),
        (parse_status, {"port": "x"}, f"{SRC}: status.port: expected int, got 'x'"),
        (parse_registration, {"labels": ["a"]}, f"{SRC}: registration.labels: expected dict, got ['a']"),
        (
            parse_registration,
            {"labels": {"v": 2}},
            f"{SRC}: registration.labels.v: label keys and values must be strings",
        ),
        (parse_registration, {"enabled": "yes"}, f"{SRC}: registration.enabled: expected bool, got 'yes'"),
        (
            parse_identity,
            {"key_algorithm": "dsa"},
            f"{SRC}: identity.key_algorithm: 'dsa' is not ec-p256, rsa-2048 or rsa-4096",
        ),
        (parse_identity, {"cert_ttl_seconds": -1}, f"{SRC}: identity.cert_ttl_seconds: must be 0"),
        (
            parse_identity,
            {"cert_ttl_seconds": "1h"},
            f"{SRC}: identity.cert_ttl_seconds: expected int, got '1h'",
        ),
    ],
)
def test_bad_values_name_the_file_and_field(parse, data, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        parse(data, SRC)
    assert str(err.value).startswith(message), str(err.value)
