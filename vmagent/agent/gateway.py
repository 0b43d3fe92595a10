"""Gateway mode: the ``gateway:`` config section and the certificate files the agent serves over SDS.

In gateway mode the agent's Envoy is an ingress gateway (node type ``router``): the control plane gives it
listeners for the servers of the Gateways that select it, and no sidecar listeners; traffic capture is off
unless the ``capture`` section turns it on (and then only outbound). See docs/gateway.md.

gateway:
  enabled: false                      # `vmagent join --gateway` writes true
  certificate_dirs: [CONFIG_DIR/certs, /etc/ssl, /etc/pki, /etc/letsencrypt]
  credential_dir: CONFIG_DIR/credentials
  poll_interval_seconds: 2.0          # how often certificate files are checked for changes

Envoy runs as the proxy user and never reads key files: the SDS server asks ``FileCertificates`` for the
secrets the Gateway names (``file-cert:CERT~KEY``, ``file-root:CA``, ``kubernetes://NAME[-cacert]``). The
agent reads them as root, only below ``certificate_dirs`` (or in ``credential_dir``), never from its own
state directory, and checks that they parse and that the key belongs to the certificate.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from vmagent.common.errors import ConfigError, VmagentError
from vmagent.common.x509util import load_chain, load_key

FILE_CERT_PREFIX = "file-cert:"
FILE_ROOT_PREFIX = "file-root:"
CREDENTIAL_PREFIX = "kubernetes://"
CACERT_SUFFIX = "-cacert"
SYSTEM_CERT_DIRS = (Path("/etc/ssl"), Path("/etc/pki"), Path("/etc/letsencrypt"))
_PUB = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class GatewayConfig:
    enabled: bool = False
    certificate_dirs: tuple[Path, ...] = ()
    credential_dir: Path = Path("/etc/vmagent/credentials")
    poll_interval_seconds: float = 2.0


def parse_gateway(data: Mapping[str, Any] | None, source: str, config_dir: Path) -> GatewayConfig:
    """The ``gateway:`` section read from ``source``; ConfigError naming the field when it is wrong."""
    defaults = GatewayConfig(
        certificate_dirs=(config_dir / "certs", *SYSTEM_CERT_DIRS), credential_dir=config_dir / "credentials"
    )
    if data is None:
        return defaults
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: gateway: expected a mapping, got {type(data).__name__}")
    known = ("enabled", "certificate_dirs", "credential_dir", "poll_interval_seconds")
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: gateway.{key}: unknown field (known: {', '.join(known)})")
    enabled = data.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{source}: gateway.enabled: expected true or false, got {enabled!r}")
    dirs = defaults.certificate_dirs
    if "certificate_dirs" in data:
        raw = data["certificate_dirs"]
        if not isinstance(raw, list) or not all(isinstance(d, str) and d.startswith("/") for d in raw):
            raise ConfigError(f"{source}: gateway.certificate_dirs: expected a list of absolute paths")
        dirs = tuple(Path(d) for d in raw)
    cred = data.get("credential_dir", str(defaults.credential_dir))
    if not isinstance(cred, str) or not cred.startswith("/"):
        raise ConfigError(f"{source}: gateway.credential_dir: expected an absolute path, got {cred!r}")
    poll = data.get("poll_interval_seconds", defaults.poll_interval_seconds)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0.1 <= poll <= 3600:
        raise ConfigError(f"{source}: gateway.poll_interval_seconds: expected 0.1 to 3600, got {poll!r}")
    return GatewayConfig(enabled, dirs, Path(cred), float(poll))


def is_file_secret(name: str) -> bool:
    return name.startswith((FILE_CERT_PREFIX, FILE_ROOT_PREFIX, CREDENTIAL_PREFIX))


class FileCertificates:
    """Builds SDS secrets from certificate files named in the secret name (see the module docstring).

    ``forbidden_dirs`` (the agent's state directory) are refused even below an allowed directory.
    """

    def __init__(
        self, config: GatewayConfig, forbidden_dirs: Sequence[Path] = (), read_file: Any = None
    ) -> None:
        self._allowed = [_real(d) for d in config.certificate_dirs]
        self._credential_dir = _real(config.credential_dir)
        self._forbidden = [_real(d) for d in forbidden_dirs]
        self._read = read_file or (lambda p: Path(p).read_bytes())

    def files(self, name: str) -> list[Path]:
        """The files secret ``name`` is made of (cert and key, or the CA); VmagentError for a bad name."""
        if name.startswith(FILE_CERT_PREFIX):
            cert, sep, key = name[len(FILE_CERT_PREFIX) :].partition("~")
            if not sep or not cert or not key:
                raise VmagentError(f"secret {name!r}: expected file-cert:CERT~KEY")
            return [self._check(Path(cert), name), self._check(Path(key), name)]
        if name.startswith(FILE_ROOT_PREFIX):
            return [self._check(Path(name[len(FILE_ROOT_PREFIX) :]), name)]
        if name.startswith(CREDENTIAL_PREFIX):
            cred = name[len(CREDENTIAL_PREFIX) :]
            ca = cred.endswith(CACERT_SUFFIX)
            if ca:
                cred = cred[: -len(CACERT_SUFFIX)]
            if not cred or "/" in cred or cred in (".", ".."):
                raise VmagentError(f"secret {name!r}: credentialName must be a plain name")
            base = self._credential_dir / cred
            return [base / "ca.crt"] if ca else [base / "tls.crt", base / "tls.key"]
        raise VmagentError(f"secret {name!r} is not a certificate file secret")

    def _check(self, path: Path, name: str) -> Path:
        if not path.is_absolute():
            raise VmagentError(f"secret {name!r}: {path} is not an absolute path")
        real = _real(path)
        if any(_under(real, d) for d in self._forbidden) or not any(_under(real, d) for d in self._allowed):
            allowed = ", ".join(str(d) for d in self._allowed)
            raise VmagentError(
                f"secret {name!r}: {path} is outside the gateway's certificate directories ({allowed}); "
                "add its directory to gateway.certificate_dirs"
            )
        return real

    def fingerprint(self, names: Iterable[str]) -> tuple[tuple[str, int, int, int], ...]:
        """Cheap change detection: (path, inode, size, mtime) of every file behind ``names``."""
        out = []
        for name in sorted(set(names)):
            try:
                paths = self.files(name)
            except VmagentError:
                continue
            for p in paths:
                try:
                    st = os.stat(p)
                    out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append((str(p), -1, -1, -1))
        return tuple(out)

    def build(self, name: str) -> secret_pb2.Secret:
        """The secret ``name`` with the files' contents inline; VmagentError (no key material) if unusable."""
        paths = self.files(name)
        data = []
        for p in paths:
            try:
                data.append(self._read(p))
            except OSError as exc:
                raise VmagentError(f"secret {name!r}: cannot read {p}: {exc.strerror or exc}") from exc
        if len(paths) == 1:
            _certs(data[0], paths[0], name)
            return secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=data[0])
                ),
            )
        chain = _certs(data[0], paths[0], name)
        try:
            key = load_key(data[1])
        except (ValueError, TypeError, VmagentError) as exc:
            raise VmagentError(f"secret {name!r}: {paths[1]} holds no usable private key") from exc
        if key.public_key().public_bytes(*_PUB) != chain[0].public_key().public_bytes(*_PUB):
            raise VmagentError(f"secret {name!r}: the key in {paths[1]} does not belong to {paths[0]}")
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=data[0]),
                private_key=base_pb2.DataSource(inline_bytes=data[1]),
            ),
        )


def _certs(pem: bytes, path: Path, name: str) -> list[Any]:
    try:
        certs = load_chain(pem)
    except VmagentError as exc:
        raise VmagentError(f"secret {name!r}: {path}: {exc}") from exc
    if not certs:
        raise VmagentError(f"secret {name!r}: {path} holds no PEM certificate")
    return certs


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def gateway_capture(capture: Mapping[str, Any] | None, gateway: GatewayConfig) -> Mapping[str, Any] | None:
    """The ``capture:`` section as it applies: unchanged on a sidecar; on a gateway, capture is off
    unless ``capture.enabled`` says otherwise, and inbound traffic is never intercepted (clients connect
    to the gateway's listeners directly)."""
    if not gateway.enabled:
        return capture
    out = dict(capture) if isinstance(capture, Mapping) else {}
    out.setdefault("enabled", False)
    out["inbound"] = False
    return out


def enable_gateway_mode(config_file: Path) -> None:
    """Turn gateway mode on in the agent's config file (``gateway.enabled: true``), keeping the rest."""
    from vmagent.agent.config import AgentConfig

    cfg = AgentConfig.load(config_file)
    section = cfg.section("gateway")
    cfg.sections["gateway"] = {**section, "enabled": True}
    cfg.save(config_file)
