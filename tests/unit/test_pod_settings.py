"""Pod mode's settings: flags first, then Istio's injected environment variables; a missing one named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmagent.agent.pod import settings_from
from vmagent.common.errors import ConfigError

ENV = {
    "POD_NAME": "web-1",
    "POD_NAMESPACE": "default",
    "INSTANCE_IP": "10.0.0.5",
    "SERVICE_ACCOUNT": "web",
    "CA_ADDR": "vmagent-cp.vmagent-system.svc:15012",
}


def test_from_the_environment() -> None:
    s = settings_from({}, ENV)
    assert (s.pod_name, s.namespace, s.pod_ip, s.service_account) == ("web-1", "default", "10.0.0.5", "web")
    assert s.cp_mtls_address == "vmagent-cp.vmagent-system.svc:15013"
    assert settings_from({}, {**ENV, "XDS_ADDR": "xds:15013"}).cp_mtls_address == "xds:15013"
    assert s.identity.uri == "spiffe://cluster.local/ns/default/sa/web"
    assert s.token_file == Path("/var/run/secrets/tokens/istio-token")


def test_flags_win_over_the_environment() -> None:
    s = settings_from({"pod_name": "other", "cp_mtls_address": "cp:9999", "token_file": "/t"}, ENV)
    assert (s.pod_name, s.cp_mtls_address, s.token_file) == ("other", "cp:9999", Path("/t"))


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("POD_NAME", r"--pod-name \(or \$POD_NAME\) is required"),
        ("INSTANCE_IP", r"--pod-ip \(or \$INSTANCE_IP\) is required"),
        ("CA_ADDR", r"--cp-address \(or \$CA_ADDR\) is required"),
    ],
)
def test_a_missing_setting_is_named(drop: str, message: str) -> None:
    env = {k: v for k, v in ENV.items() if k != drop}
    with pytest.raises(ConfigError, match=message):
        settings_from({}, env)


def test_a_bad_address_is_named() -> None:
    with pytest.raises(ConfigError, match="--cp-address: 'cp' is not HOST:PORT"):
        settings_from({"cp_address": "cp"}, ENV)


def test_a_pod_ip_that_is_not_an_address_is_named() -> None:
    with pytest.raises(ConfigError, match=r"--pod-ip \(or \$INSTANCE_IP\): 'pod' is not an IP address"):
        settings_from({"pod_ip": "pod"}, ENV)
