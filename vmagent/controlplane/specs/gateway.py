"""View of networking.istio.io Gateway; schema in :mod:`vmagent.controlplane.config.gateway`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TLSCertificate:
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""


@dataclass(frozen=True)
class ServerTLSSettings:
    https_redirect: bool = False
    mode: str = ""  # "": not set (SIMPLE)
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    credential_name: str = ""
    credential_names: tuple[str, ...] = ()
    tls_certificates: tuple[TLSCertificate, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    min_protocol_version: str = ""
    max_protocol_version: str = ""
    cipher_suites: tuple[str, ...] = ()


@dataclass(frozen=True)
class Port:
    number: int = 0
    protocol: str = ""
    name: str = ""
    target_port: int = 0


@dataclass(frozen=True)
class Server:
    port: Port | None = None
    bind: str = ""
    hosts: tuple[str, ...] = ()
    tls: ServerTLSSettings | None = None
    default_endpoint: str = ""
    name: str = ""


@dataclass(frozen=True)
class Gateway:
    servers: tuple[Server, ...] = ()
    selector: Mapping[str, str] = field(default_factory=dict)
