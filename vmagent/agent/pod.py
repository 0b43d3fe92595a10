"""Pod mode (``vmagent run --pod``): the agent as a pod's sidecar, identified by its ServiceAccount token.

Differences from a VM, and nothing else:

* **identity**: no join. The first certificate (and one after an expiry, e.g. a node that slept) comes
  from ``CreateCertificate`` on the control plane's TLS port with the pod's projected ServiceAccount token
  (audience ``istio-ca``) as the bearer credential, declared as ``x-vmagent-credential: kubernetes``. The
  token file is read each time it is needed, never kept, so the token the kubelet rotated in is the one
  used. The control plane's root comes from a mounted file (``--ca-file``), not a pinned hash. Renewals
  use the current certificate over mutual TLS, as on a VM;
* **no registration**: the control plane knows the pod from the cluster (its Pod object and the Services
  selecting it), so ``registration.enabled`` is false and no WorkloadEntry is made;
* **no capture by the agent**: an init step (``vmagent capture apply --pod-annotations FILE``) installs it
  before the sidecar starts, so the sidecar needs no NET_ADMIN; the DNS proxy is off (the cluster's DNS
  answers in a pod).

The settings are flags of ``vmagent run --pod``, each defaulting to the environment variable the injection
webhook sets (vmagent/controlplane/inject/template.py; Istio's names): ``POD_NAME``, ``POD_NAMESPACE``,
``INSTANCE_IP``, ``SERVICE_ACCOUNT``, ``CA_ADDR``, ``XDS_ADDR``, ``TRUST_DOMAIN``. The config file is
written to ``STATE_DIR/config`` unless ``--config-dir`` is given (the sidecar's root file system is read
only); an image's ``/etc/vmagent/config.yaml`` gives the operator's sections. Pod mode is never guessed
from the environment: only ``--pod`` turns it on (a VM with Kubernetes variables set stays a VM).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vmagent.agent.config import AgentConfig, split_host_port
from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.join import make_csr, secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common import wire
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.errors import ConfigError, VmagentError
from vmagent.common.x509util import (
    SpiffeId,
    chain_pem,
    generate_key,
    key_pem,
    load_chain,
    spiffe_ids,
    verify_chain,
)

log = logging.getLogger(__name__)

DEFAULT_TOKEN_FILE = Path(wire.POD_TOKEN_PATH)
DEFAULT_CA_FILE = Path(wire.POD_ROOT_CERT_PATH)
ISSUE_TIMEOUT = 20.0
MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class PodSettings:
    cp_address: str  # HOST:PORT of the TLS port (CreateCertificate with the token)
    cp_mtls_address: str  # HOST:PORT of the mutual-TLS port (ADS, renewals)
    trust_domain: str
    namespace: str
    pod_name: str
    service_account: str
    pod_ip: str
    token_file: Path = DEFAULT_TOKEN_FILE
    ca_file: Path = DEFAULT_CA_FILE
    server_name: str = CP_SERVER_NAME
    cert_ttl_seconds: int = 0

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)


def settings_from(values: dict[str, Any], env: dict[str, str] | None = None) -> PodSettings:
    """Settings from flags (``values``, None where not given), else the environment; ConfigError naming
    the flag and variable of a missing one."""
    env = dict(os.environ) if env is None else env

    def pick(flag: str, var: str, default: str | None = None) -> str:
        value = values.get(flag) or env.get(var) or default
        if not value:
            raise ConfigError(f"pod mode: --{flag.replace('_', '-')} (or ${var}) is required")
        return str(value)

    cp = pick("cp_address", "CA_ADDR")
    host, _ = split_host_port(cp, "--cp-address")
    mtls = values.get("cp_mtls_address") or env.get("XDS_ADDR") or f"{host}:15013"
    split_host_port(str(mtls), "--cp-mtls-address")
    pod_ip = pick("pod_ip", "INSTANCE_IP")
    try:
        ipaddress.ip_address(pod_ip)
    except ValueError as exc:
        raise ConfigError(f"pod mode: --pod-ip (or $INSTANCE_IP): {pod_ip!r} is not an IP address") from exc
    return PodSettings(
        cp_address=cp,
        cp_mtls_address=str(mtls),
        trust_domain=pick("trust_domain", "TRUST_DOMAIN", "cluster.local"),
        namespace=pick("pod_namespace", "POD_NAMESPACE"),
        pod_name=pick("pod_name", "POD_NAME"),
        service_account=pick("service_account", "SERVICE_ACCOUNT", "default"),
        pod_ip=pod_ip,
        token_file=Path(values.get("token_file") or DEFAULT_TOKEN_FILE),
        ca_file=Path(values.get("ca_file") or DEFAULT_CA_FILE),
        server_name=str(values.get("server_name") or CP_SERVER_NAME),
    )


def read_token(path: Path) -> str:
    """The token in ``path`` as it is now (the kubelet replaces it as it rotates it)."""
    try:
        raw = path.read_bytes()[: MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise VmagentError(f"{path}: cannot read the ServiceAccount token: {exc.strerror}") from exc
    if len(raw) > MAX_TOKEN_BYTES:
        raise VmagentError(f"{path}: the ServiceAccount token is larger than {MAX_TOKEN_BYTES} bytes")
    token = raw.decode("ascii", "replace").strip()
    if not token:
        raise VmagentError(f"{path}: the ServiceAccount token file is empty")
    return token


def read_root(path: Path) -> bytes:
    try:
        roots = load_chain(path.read_bytes())
    except OSError as exc:
        raise VmagentError(f"{path}: cannot read the mesh root certificate: {exc.strerror}") from exc
    if not roots:
        raise VmagentError(f"{path}: holds no certificate (the mesh root is expected)")
    return path.read_bytes()


class TokenIssuer:
    """Gets a certificate for the pod's ServiceAccount token (the first, and after an expiry)."""

    def __init__(self, settings: PodSettings, key_algorithm: str = "ec-p256") -> None:
        self.settings = settings
        self._key_algorithm = key_algorithm

    def issue(self) -> Identity:
        s = self.settings
        token = read_token(s.token_file)  # read now: the kubelet may have rotated it
        root_pem = read_root(s.ca_file)
        root = load_chain(root_pem)[-1]
        key = generate_key(self._key_algorithm)
        channel = secure_channel(s.cp_address, root_pem, s.server_name)
        try:
            stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
            resp = stub.CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(
                    csr=make_csr(key).decode(), validity_duration=s.cert_ttl_seconds
                ),
                metadata=[
                    (wire.AUTHORIZATION_HEADER, f"{wire.BEARER_SCHEME} {token}"),
                    (wire.CREDENTIAL_KIND_HEADER, wire.CREDENTIAL_KUBERNETES),
                ],
                timeout=ISSUE_TIMEOUT,
            )
        except grpc.RpcError as exc:
            raise PodIdentityError(exc.code(), exc.details() or "", s.cp_address) from exc
        finally:
            channel.close()
        chain = load_chain("".join(resp.cert_chain).encode())
        verify_chain(chain, root)
        if spiffe_ids(chain[0]) != [s.identity.uri]:
            raise VmagentError(
                f"the control plane issued {spiffe_ids(chain[0])} for this pod's token, expected "
                f"{s.identity} (is --service-account / $SERVICE_ACCOUNT the pod's?)"
            )
        ident = Identity(key_pem(key), chain_pem(chain), root_pem)
        if not ident.key_matches():
            raise VmagentError("the control plane returned a certificate for another key")
        return ident


