"""The control plane's gRPC listeners: their credentials and the threaded server for the join port.

Two ports:
* ``--listen`` (15012), TLS: joining VMs authenticate with a join token; they pin the root by hash.
* ``--mtls-listen`` (15013), mutual TLS: renewals, registration and ADS, authenticated by the caller's
  mesh certificate. gRPC Python can either require client certificates on a port or not ask for them at
  all, so the token-only join and the certificate-authenticated calls need a port each.
The mutual-TLS port carries ADS and registration streams (``grpc.aio``, ``xds.runner.AioServerThread``).
The TLS port carries only the certificate services, unary calls that spend their time in Python, so it
is a plain threaded ``grpc.server`` (:class:`ThreadedServer`): per call it costs markedly less CPU than
``grpc.aio`` with a migration thread pool (see docs/benchmarks.md).
The server certificate is issued by the mesh CA at every start, for ``CP_SERVER_NAME`` (which agents
check) plus the host's names and addresses.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import psutil

from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import chain_pem, key_pem
from vmagent.controlplane.ca.authority import CertificateAuthority
from vmagent.controlplane.xds.runner import DEFAULT_OPTIONS

log = logging.getLogger(__name__)

SERVER_CERT_TTL = datetime.timedelta(days=30)


def local_addresses() -> list[str]:
    """Every address configured on this host's interfaces (IPv4 and IPv6, without zone ids)."""
    out: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append(a.address.split("%", 1)[0])
    return out


def server_credentials(
    ca: CertificateAuthority, extra_names: list[str]
) -> tuple[grpc.ServerCredentials, grpc.ServerCredentials]:
    """(TLS-only, mutual-TLS) credentials with a fresh server certificate from the mesh CA."""
    dns = [CP_SERVER_NAME, "localhost", socket.gethostname()]
    ips: list[str] = []
    for name in extra_names:
        (ips if is_ip(name) else dns).append(name)
    ips += local_addresses()
    key, chain = ca.issue_server_cert(dns, ips, SERVER_CERT_TTL)
    pair = [(key_pem(key), chain_pem(chain))]
    tls = grpc.ssl_server_credentials(pair)
    mtls = grpc.ssl_server_credentials(pair, root_certificates=ca.root_pem, require_client_auth=True)
    return tls, mtls


def is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class ThreadedServer:
    """A threaded ``grpc.server`` bound to ``address``, for services whose methods are plain functions.

    The same life cycle as ``AioServerThread``: ``configure(server)`` adds the servicers, :meth:`start`
    binds (SO_REUSEPORT, as gRPC does on Linux) and returns the port, :meth:`stop` ends it.
    ``credentials=None`` serves plaintext (tests only).
    """

    def __init__(
        self,
        address: str,
        credentials: grpc.ServerCredentials | None,
        configure: Callable[[grpc.Server], None],
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        workers: int = 8,
    ) -> None:
        self._address = address
        self._credentials = credentials
        self._configure = configure
        self._options = list(options)
        self._workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> int:
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="grpc-ca")
        server = grpc.server(self._pool, options=self._options)
        self._configure(server)
        try:
            if self._credentials is None:
                port = server.add_insecure_port(self._address)
            else:
                port = server.add_secure_port(self._address, self._credentials)
        except RuntimeError as exc:
            self._pool.shutdown(wait=False)
            raise VmagentError(f"cannot serve gRPC on {self._address}: {exc}") from exc
        server.start()
        self._server = server
        self.port = int(port)
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls; calls in progress get ``grace`` seconds."""
        if self._server is not None:
            self._server.stop(grace).wait(grace + 10)
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def join_address(listen: str) -> str:
    """The address VMs join at for ``serve --listen HOST:PORT``: HOST itself, or for a wildcard host
    (0.0.0.0, ::, empty) this host's first non-loopback IPv4 address (else its name)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        usable = [a for a in local_addresses() if not a.startswith("127.") and ":" not in a]
        host = usable[0] if usable else socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
