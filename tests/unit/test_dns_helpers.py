"""Test helpers for the DNS proxy tests: a small dnslib-based upstream server and a client.

``FakeUpstream`` answers A/AAAA for the names it is given (NXDOMAIN otherwise) over UDP and TCP on one
port, logs every query it sees, and truncates its UDP answers for chosen names so a TCP retry is needed.
It also runs as a program (for the system test, inside a network namespace):

    python -m tests.unit.test_dns_helpers --listen 10.232.0.1 --port 53 --record outside.example=192.0.2.7
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import signal
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSServer


class _QuietLogger:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Resolver:
    def __init__(self, upstream: FakeUpstream) -> None:
        self._up = upstream

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname = str(request.q.qname).lower().rstrip(".")
        self._up.record_query(handler.protocol, qname, QTYPE[request.q.qtype], handler.client_address[0])
        reply = request.reply(ra=1, aa=1)
        addresses = self._up.records.get(qname)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for text in addresses:
            address = ipaddress.ip_address(text)
            if address.version == 4 and request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(text), ttl=300))
            elif address.version == 6 and request.q.qtype == QTYPE.AAAA:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(text), ttl=300))
        if handler.protocol == "udp" and qname in self._up.truncate_udp:
            return reply.truncate()  # header only, TC set (as some servers do)
        return reply


class FakeUpstream:
    """A DNS server on ``host``:``port`` (0 picks a free port for UDP and TCP alike); see module doc."""

    def __init__(
        self,
        records: Mapping[str, Iterable[str]],
        host: str = "127.0.0.1",
        port: int = 0,
        truncate_udp: Iterable[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.records = {k.lower().rstrip("."): list(v) for k, v in records.items()}
        self.truncate_udp = set(truncate_udp)
        self.queries: list[tuple[str, str, str, str]] = []  # (protocol, name, type, client address)
        self._lock = threading.Lock()
        self._log_path = log_path
        resolver = _Resolver(self)
        self.host = host
        # With port 0 the UDP port is free but the same TCP port may not be (another socket's ephemeral
        # port): then try another UDP port, a bounded number of times.
        for attempt in range(1 if port else 20):
            self._udp = DNSServer(resolver, address=host, port=port, logger=_QuietLogger())
            self.port = int(self._udp.server.server_address[1])
            try:
                self._tcp = DNSServer(resolver, address=host, port=self.port, tcp=True, logger=_QuietLogger())
                break
            except OSError as exc:
                self._udp.server.server_close()
                if port or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise

    def record_query(self, protocol: str, name: str, qtype: str, client: str) -> None:
        with self._lock:
            self.queries.append((protocol, name, qtype, client))
            if self._log_path is not None:
                with self._log_path.open("a") as f:
                    f.write(f"{protocol} {name} {qtype} {client}\n")

    def seen(self, name: str) -> list[str]:
        """The protocols over which ``name`` was asked, in order."""
        with self._lock:
            return [p for p, n, _, _ in self.queries if n == name]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        for server in (self._udp, self._tcp):
            # a short poll interval keeps stop() (socketserver.shutdown) quick
            loop = server.server.serve_forever
            threading.Thread(target=loop, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            server.server.shutdown()
            server.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ask(
    name: str,
    qtype: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    tcp: bool = False,
    edns: int | None = None,
    timeout: float = 5.0,
) -> DNSRecord:
    """Send one query and parse the reply (checks that the reply carries the query's id)."""
    query = DNSRecord.question(name, qtype)
    if edns is not None:
        query.add_ar(EDNS0(udp_len=edns))
    data = bytes(query.pack())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("!H", len(data)) + data)
            raw = read_tcp_message(sock)
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, (host, port))
            raw = sock.recv(65535)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == query.header.id, "reply id does not match the query id"
    return reply


def read_tcp_message(sock: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed")
            buf += chunk
        return buf

    (length,) = struct.unpack("!H", exact(2))
    return exact(length)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake upstream DNS server for the DNS proxy tests")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[], help="NAME=IP[,IP...]")
    parser.add_argument("--log", type=Path, help="append one line per query: PROTO NAME TYPE CLIENT")
    args = parser.parse_args()
    records = {}
    for item in args.record:
        name, _, ips = item.partition("=")
        records[name] = ips.split(",")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeUpstream(records, host=args.listen, port=args.port, log_path=args.log):
        print(f"fake upstream DNS on {args.listen}:{args.port}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