class PodIdentityError(VmagentError):
    def __init__(self, code: grpc.StatusCode, details: str, address: str) -> None:
        self.code = code
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"cannot get a certificate from the control plane at {address}: {details}"
        else:
            message = f"the control plane refused this pod's ServiceAccount token: {code.name}: {details}"
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        return self.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


def prepare(
    settings: PodSettings, paths: AgentPaths, wait: float = 300.0, base_config: Path | None = None
) -> IdentityStore:
    """Write the pod's agent config and make sure a valid certificate for it is in the state dir.

    A still valid certificate for the same identity (a restarted sidecar) is kept; else one is fetched
    with the token, retrying while the control plane is unreachable (up to ``wait`` seconds). A refusal
    is not retried: the error says why (the kubelet restarts the container)."""
    write_config(settings, paths, base_config)
    store = IdentityStore(paths)
    if store.exists():
        try:
            ident = store.load()
            if not ident.expired() and ident.spiffe_id == settings.identity:
                return store
        except VmagentError as exc:
            log.warning("the stored identity is not usable (%s); getting a new one", exc)
    issuer = TokenIssuer(settings)
    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            ident = issuer.issue()
            break
        except PodIdentityError as exc:
            if not exc.retryable or time.monotonic() + delay > deadline:
                raise
            log.warning("%s; retrying in %.1f s", exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    store.save(ident)
    log.info("pod %s/%s: certificate %s serial %x", settings.namespace, settings.pod_name,
             ident.spiffe_id, ident.serial)  # fmt: skip
    return store


def write_config(settings: PodSettings, paths: AgentPaths, base: Path | None = None) -> AgentConfig:
    """The agent config of a pod: the sections of ``base`` (else of an existing config file) are kept
    (envoy, status, identity, mesh); registration, capture and DNS are turned off (see the module doc)."""
    sections: dict[str, Any] = {}
    source = base if base is not None and base.exists() else paths.config_file
    if source.exists():
        sections = dict(_sections(source))
    sections["registration"] = {"enabled": False}
    sections["capture"] = {**(sections.get("capture") or {}), "enabled": False}
    sections.setdefault("dns", {"enabled": False})
    envoy = dict(sections.get("envoy") or {})
    envoy.setdefault("run_as", None)  # the sidecar container already runs as the proxy user
    sections["envoy"] = envoy
    config = AgentConfig(
        cp_address=settings.cp_address,
        cp_mtls_address=settings.cp_mtls_address,
        trust_domain=settings.trust_domain,
        namespace=settings.namespace,
        group=settings.pod_name,
        service_account=settings.service_account,
        server_name=settings.server_name,
        address=settings.pod_ip,
        sections=sections,
    )
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    config.save(paths.config_file)
    return config


def _sections(path: Path) -> dict[str, Any]:
    """The sections of an agent config file, which may lack what a join writes (an image's base file)."""
    import yaml

    from vmagent.common.yamllimits import YamlLimitError, check_size, check_yaml_limits

    try:
        check_size(path.stat().st_size)
        text = path.read_text()
        check_yaml_limits(text)
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, YamlLimitError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config: expected a mapping at the top level")
    return {k: v for k, v in raw.items() if k not in ("control_plane", "workload", "trust_domain")}
