"""The host's own resolvers: reading them from resolv.conf and asking them, over UDP or TCP.

Every socket that leaves for an upstream carries the bypass fwmark (``SO_MARK``), so capture, which
redirects port 53 to the DNS proxy, lets the proxy's own queries through instead of looping them back.
Setting the mark needs CAP_NET_ADMIN; without it the query still goes out unmarked (logged once).

systemd-resolved: when every nameserver in /etc/resolv.conf is resolved's local stub (127.0.0.53 or
127.0.0.54), ``read_resolv_conf`` uses the uplink servers resolved itself lists in
/run/systemd/resolve/resolv.conf instead. Forwarding to the stub would work only if capture also
spared resolved's own outgoing queries; when capture redirects all of port 53 they would come back to
the proxy and loop. The cost is resolved's per-link routing (split DNS of a VPN link); an operator who
needs it lists the upstreams explicitly. Other loopback resolvers (dnsmasq, unbound on 127.0.0.1) are
kept as they are.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dnslib import QR, RCODE, DNSBuffer, DNSError, DNSHeader, DNSQuestion

from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})
RESOLVED_UPLINK_CONF = "/run/systemd/resolve/resolv.conf"
MAX_MESSAGE = 65535
_SO_MARK = getattr(socket, "SO_MARK", 36)


@dataclass(frozen=True)
class Upstream:
    """One upstream resolver: an IP literal (IPv6 may carry a %zone) and a port."""

    host: str
    port: int = 53

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_upstream(text: str) -> Upstream:
    """Parse ``IP``, ``IPv4:PORT`` or ``[IPv6]:PORT``; raise VmagentError naming the string if malformed."""
    hint = "expected an IP address with an optional port, e.g. 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53"
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or (end + 1 < len(raw) and raw[end + 1] != ":"):
            raise VmagentError(f"DNS upstream {text!r} is not valid: {hint}")
        host, port_text = raw[1:end], raw[end + 2 :]
        if end + 1 < len(raw) and not port_text:
            raise VmagentError(f"DNS upstream {text!r} is not valid: {hint}")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise VmagentError(f"DNS upstream {text!r} is not valid: {hint}") from None
    port = 53
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise VmagentError(f"DNS upstream {text!r} has an invalid port {port_text!r}: {hint}")
        port = int(port_text)
    return Upstream(host, port)


def _nameservers(path: Path) -> list[str]:
    servers: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                ipaddress.ip_address(fields[1])
            except ValueError:
                log.warning("%s: ignoring nameserver %r: not an IP address", path, fields[1])
                continue
            if fields[1] not in servers:
                servers.append(fields[1])
    return servers


def read_resolv_conf(path: str = "/etc/resolv.conf", resolved_path: str = RESOLVED_UPLINK_CONF) -> list[str]:
    """The nameserver addresses in ``path``, in order, with systemd-resolved's stub replaced (module doc).

    A missing or unreadable file raises VmagentError; a file without nameservers gives an empty list.
    """
    try:
        servers = _nameservers(Path(path))
    except OSError as exc:
        raise VmagentError(f"cannot read the host's resolvers from {path}: {exc.strerror}") from exc
    if servers and all(s in RESOLVED_STUBS for s in servers):
        try:
            uplinks = _nameservers(Path(resolved_path))
        except OSError:
            uplinks = []
        uplinks = [s for s in uplinks if s not in RESOLVED_STUBS]
        if uplinks:
            return uplinks
        log.warning("%s lists only systemd-resolved's stub and %s has no uplink servers", path, resolved_path)
    return servers


def _question_key(buf: DNSBuffer, count: int) -> tuple[tuple[str, int, int], ...]:
    out = []
    for _ in range(count):
        q = DNSQuestion.parse(buf)
        out.append((str(q.qname).lower(), int(q.qtype), int(q.qclass)))
    return tuple(out)


def header_and_questions(message: bytes) -> tuple[DNSHeader, tuple[tuple[str, int, int], ...]]:
    """Parse only the header and question section (the rest of ``message`` may be anything)."""
    buf = DNSBuffer(message)
    header = DNSHeader.parse(buf)
    return header, _question_key(buf, header.q)


class UpstreamClient:
    """Sends one query to the upstreams in order until one answers; each gets ``timeout`` seconds.

    A SERVFAIL or REFUSED answer moves on to the next upstream, but is returned when no upstream does
    better. The query goes out with a fresh random id from a fresh socket, and only a reply with that id
    and the same question is accepted; the caller's id is put back.
    """

    def __init__(self, upstreams: Sequence[Upstream], mark: int | None, timeout: float) -> None:
        self.upstreams = list(upstreams)
        self._mark = mark or None
        self._timeout = timeout
        self._mark_lock = threading.Lock()
        self._mark_usable = True

    def _socket(self, upstream: Upstream, kind: socket.SocketKind) -> socket.socket:
        sock = socket.socket(upstream.family, kind)
        if self._mark is not None and self._mark_usable:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, self._mark)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOPROTOOPT):
                    sock.close()
                    raise
                with self._mark_lock:
                    if self._mark_usable:
                        self._mark_usable = False
                        log.debug(
                            "DNS proxy: cannot set SO_MARK %#x (%s); upstream queries go unmarked",
                            self._mark,
                            exc.strerror,
                        )
        return sock

    @property
    def mark_applied(self) -> bool:
        """False once setting the mark was refused (no CAP_NET_ADMIN)."""
        return self._mark is not None and self._mark_usable

    def query(self, message: bytes, tcp: bool) -> bytes | None:
        """The first good upstream reply to ``message`` (the client's id restored), or None if none came.

        Over UDP a truncated reply is asked again over TCP of the same upstream; if that fails the
        truncated reply is returned so the client can retry over TCP itself.
        """
        try:
            _, questions = header_and_questions(message)
        except DNSError:
            return None
        fallback: bytes | None = None
        for upstream in self.upstreams:
            qid = secrets.randbelow(65536)
            out = struct.pack("!H", qid) + message[2:]
            try:
                reply = (
                    self._tcp(upstream, out, qid, questions)
                    if tcp
                    else self._udp(upstream, out, qid, questions)
                )
            except (OSError, DNSError) as exc:
                log.debug("DNS upstream %s failed: %s", upstream, exc)
                continue
            if reply is None:
                continue
            header = DNSHeader.parse(DNSBuffer(reply))
            if not tcp and header.tc:
                try:
                    full = self._tcp(upstream, out, qid, questions)
                except (OSError, DNSError) as exc:
                    log.debug("DNS upstream %s failed over TCP after truncation: %s", upstream, exc)
                    full = None
                if full is not None:
                    reply = full
                    header = DNSHeader.parse(DNSBuffer(reply))
            reply = message[:2] + reply[2:]
            if header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED):
                fallback = reply
                continue
            return reply
        return fallback

    def _accept(self, reply: bytes, qid: int, questions: tuple[tuple[str, int, int], ...]) -> bool:
        try:
            header, got = header_and_questions(reply)
        except DNSError:
            return False
        if header.id != qid or header.qr != QR.RESPONSE:
            return False
        # Some servers drop the question from a truncated reply; the id (random, on a fresh socket) suffices.
        return got == questions or (bool(header.tc) and not got)

    def _udp(
        self, upstream: Upstream, out: bytes, qid: int, questions: tuple[tuple[str, int, int], ...]
    ) -> bytes | None:
        deadline = time.monotonic() + self._timeout
        with self._socket(upstream, socket.SOCK_DGRAM) as sock:
            sock.connect((upstream.host, upstream.port))
            sock.send(out)
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    reply = sock.recv(MAX_MESSAGE)
                except TimeoutError:
                    break
                if self._accept(reply, qid, questions):
                    return reply
        log.debug("DNS upstream %s: no answer over UDP within %.1fs", upstream, self._timeout)
        return None

    def _tcp(
        self, upstream: Upstream, out: bytes, qid: int, questions: tuple[tuple[str, int, int], ...]
    ) -> bytes | None:
        deadline = time.monotonic() + self._timeout
        with self._socket(upstream, socket.SOCK_STREAM) as sock:
            sock.settimeout(self._timeout)
            sock.connect((upstream.host, upstream.port))
            sock.sendall(struct.pack("!H", len(out)) + out)
            while True:
                (length,) = struct.unpack("!H", recv_exact(sock, 2, deadline))
                reply = recv_exact(sock, length, deadline)
                if self._accept(reply, qid, questions):
                    return reply


def recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    """Read exactly ``count`` bytes before ``deadline``; raise TimeoutError or ConnectionError."""
    chunks: list[bytes] = []
    got = 0
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out reading a DNS message over TCP")
        sock.settimeout(remaining)
        chunk = sock.recv(count - got)
        if not chunk:
            raise ConnectionError("connection closed in the middle of a DNS message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
