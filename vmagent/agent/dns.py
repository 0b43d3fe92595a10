"""The agent's DNS proxy (port 15053): mesh names from the name table, everything else upstream.

* A query for a mesh name (one question, class IN, opcode QUERY) is answered here, authoritatively,
  with TTL ``ttl``: type A gets the name's IPv4 addresses, AAAA its IPv6 addresses, ANY both. Any other
  type, or a family the name has no address in, gets NOERROR with an empty answer, never NXDOMAIN, so
  a client asking A and AAAA in parallel still uses the A records.
* Everything else is forwarded, unchanged except for its id, to the upstreams in order (see
  ``dns_upstream``): UDP queries over UDP, asked again over TCP when the upstream truncates; TCP queries
  over TCP. When no upstream answers the client gets SERVFAIL.
* A UDP reply larger than the client accepts (512 bytes, or its EDNS size) goes back truncated (TC set,
  question only), so the client retries over TCP.
* Bounded: at most ``max_udp_in_flight`` forwarded UDP queries (more are dropped; clients retry), at most
  ``max_tcp_connections`` TCP connections (more are closed at once), messages of at most 65535 bytes,
  idle TCP connections closed after ``tcp_idle_timeout`` seconds.

Threads: one loop thread receives UDP datagrams and accepts TCP connections; mesh names are answered
on it directly, forwarded UDP queries run in a small worker pool, and each TCP connection has a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dnslib import AAAA, CLASS, EDNS0, OPCODE, QTYPE, RCODE, RR, A, DNSBuffer, DNSError, DNSHeader, DNSRecord

from vmagent.agent.dns_table import NameTable
from vmagent.agent.dns_upstream import MAX_MESSAGE, Upstream, UpstreamClient, parse_upstream, recv_exact
from vmagent.common import constants
from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

_EDNS_SIZE = 1232  # the UDP size this proxy advertises in its own answers (DNS flag day 2020)


@dataclass
class DnsMetrics:
    """Counters for the status server; ``snapshot()`` is a consistent copy."""

    answered_locally: int = 0  # mesh names answered from the table
    forwarded: int = 0  # answered by an upstream (whatever the rcode)
    failed: int = 0  # no upstream answered: SERVFAIL sent
    malformed: int = 0  # unparseable queries (FORMERR sent, or dropped when even the header is short)
    dropped: int = 0  # refused for lack of capacity (UDP in flight, TCP connections)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "answered_locally": self.answered_locally,
                "forwarded": self.forwarded,
                "failed": self.failed,
                "malformed": self.malformed,
                "dropped": self.dropped,
            }


def _udp_limit(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), MAX_MESSAGE))
    return 512


def _same_ip(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def _truncated(reply: DNSRecord) -> bytes:
    out = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q)
    out.header.rcode = reply.header.rcode
    return bytes(out.pack())


class DnsProxy:
    """UDP and TCP DNS server on ``listen_host:port`` (see the module doc). ``start()``, then ``stop()``."""

    def __init__(
        self,
        *,
        table: NameTable,
        upstreams: Sequence[str],
        listen_host: str = "127.0.0.1",
        port: int = constants.DNS_PROXY_PORT,
        mark: int | None = constants.BYPASS_MARK,
        ttl: int = 30,
        upstream_timeout: float = 2.0,
        max_udp_in_flight: int = 128,
        udp_workers: int = 16,
        max_tcp_connections: int = 64,
        tcp_idle_timeout: float = 10.0,
    ) -> None:
        try:
            ipaddress.ip_address(listen_host)
        except ValueError:
            raise VmagentError(f"DNS proxy listen address {listen_host!r} is not an IP address") from None
        if not 0 <= port <= 65535:
            raise VmagentError(f"DNS proxy port {port} is out of range (1-65535)")
        self.table = table
        self.upstreams: list[Upstream] = [parse_upstream(u) for u in upstreams]
        for upstream in self.upstreams:
            if port and upstream.port == port and _same_ip(upstream.host, listen_host):
                raise VmagentError(f"DNS upstream {upstream} is this DNS proxy itself; it would loop")
        self.listen_host = listen_host
        self.metrics = DnsMetrics()
        self._requested_port = port
        self._port = port
        self._ttl = ttl
        self._client = UpstreamClient(self.upstreams, mark, upstream_timeout)
        self._udp_slots = threading.BoundedSemaphore(max_udp_in_flight)
        self._udp_workers = udp_workers
        self._tcp_slots = threading.BoundedSemaphore(max_tcp_connections)
        self._tcp_idle_timeout = tcp_idle_timeout
        self._family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._loop: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the kernel when constructed with port 0)."""
        return self._port

    @property
    def tcp_connections(self) -> int:
        """TCP client connections open right now."""
        with self._lock:
            return len(self._conns)

    @property
    def mark_applied(self) -> bool:
        """False when the upstream sockets could not be marked (no CAP_NET_ADMIN)."""
        return self._client.mark_applied

    # -- life cycle -------------------------------------------------------------------------------

    def _bind(self, kind: socket.SocketKind, port: int) -> socket.socket:
        sock = socket.socket(self._family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _bind_both(self) -> tuple[socket.socket, socket.socket]:
        attempts = 5 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            proto = "udp"
            udp: socket.socket | None = None
            try:
                udp = self._bind(socket.SOCK_DGRAM, self._requested_port)
                port = int(udp.getsockname()[1])
                proto = "tcp"
                return udp, self._bind(socket.SOCK_STREAM, port)
            except OSError as exc:
                if udp is not None:
                    udp.close()
                if attempt + 1 < attempts:
                    continue
                where = f"{self.listen_host}:{self._requested_port}/{proto}"
                raise VmagentError(
                    f"DNS proxy cannot listen on {where}: {exc.strerror or exc}; "
                    "stop whatever holds the port or configure another DNS proxy port"
                ) from exc
        raise AssertionError("unreachable")

    def start(self) -> None:
        """Bind UDP and TCP on the same port and start serving; raise VmagentError if it cannot bind."""
        if self._loop is not None:
            raise VmagentError("DNS proxy already started")
        self._udp, self._tcp = self._bind_both()
        self._port = int(self._udp.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._pool = ThreadPoolExecutor(max_workers=self._udp_workers, thread_name_prefix="dns-fwd")
        self._stopping.clear()
        self._loop = threading.Thread(target=self._serve, name="dns-proxy", daemon=True)
        self._loop.start()
        upstreams = ", ".join(str(u) for u in self.upstreams) or "none"
        log.info(
            "DNS proxy listening on %s:%d (udp, tcp); upstreams: %s", self.listen_host, self._port, upstreams
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close every socket; in-flight forwards finish within their upstream timeouts."""
        if self._loop is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        self._loop.join(timeout)
        with self._lock:
            conns, threads = list(self._conns), list(self._conn_threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None
        self._pool = None
        self._loop = None
        log.info("DNS proxy on %s:%d stopped", self.listen_host, self._port)

    def __enter__(self) -> DnsProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    try:
                        if key.data == "udp":
                            self._on_datagram()
                        elif key.data == "tcp":
                            self._on_connection()
                    except Exception:  # the loop must survive anything one message does
                        log.exception("DNS proxy: unexpected error")

    # -- UDP --------------------------------------------------------------------------------------

    def _on_datagram(self) -> None:
        assert self._udp is not None and self._pool is not None
        try:
            data, client = self._udp.recvfrom(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. an ICMP error queued on the socket
            log.debug("DNS proxy: UDP receive error: %s", exc)
            return
        request = self._parse(data)
        if isinstance(request, bytes):
            self._send_udp(request, client)
            return
        if request is None:
            return
        local = self._answer_locally(request)
        if local is not None:
            self._send_udp(self._fit_udp(local, _udp_limit(request)), client)
            return
        if not self._udp_slots.acquire(blocking=False):
            self.metrics.add("dropped")
            return
        try:
            self._pool.submit(self._forward_udp, data, request, client)
        except RuntimeError:  # pool shut down while stopping
            self._udp_slots.release()

    def _forward_udp(self, data: bytes, request: DNSRecord, client: tuple[str, int]) -> None:
        try:
            reply = self._forward(data, request, tcp=False)
            limit = _udp_limit(request)
            if len(reply) > limit:
                try:
                    reply = _truncated(DNSRecord.parse(reply))
                except DNSError:
                    reply = self._servfail(request)
            self._send_udp(reply, client)
        except Exception:  # a worker must not die silently inside its future
            log.exception("DNS proxy: unexpected error forwarding a UDP query")
        finally:
            self._udp_slots.release()

    def _send_udp(self, reply: bytes, client: tuple[str, int]) -> None:
        udp = self._udp
        if udp is None:
            return
        try:
            udp.sendto(reply, client)
        except OSError as exc:
            log.debug("DNS proxy: cannot send a reply to %s: %s", client, exc)

    @staticmethod
    def _fit_udp(reply: DNSRecord, limit: int) -> bytes:
        packed = bytes(reply.pack())
        return packed if len(packed) <= limit else _truncated(reply)

    # -- TCP --------------------------------------------------------------------------------------

    def _on_connection(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not self._tcp_slots.acquire(blocking=False):
            self.metrics.add("dropped")
            conn.close()
            return
        conn.setblocking(True)
        thread = threading.Thread(target=self._serve_tcp, args=(conn,), name="dns-tcp", daemon=True)
        with self._lock:
            self._conns.add(conn)
            self._conn_threads.add(thread)
        thread.start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    first = recv_exact(conn, 2, time.monotonic() + self._tcp_idle_timeout)
                    length = int.from_bytes(first, "big")
                    data = recv_exact(conn, length, time.monotonic() + self._tcp_idle_timeout)
                except (OSError, ConnectionError):
                    return
                request = self._parse(data)
                if request is None:
                    return
                if isinstance(request, bytes):
                    reply = request
                else:
                    local = self._answer_locally(request)
                    reply = (
                        bytes(local.pack()) if local is not None else self._forward(data, request, tcp=True)
                    )
                if len(reply) > MAX_MESSAGE:
                    return
                try:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return
        except Exception:
            log.exception("DNS proxy: unexpected error on a TCP connection")
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conn_threads.discard(threading.current_thread())
            conn.close()
            self._tcp_slots.release()

    # -- answering --------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> DNSRecord | bytes | None:
        """The parsed query; FORMERR bytes when only the header is readable; None to drop silently."""
        try:
            request = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            self.metrics.add("malformed")
            if len(data) < 12:
                return None
            try:
                header = DNSHeader.parse(DNSBuffer(data[:12]))
            except DNSError:
                return None
            if header.qr:
                return None
            reply = DNSRecord(DNSHeader(id=header.id, opcode=header.opcode, qr=1, ra=1, rcode=RCODE.FORMERR))
            return bytes(reply.pack())
        if request.header.qr:  # a response sent to us: never answer one (reflection loops)
            self.metrics.add("malformed")
            return None
        return request

    def _answer_locally(self, request: DNSRecord) -> DNSRecord | None:
        if request.header.opcode != OPCODE.QUERY or len(request.questions) != 1:
            return None
        question = request.q
        if question.qclass != CLASS.IN:
            return None
        addresses = self.table.lookup(str(question.qname))
        if addresses is None:
            return None
        reply = request.reply(ra=1, aa=1)
        for address in addresses:
            if address.version == 4 and question.qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(str(address)), ttl=self._ttl))
            elif address.version == 6 and question.qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(str(address)), ttl=self._ttl))
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=_EDNS_SIZE))
        self.metrics.add("answered_locally")
        return reply

    def _forward(self, data: bytes, request: DNSRecord, *, tcp: bool) -> bytes:
        reply = self._client.query(data, tcp=tcp)
        if reply is None:
            self.metrics.add("failed")
            return self._servfail(request)
        self.metrics.add("forwarded")
        return reply

    @staticmethod
    def _servfail(request: DNSRecord) -> bytes:
        reply = request.reply(ra=1, aa=0)
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())
