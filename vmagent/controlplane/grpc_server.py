"""Credentials of the control plane's gRPC listeners (served by ``xds.runner.AioServerThread``).

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

import grpc
import psutil

from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import chain_pem, key_pem
from vmagent.controlplane.ca import CertificateAuthority

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
