"""The join address `token create` prints: what `serve --listen` names, never a wildcard."""

from __future__ import annotations

from vmagent.controlplane.grpc_server import join_address


def test_a_named_host_is_kept() -> None:
    assert join_address("10.1.2.3:15012") == "10.1.2.3:15012"
    assert join_address("[fd00::5]:15012") == "[fd00::5]:15012"


def test_a_wildcard_becomes_a_reachable_address_of_this_host() -> None:
    for listen in ("0.0.0.0:15012", "[::]:15012", ":15012"):
        host, _, port = join_address(listen).rpartition(":")
        assert port == "15012"
        assert host not in ("0.0.0.0", "::", "[::]", "") and not host.startswith("127."), listen
