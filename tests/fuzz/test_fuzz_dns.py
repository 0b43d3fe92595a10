"""Fuzz the agent's DNS proxy with malformed packets, over real UDP and TCP on loopback: it never answers
a response, never dies, and still answers a real query afterwards. The upstream is the tests' fake DNS
server (no real resolver may be reached from tests)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from dnslib import DNSRecord
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.conftest import EXECUTIONS, measured
from tests.unit.test_dns_helpers import FakeUpstream, addresses, ask
from vmagent.agent.dns import DnsProxy
from vmagent.agent.dns_table import NameTable

API = "api.demo.svc.cluster.local"


UDP = "dns: udp packets"
TCP = "dns: tcp messages"
MODULES = ("vmagent.agent.dns", "vmagent.agent.dns_table", "vmagent.agent.dns_upstream")


@pytest.fixture(scope="module")
def proxy() -> Iterator[DnsProxy]:
    """The proxy serves in its own threads, so its coverage is measured over its whole life (one figure
    for both targets), which includes its start and stop."""
    table = NameTable(namespace="demo")
    table.replace({API: ["10.1.0.1"]})
    with FakeUpstream({"outside.example": ["192.0.2.7"]}) as up, measured((UDP, TCP), *MODULES):
        with DnsProxy(table=table, upstreams=[up.address], port=0, upstream_timeout=0.5) as p:
            yield p


def _query_bytes() -> bytes:
    return bytes(DNSRecord.question(API, "A").pack())


GOOD = _query_bytes()


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=700))
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=40))


@given(packets())
@example(b"")
@example(b"\x00" * 12)
@example(GOOD[:2] + b"\x81\x80" + GOOD[4:])  # a response sent to the proxy: never answered
@example(GOOD[:4] + b"\xff\xff" + GOOD[6:])  # 65535 questions announced, one present
def test_malformed_udp_packets(proxy: DnsProxy, packet: bytes) -> None:
    """Each fuzz packet is followed by a good query on the same socket; every reply that comes back before
    the good one's must be a response to the fuzz packet (never an echo of it)."""
    EXECUTIONS[UDP] += 1
    probe = DNSRecord.question(API, "A")
    probe.header.id = (int.from_bytes(packet[:2].ljust(2, b"\0"), "big") + 1) % 65536
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(packet, ("127.0.0.1", proxy.port))
        s.sendto(bytes(probe.pack()), ("127.0.0.1", proxy.port))
        while True:
            reply, _ = s.recvfrom(65535)
            if reply[:2] == probe.header.id.to_bytes(2, "big"):
                assert addresses(DNSRecord.parse(reply)) == ["10.1.0.1"]
                return
            assert len(reply) >= 12
            assert reply[2] & 0x80, "the proxy sent something that is not a response"
            assert reply[:2] == packet[:2], "a reply must carry the query's id"


@given(packets())
def test_malformed_tcp_messages(proxy: DnsProxy, packet: bytes) -> None:
    EXECUTIONS[TCP] += 1
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65535):
                pass
        except (TimeoutError, ConnectionResetError):
            pass


def test_proxy_still_answers_after_the_fuzzing(proxy: DnsProxy) -> None:
    for tcp in (False, True):
        assert addresses(ask(API, "A", proxy.port, tcp=tcp)) == ["10.1.0.1"]
        assert addresses(ask("outside.example", "A", proxy.port, tcp=tcp)) == ["192.0.2.7"]
