"""NameTable: what names the DNS proxy answers, and that a new table replaces the old one at once."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from vmagent.agent.dns_table import NameTable, NameTableError

API = "api.demo.svc.cluster.local"


def ips(*texts: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(t) for t in texts)


def test_exact_lookup_ignores_case_and_trailing_dot() -> None:
    table = NameTable()
    table.replace({"DB.Example.COM.": ["10.0.0.7", "fd00::7"]})
    for name in ("db.example.com", "DB.EXAMPLE.COM.", "db.example.com."):
        assert table.lookup(name) == ips("10.0.0.7", "fd00::7")
    assert table.lookup("other.example.com") is None
    assert "db.example.com." in table
    assert len(table) == 1


def test_short_names_in_the_vms_own_namespace() -> None:
    table = NameTable(namespace="demo")
    table.replace({API: ["10.1.0.1"]})
    for name in ("api", "api.demo", "api.demo.svc", API, "API.Demo."):
        assert table.lookup(name) == ips("10.1.0.1"), name
    assert table.names() == ["api", "api.demo", "api.demo.svc", API]
    assert len(table) == 1  # short names are not hosts


def test_bare_name_only_for_the_vms_namespace() -> None:
    table = NameTable(namespace="other")
    table.replace({API: ["10.1.0.1"]})
    assert table.lookup("api.demo") == ips("10.1.0.1")
    assert table.lookup("api.demo.svc") == ips("10.1.0.1")
    assert table.lookup("api") is None
    assert NameTable().lookup("api") is None  # no namespace at all: no bare names either


def test_no_short_names_outside_the_cluster_domain() -> None:
    table = NameTable(namespace="demo")
    table.replace({"db.example.com": ["10.0.0.7"], "a.b.demo.svc.cluster.local": ["10.0.0.8"]})
    assert table.lookup("db") is None
    assert table.lookup("db.example") is None
    # only NAME.NS.svc.<domain> has short names; a deeper name is answered only as itself
    assert table.lookup("a.b.demo") is None
    assert table.names() == ["a.b.demo.svc.cluster.local", "db.example.com"]


def test_custom_cluster_domain() -> None:
    table = NameTable(namespace="demo", cluster_domain="mesh.internal.")
    table.replace({"api.demo.svc.mesh.internal": ["10.1.0.1"], API: ["10.1.0.2"]})
    assert table.lookup("api.demo") == ips("10.1.0.1")
    assert table.lookup("api") == ips("10.1.0.1")


def test_a_host_sent_by_the_control_plane_beats_a_short_name() -> None:
    table = NameTable(namespace="demo")
    table.replace({API: ["10.1.0.1"], "api.demo": ["192.0.2.50"], "api": ["192.0.2.51"]})
    assert table.lookup("api.demo") == ips("192.0.2.50")
    assert table.lookup("api") == ips("192.0.2.51")
    assert table.lookup("api.demo.svc") == ips("10.1.0.1")


def test_duplicate_hosts_after_normalising_are_merged() -> None:
    table = NameTable()
    table.replace({"a.example": ["10.0.0.1"], "A.EXAMPLE.": ["10.0.0.2", "10.0.0.1"]})
    assert table.lookup("a.example") == ips("10.0.0.1", "10.0.0.2")


def test_wildcards_and_hosts_without_addresses_are_left_to_upstream() -> None:
    table = NameTable()
    table.replace({"*.example.com": ["10.0.0.1"], "empty.example.com": [], "ok.example.com": ["10.0.0.2"]})
    assert table.names() == ["ok.example.com"]
    assert table.lookup("x.example.com") is None
    assert table.lookup("empty.example.com") is None


def test_replace_swaps_the_whole_table() -> None:
    table = NameTable()
    table.replace({"old.example": ["10.0.0.1"]})
    table.replace({"new.example": ["10.0.0.2"]})
    assert table.lookup("old.example") is None
    assert table.lookup("new.example") == ips("10.0.0.2")
    table.replace({})
    assert table.names() == []


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"a.example": ["10.0.0.300"]}, "'10.0.0.300' of 'a.example'"),
        ({"a.example": ["not-an-ip"]}, "'not-an-ip'"),
        ({"a.example": "10.0.0.1"}, "must be a list"),
        ({"bad name.example": ["10.0.0.1"]}, "'bad name.example'"),
        ({"a..example": ["10.0.0.1"]}, "invalid label ''"),
        ({"x" * 64 + ".example": ["10.0.0.1"]}, "invalid label"),
    ],
)
def test_a_bad_table_is_refused_and_the_old_one_kept(mapping: dict[str, list[str]], needle: str) -> None:
    table = NameTable()
    table.replace({"keep.example": ["10.0.0.9"]})
    with pytest.raises(NameTableError) as err:
        table.replace({"fine.example": ["10.0.0.1"], **mapping})
    assert needle in str(err.value)
    assert table.names() == ["keep.example"]
    assert table.lookup("fine.example") is None


def test_readers_see_either_the_old_or_the_new_table_never_a_mix() -> None:
    table = NameTable(namespace="demo")
    one = {f"s{i}.demo.svc.cluster.local": ["10.0.1.1"] for i in range(50)}
    two = {f"t{i}.demo.svc.cluster.local": ["10.0.2.2"] for i in range(50)}
    table.replace(one)
    expected = {tuple(sorted(_all_names(one))), tuple(sorted(_all_names(two)))}
    seen: list[tuple[str, ...]] = []
    done = threading.Event()

    def reader() -> None:
        deadline = time.monotonic() + 5
        while not done.is_set() and time.monotonic() < deadline and len(seen) < 5000:
            seen.append(tuple(table.names()))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(300):
        table.replace(two if i % 2 else one)
    done.set()
    thread.join(10)
    assert seen, "the reader never ran"
    assert set(seen) <= expected


def _all_names(mapping: dict[str, list[str]]) -> list[str]:
    out = []
    for host in mapping:
        short = host.split(".")[0]
        out += [host, short, f"{short}.demo", f"{short}.demo.svc"]
    return out
