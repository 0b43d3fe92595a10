"""The control plane's gRPC listeners.

Two ports share one server and its services:
* ``--listen`` (15012), TLS: joining VMs authenticate with a join token; they pin the root by hash.
* ``--mtls-listen`` (15013), mutual TLS: renewals, registration and ADS, authenticated by the caller's
  mesh certificate. gRPC Python can either require client certificates on a port or not ask for them at
  all, so the token-only join and the certificate-authenticated calls need a port each.
The server certificate is issued by the mesh CA at every start, for ``CP_SERVER_NAME`` (which agents
check) plus the host's names and addresses.
"""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import Callable
from concurrent import futures

import grpc
import psutil

from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import chain_pem, key_pem
from vmagent.controlplane.ca import CertificateAuthority

log = logging.getLogger(__name__)

SERVER_CERT_TTL = datetime.timedelta(days=30)

GRPC_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


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
        (ips if _is_ip(name) else dns).append(name)
    ips += local_addresses()
    key, chain = ca.issue_server_cert(dns, ips, SERVER_CERT_TTL)
    pair = [(key_pem(key), chain_pem(chain))]
    tls = grpc.ssl_server_credentials(pair)
    mtls = grpc.ssl_server_credentials(pair, root_certificates=ca.root_pem, require_client_auth=True)
    return tls, mtls


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class GrpcServer:
    """A gRPC server with the TLS and mutual-TLS ports; services are added by ``register`` callbacks."""

    def __init__(self, max_workers: int = 64) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=GRPC_SERVER_OPTIONS,
        )
        self.tls_port = 0
        self.mtls_port = 0

    def add(self, register: Callable[[grpc.Server], None]) -> None:
        register(self.server)

    def bind(
        self, tls_listen: str, mtls_listen: str, creds: tuple[grpc.ServerCredentials, grpc.ServerCredentials]
    ) -> None:
        self.tls_port = _bind(self.server, tls_listen, creds[0])
        self.mtls_port = _bind(self.server, mtls_listen, creds[1])

    def start(self) -> None:
        self.server.start()
        log.info(
            "gRPC listening: TLS (join) on port %d, mutual TLS on port %d", self.tls_port, self.mtls_port
        )

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait(grace + 1)


def _bind(server: grpc.Server, listen: str, creds: grpc.ServerCredentials) -> int:
    try:
        port = int(server.add_secure_port(listen, creds))
    except RuntimeError as exc:
        raise VmagentError(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise VmagentError(f"cannot listen on {listen} (address in use or not available)")
    return port
