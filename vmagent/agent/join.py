"""``vmagent join``: key, CSR, certificate and configuration, written all or nothing."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from vmagent.agent.config import AgentConfig, join_host_port, split_host_port
from vmagent.agent.identity import Identity, IdentityStore, identity_files
from vmagent.agent.paths import AgentPaths
from vmagent.agent.state_commit import commit
from vmagent.agent.trust import fetch_server_chain, pin_root
from vmagent.api import bootstrap_pb2, bootstrap_pb2_grpc
from vmagent.common import wire
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import ensure_dir
from vmagent.common.x509util import (
    PrivateKey,
    SpiffeId,
    cert_pem,
    chain_pem,
    generate_key,
    key_pem,
    load_chain,
    spiffe_ids,
    verify_chain,
)

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 20.0


@dataclass(frozen=True)
class JoinRequest:
    address: str
    token: str
    ca_hash: str | None = None
    ca_file: Path | None = None
    vm_address: str = ""
    key_algorithm: str = "ec-p256"
    rejoin: bool = False
    server_name: str = CP_SERVER_NAME


@dataclass(frozen=True)
class JoinResult:
    identity: SpiffeId
    not_after: str
    serial: str
    already_joined: bool = False


def make_csr(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmagent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def secure_channel(
    address: str, root_pem: bytes, server_name: str, client: tuple[bytes, bytes] | None = None
) -> grpc.Channel:
    """A gRPC channel trusting only ``root_pem``; ``client`` = (key PEM, chain PEM) for mutual TLS."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=root_pem,
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    options = [
        ("grpc.ssl_target_name_override", server_name),
        # Reconnect within seconds after a control-plane outage (gRPC's default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    return grpc.secure_channel(address, creds, options=options)


def join(req: JoinRequest, paths: AgentPaths) -> JoinResult:
    store = IdentityStore(paths)
    if store.exists() and paths.config_file.exists() and not req.rejoin:
        ident = store.load()
        return JoinResult(
            ident.spiffe_id, ident.not_after.isoformat(), f"{ident.serial:x}", already_joined=True
        )
    host, port = split_host_port(req.address, "control-plane address")
    root = _trusted_root(req, host, port)
    root_pem = cert_pem(root)
    key = generate_key(req.key_algorithm)
    resp = _call_join(req, root_pem, make_csr(key))
    chain = load_chain("".join(resp.cert_chain).encode())
    verify_chain(chain, root)
    leaf_ids = spiffe_ids(chain[0])
    expected = SpiffeId(resp.trust_domain, resp.namespace, resp.service_account)
    if leaf_ids != [expected.uri]:
        raise VmagentError(f"the control plane returned a certificate for {leaf_ids}, expected {expected}")
    ident = Identity(key_pem(key), chain_pem(chain), root_pem)
    if not ident.key_matches():
        raise VmagentError("the control plane returned a certificate for another key")
    config = AgentConfig(
        cp_address=req.address,
        cp_mtls_address=join_host_port(host, resp.mtls_port),
        trust_domain=resp.trust_domain,
        namespace=resp.namespace,
        group=resp.group,
        service_account=resp.service_account,
        server_name=req.server_name,
        address=req.vm_address,
        sections=_keep_operator_sections(paths, json.loads(resp.mesh_config_json or "{}")),
    )
    _write_all(paths, config, resp.workload_group_json, ident)
    return JoinResult(expected, ident.not_after.isoformat(), f"{ident.serial:x}")


def _trusted_root(req: JoinRequest, host: str, port: int) -> x509.Certificate:
    if req.ca_file is not None:
        try:
            roots = load_chain(req.ca_file.read_bytes())
        except OSError as exc:
            raise VmagentError(f"cannot read --ca-file: {exc}") from exc
        if not roots:
            raise VmagentError(f"--ca-file {req.ca_file} holds no certificate")
        return roots[-1]
    if not req.ca_hash:
        raise VmagentError("give --ca-hash sha256:HEX (printed by `vmagent-cp token create`) or --ca-file")
    chain = fetch_server_chain(host, port, req.server_name)
    return pin_root(chain, req.ca_hash, req.address)


def _call_join(req: JoinRequest, root_pem: bytes, csr: bytes) -> bootstrap_pb2.JoinResponse:
    channel = secure_channel(req.address, root_pem, req.server_name)
    try:
        stub = bootstrap_pb2_grpc.BootstrapStub(channel)
        resp: bootstrap_pb2.JoinResponse = stub.Join(
            bootstrap_pb2.JoinRequest(csr=csr.decode(), hostname=socket.gethostname()),
            metadata=[(wire.AUTHORIZATION_HEADER, f"{wire.BEARER_SCHEME} {req.token}")],
            timeout=JOIN_TIMEOUT,
        )
        return resp
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise VmagentError(f"cannot reach the control plane at {req.address}: {details}") from exc
        raise VmagentError(f"join refused by the control plane: {details}") from exc
    finally:
        channel.close()


def _keep_operator_sections(paths: AgentPaths, mesh: dict[str, object]) -> dict[str, object]:
    """On --rejoin keep what the operator set in capture/dns/envoy/status; take mesh from the server."""
    sections: dict[str, object] = {}
    if paths.config_file.exists():
        try:
            sections = dict(AgentConfig.load(paths.config_file).sections)
        except VmagentError:
            sections = {}
    sections["mesh"] = mesh
    return sections


def _write_all(paths: AgentPaths, config: AgentConfig, group_json: str, ident: Identity) -> None:
    """Config, WorkloadGroup and identity replaced as one step (``state_commit``): a failure or a crash
    at any point leaves the previous state (or none) in force, never a mix of the two."""
    ensure_dir(paths.config_dir, 0o755)
    ensure_dir(paths.state_dir, 0o700)
    files: list[tuple[Path, bytes | str, int]] = [
        (paths.config_file, config.to_yaml(), 0o644),
        (paths.workload_group_file, group_json, 0o644),
        *identity_files(paths, ident),
    ]
    commit(paths, files)
