"""read_resolv_conf: which upstream resolvers the DNS proxy takes from the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmagent.agent.dns_upstream import Upstream, parse_upstream, read_resolv_conf
from vmagent.common.errors import VmagentError


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_nameservers_in_order_without_comments_options_or_duplicates(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "resolv.conf",
        "# generated\n"
        "search corp.example\n"
        "nameserver 10.0.0.2   # primary\n"
        "; nameserver 10.0.0.99\n"
        "nameserver fd00::53\n"
        "nameserver not-an-ip\n"
        "nameserver 10.0.0.2\n"
        "options ndots:5 timeout:1\n"
        "nameserver 10.0.0.3\n",
    )
    assert read_resolv_conf(conf, resolved_path=str(tmp_path / "absent")) == [
        "10.0.0.2",
        "fd00::53",
        "10.0.0.3",
    ]


def test_systemd_resolved_stub_is_replaced_by_its_uplinks(tmp_path: Path) -> None:
    stub = write(tmp_path / "resolv.conf", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    uplinks = write(tmp_path / "uplinks.conf", "nameserver 192.168.1.1\nnameserver 2001:db8::1\n")
    assert read_resolv_conf(stub, resolved_path=uplinks) == ["192.168.1.1", "2001:db8::1"]


def test_stub_is_kept_when_resolved_lists_no_uplinks(tmp_path: Path) -> None:
    stub = write(tmp_path / "resolv.conf", "nameserver 127.0.0.53\n")
    assert read_resolv_conf(stub, resolved_path=str(tmp_path / "absent")) == ["127.0.0.53"]
    empty = write(tmp_path / "empty.conf", "# no servers yet\n")
    assert read_resolv_conf(stub, resolved_path=empty) == ["127.0.0.53"]


def test_other_loopback_resolvers_are_kept(tmp_path: Path) -> None:
    uplinks = write(tmp_path / "uplinks.conf", "nameserver 192.168.1.1\n")
    dnsmasq = write(tmp_path / "resolv.conf", "nameserver 127.0.0.1\n")
    assert read_resolv_conf(dnsmasq, resolved_path=uplinks) == ["127.0.0.1"]
    mixed = write(tmp_path / "mixed.conf", "nameserver 127.0.0.53\nnameserver 10.0.0.2\n")
    assert read_resolv_conf(mixed, resolved_path=uplinks) == ["127.0.0.53", "10.0.0.2"]


def test_no_nameservers_is_an_empty_list(tmp_path: Path) -> None:
    assert read_resolv_conf(write(tmp_path / "resolv.conf", "search x\n")) == []


def test_a_missing_resolv_conf_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(VmagentError, match=f"cannot read the host's resolvers from {missing}: No such file"):
        read_resolv_conf(str(missing))


def test_every_resolv_conf_entry_is_a_valid_upstream(tmp_path: Path) -> None:
    conf = write(tmp_path / "resolv.conf", "nameserver 10.0.0.2\nnameserver fe80::1%eth0\n")
    assert [parse_upstream(s) for s in read_resolv_conf(conf)] == [
        Upstream("10.0.0.2", 53),
        Upstream("fe80::1%eth0", 53),
    ]
    assert str(parse_upstream("[fd00::2]:5353")) == "[fd00::2]:5353"
