"""DnsProxy on loopback: mesh names answered from the table, the rest forwarded to a fake upstream."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dnslib import RCODE, DNSRecord

from tests.harness import free_port, wait_for
from tests.unit.test_dns_helpers import FakeUpstream, addresses, ask, read_tcp_message
from vmagent.agent.dns import DnsProxy
from vmagent.agent.dns_table import NameTable
from vmagent.common.errors import VmagentError

API = "api.demo.svc.cluster.local"
BIG = [f"198.51.100.{i}" for i in range(1, 61)]  # 60 A records: about 1 KB, more than 512 bytes


@pytest.fixture
def table() -> NameTable:
    table = NameTable(namespace="demo")
    table.replace({API: ["10.1.0.1", "fd00::1"], "db.mesh.example": ["10.1.0.2"]})
    return table


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    records = {"outside.example": ["192.0.2.7", "2001:db8::7"], "big.example": BIG}
    with FakeUpstream(records, truncate_udp={"big.example"}) as up:
        yield up


def make_proxy(table: NameTable, upstreams: list[str], **kwargs: object) -> DnsProxy:
    kwargs.setdefault("upstream_timeout", 0.5)
    return DnsProxy(table=table, upstreams=upstreams, port=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def proxy(table: NameTable, upstream: FakeUpstream) -> Iterator[DnsProxy]:
    with make_proxy(table, [upstream.address]) as p:
        yield p


def dead_port() -> int:
    """A loopback port nobody listens on (UDP and TCP get refused at once)."""
    return free_port()


# -- mesh names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_mesh_name_is_answered_from_the_table(proxy: DnsProxy, upstream: FakeUpstream, tcp: bool) -> None:
    a = ask(API, "A", proxy.port, tcp=tcp)
    assert a.header.rcode == RCODE.NOERROR
    assert a.header.aa == 1
    assert addresses(a) == ["10.1.0.1"]
    assert [rr.ttl for rr in a.rr] == [30]
    aaaa = ask(API + ".", "AAAA", proxy.port, tcp=tcp)
    assert addresses(aaaa) == ["fd00::1"]
    both = ask(API, "ANY", proxy.port, tcp=tcp)
    assert sorted(addresses(both)) == ["10.1.0.1", "fd00::1"]
    assert upstream.queries == [], "mesh names must not reach the upstream"
    assert proxy.metrics.snapshot()["answered_locally"] == 3


def test_short_names_and_case(proxy: DnsProxy) -> None:
    for name in ("api", "api.demo", "API.DEMO.SVC"):
        assert addresses(ask(name, "A", proxy.port)) == ["10.1.0.1"], name


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_mesh_name_without_that_family_gets_an_empty_noerror(proxy: DnsProxy, tcp: bool) -> None:
    reply = ask("db.mesh.example", "AAAA", proxy.port, tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR  # not NXDOMAIN: the A answer must stay usable
    assert reply.header.aa == 1
    assert reply.rr == []
    other = ask("db.mesh.example", "MX", proxy.port, tcp=tcp)
    assert (other.header.rcode, other.rr) == (RCODE.NOERROR, [])


def test_a_new_table_is_answered_at_once(proxy: DnsProxy, table: NameTable, upstream: FakeUpstream) -> None:
    table.replace({"fresh.mesh.example": ["10.9.9.9"]})
    assert addresses(ask("fresh.mesh.example", "A", proxy.port)) == ["10.9.9.9"]
    # the name that left the table is no longer a mesh name: it goes upstream (which says NXDOMAIN)
    assert ask("db.mesh.example", "A", proxy.port).header.rcode == RCODE.NXDOMAIN
    assert upstream.seen("db.mesh.example") == ["udp"]


def test_a_large_mesh_answer_is_truncated_for_a_512_byte_client(
    table: NameTable, upstream: FakeUpstream
) -> None:
    table.replace({"many.mesh.example": BIG})
    with make_proxy(table, [upstream.address]) as proxy:
        small = ask("many.mesh.example", "A", proxy.port)
        assert small.header.tc == 1
        assert small.rr == []
        large = ask("many.mesh.example", "A", proxy.port, edns=4096)
        assert large.header.tc == 0
        assert sorted(addresses(large)) == sorted(BIG)
        assert sorted(addresses(ask("many.mesh.example", "A", proxy.port, tcp=True))) == sorted(BIG)


# -- forwarding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_other_names_are_forwarded_over_the_same_transport(
    proxy: DnsProxy, upstream: FakeUpstream, tcp: bool
) -> None:
    reply = ask("outside.example", "A", proxy.port, tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR
    assert addresses(reply) == ["192.0.2.7"]
    assert addresses(ask("outside.example", "AAAA", proxy.port, tcp=tcp)) == ["2001:db8::7"]
    missing = ask("nowhere.example", "A", proxy.port, tcp=tcp)
    assert missing.header.rcode == RCODE.NXDOMAIN
    proto = "tcp" if tcp else "udp"
    assert upstream.seen("outside.example") == [proto, proto]
    assert upstream.seen("nowhere.example") == [proto]
    assert proxy.metrics.snapshot()["forwarded"] == 3


def test_truncated_upstream_answer_is_fetched_again_over_tcp(proxy: DnsProxy, upstream: FakeUpstream) -> None:
    reply = ask("big.example", "A", proxy.port, edns=4096)
    assert reply.header.tc == 0
    assert sorted(addresses(reply)) == sorted(BIG)
    assert upstream.seen("big.example") == ["udp", "tcp"]


def test_an_answer_too_big_for_the_client_goes_back_truncated(
    proxy: DnsProxy, upstream: FakeUpstream
) -> None:
    reply = ask("big.example", "A", proxy.port)  # no EDNS: the client takes 512 bytes
    assert reply.header.tc == 1
    assert reply.rr == []
    # the client then retries over TCP, as resolvers do, and gets everything
    full = ask("big.example", "A", proxy.port, tcp=True)
    assert sorted(addresses(full)) == sorted(BIG)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_servfail_when_the_upstream_is_down(table: NameTable, tcp: bool) -> None:
    with make_proxy(table, [f"127.0.0.1:{dead_port()}"], upstream_timeout=1.0) as proxy:
        start = time.monotonic()
        reply = ask("outside.example", "A", proxy.port, tcp=tcp)
        elapsed = time.monotonic() - start
        assert reply.header.rcode == RCODE.SERVFAIL
        assert elapsed < 1.5, f"a refused upstream should fail fast, took {elapsed:.2f}s"
        assert proxy.metrics.snapshot()["failed"] == 1
        # mesh names still work with every upstream down
        assert addresses(ask(API, "A", proxy.port, tcp=tcp)) == ["10.1.0.1"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_silent_upstreams_time_out_and_give_servfail_within_the_deadline(table: NameTable, tcp: bool) -> None:
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s1, socket.socket(socket.AF_INET, kind) as s2:
        for s in (s1, s2):  # bound (and listening), never answering
            s.bind(("127.0.0.1", 0))
            if tcp:
                s.listen(8)
        silent = [f"127.0.0.1:{s.getsockname()[1]}" for s in (s1, s2)]
        with make_proxy(table, silent, upstream_timeout=0.3) as proxy:
            start = time.monotonic()
            reply = ask("outside.example", "A", proxy.port, tcp=tcp, timeout=5)
            elapsed = time.monotonic() - start
    assert reply.header.rcode == RCODE.SERVFAIL
    assert 0.55 <= elapsed < 1.5, f"two upstreams at 0.3 s each should take about 0.6 s, took {elapsed:.2f}s"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_the_next_upstream_is_tried(table: NameTable, upstream: FakeUpstream, tcp: bool) -> None:
    with make_proxy(table, [f"127.0.0.1:{dead_port()}", upstream.address]) as proxy:
        assert addresses(ask("outside.example", "A", proxy.port, tcp=tcp)) == ["192.0.2.7"]


def test_no_upstreams_at_all_gives_servfail(table: NameTable) -> None:
    with make_proxy(table, []) as proxy:
        assert ask("outside.example", "A", proxy.port).header.rcode == RCODE.SERVFAIL
        assert addresses(ask(API, "A", proxy.port)) == ["10.1.0.1"]


def test_upstream_sockets_carry_the_bypass_mark_when_allowed(proxy: DnsProxy) -> None:
    ask("outside.example", "A", proxy.port)
    if os.geteuid() == 0:
        assert proxy.mark_applied
    # without CAP_NET_ADMIN the query still went out, unmarked


# -- robustness ---------------------------------------------------------------------------------------


def test_garbage_gets_formerr_or_is_dropped_and_serving_goes_on(proxy: DnsProxy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"  # header + a broken question
        sock.sendto(bad, ("127.0.0.1", proxy.port))
        reply = DNSRecord.parse(sock.recv(512))
        assert reply.header.id == 0x1234
        assert reply.header.rcode == RCODE.FORMERR
        sock.sendto(b"\x00", ("127.0.0.1", proxy.port))  # too short to answer: dropped
    assert addresses(ask(API, "A", proxy.port)) == ["10.1.0.1"]
    wait_for(lambda: proxy.metrics.snapshot()["malformed"] == 2, timeout=3, what="two malformed counted")


def test_several_queries_on_one_tcp_connection(proxy: DnsProxy) -> None:
    names = [API, "outside.example", "db.mesh.example"]
    queries = [DNSRecord.question(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(q.pack())) + q.pack() for q in queries))
        replies = [DNSRecord.parse(read_tcp_message(sock)) for _ in queries]
    assert [r.header.id for r in replies] == [q.header.id for q in queries]
    assert [addresses(r) for r in replies] == [["10.1.0.1"], ["192.0.2.7"], ["10.1.0.2"]]


def test_tcp_connections_are_bounded(table: NameTable, upstream: FakeUpstream) -> None:
    with make_proxy(table, [upstream.address], max_tcp_connections=2) as proxy:
        idle = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(2)]
        try:
            wait_for(lambda: proxy.tcp_connections == 2, timeout=3, what="two connections held")
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as extra:
                assert extra.recv(1) == b"", "a connection over the limit must be closed"
            assert proxy.metrics.snapshot()["dropped"] == 1
        finally:
            idle[0].close()
        wait_for(lambda: proxy.tcp_connections == 1, timeout=3, what="a slot freed")
        assert addresses(ask(API, "A", proxy.port, tcp=True)) == ["10.1.0.1"]
        idle[1].close()


def test_idle_tcp_connections_are_closed(table: NameTable, upstream: FakeUpstream) -> None:
    with make_proxy(table, [upstream.address], tcp_idle_timeout=0.3) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            start = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - start < 3


# -- configuration errors and life cycle --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["dns.example.com", "10.0.0.1:99999", "10.0.0.1:x", "[fd00::1", "[fd00::1]53", "10.0.0.256", ""]
)
def test_a_bad_upstream_address_is_a_clear_error(table: NameTable, bad: str) -> None:
    with pytest.raises(VmagentError) as err:
        DnsProxy(table=table, upstreams=["10.0.0.1", bad])
    assert f"DNS upstream {bad!r}" in str(err.value)
    assert "e.g. 10.0.0.2" in str(err.value)


@pytest.mark.parametrize("good", ["10.0.0.1", "10.0.0.1:5353", "fd00::1", "[fd00::1]:5353", " 10.0.0.1 "])
def test_good_upstream_addresses(table: NameTable, good: str) -> None:
    DnsProxy(table=table, upstreams=[good])


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_a_port_in_use_is_a_clear_error(table: NameTable, kind: socket.SocketKind) -> None:
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen(1)
        port = holder.getsockname()[1]
        proxy = DnsProxy(table=table, upstreams=[], port=port)
        with pytest.raises(VmagentError) as err:
            proxy.start()
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert f"cannot listen on 127.0.0.1:{port}/{proto}" in str(err.value)
    assert "Address already in use" in str(err.value)


def test_an_address_not_on_this_host_is_a_clear_error(table: NameTable) -> None:
    proxy = DnsProxy(table=table, upstreams=[], listen_host="192.0.2.1", port=0)
    with pytest.raises(VmagentError, match=r"cannot listen on 192\.0\.2\.1:0/udp: Cannot assign"):
        proxy.start()


def test_the_proxy_itself_is_refused_as_an_upstream(table: NameTable) -> None:
    with pytest.raises(VmagentError, match=r"DNS upstream 127\.0\.0\.1:5353 is this DNS proxy itself"):
        DnsProxy(table=table, upstreams=["10.0.0.1", "127.0.0.1:5353"], port=5353)


def test_listen_host_must_be_an_ip(table: NameTable) -> None:
    with pytest.raises(VmagentError, match="listen address 'localhost' is not an IP address"):
        DnsProxy(table=table, upstreams=[], listen_host="localhost")


def test_stop_releases_the_port_and_start_again_works(table: NameTable) -> None:
    port = free_port()
    proxy = DnsProxy(table=table, upstreams=[], port=port)
    proxy.start()
    with pytest.raises(VmagentError, match="already started"):
        proxy.start()
    assert addresses(ask(API, "A", port)) == ["10.1.0.1"]
    proxy.stop()
    proxy.stop()  # idempotent
    again = DnsProxy(table=table, upstreams=[], port=port)
    with again:
        assert addresses(ask(API, "A", port, tcp=True)) == ["10.1.0.1"]


def test_ipv6_loopback(table: NameTable, upstream: FakeUpstream) -> None:
    with DnsProxy(table=table, upstreams=[upstream.address], listen_host="::1", port=0) as proxy:
        assert addresses(ask(API, "AAAA", proxy.port, host="::1")) == ["fd00::1"]
        assert addresses(ask("outside.example", "A", proxy.port, host="::1", tcp=True)) == ["192.0.2.7"]


def test_metrics_snapshot_counts_each_outcome(table: NameTable, upstream: FakeUpstream) -> None:
    with make_proxy(table, [upstream.address]) as proxy:
        ask(API, "A", proxy.port)
        ask("outside.example", "A", proxy.port)
        ask("outside.example", "A", proxy.port, tcp=True)
        assert proxy.metrics.snapshot() == {
            "answered_locally": 1,
            "forwarded": 2,
            "failed": 0,
            "malformed": 0,
            "dropped": 0,
        }


def test_a_burst_of_concurrent_queries_is_all_answered(proxy: DnsProxy, upstream: FakeUpstream) -> None:
    """200 UDP queries from 20 threads (bounded in count and time): mesh names and forwarded names mixed."""
    names = [API, "outside.example"] * 100

    def one(name: str) -> list[str]:
        return addresses(ask(name, "A", proxy.port, timeout=5))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, names, timeout=30))
    assert results == [["10.1.0.1"] if n == API else ["192.0.2.7"] for n in names]
    assert time.monotonic() - start < 30
    snapshot = proxy.metrics.snapshot()
    assert (snapshot["answered_locally"], snapshot["forwarded"], snapshot["dropped"]) == (100, 100, 0)
