"""Downstream TLS for gateway servers, with certificates fetched from the agent's SDS by name.

Envoy on a gateway VM runs as ``vmagent-proxy`` and never reads key files itself: the agent (root) reads
them and serves them over SDS. The secret names carry what the agent must read (as Istio's agent does for
VMs):

* ``file-cert:CERT~KEY`` — a ``tls_certificate`` from the certificate chain file CERT and the key KEY
  (``serverCertificate`` / ``privateKey``);
* ``file-root:CA`` — a ``validation_context`` from the CA bundle file CA (``caCertificates``);
* ``kubernetes://NAME`` and ``kubernetes://NAME-cacert`` — ``credentialName: NAME``, which the agent
  resolves to ``tls.crt``/``tls.key`` and ``ca.crt`` in the directory ``NAME`` under its credential
  directory (docs/gateway.md).

Modes: SIMPLE (server certificate only), MUTUAL (client certificate required, verified against the CA),
OPTIONAL_MUTUAL (verified when presented), ISTIO_MUTUAL (the gateway's mesh certificate ``default`` and
the mesh root ``ROOTCA``, client certificate required).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from vmagent.controlplane.specs.gateway import ServerTLSSettings
from vmagent.controlplane.translate.protos import boolean, typed
from vmagent.controlplane.translate.tls import TLS_SOCKET, mesh_common_context, sds_secret

FILE_CERT_PREFIX = "file-cert:"
FILE_ROOT_PREFIX = "file-root:"
CREDENTIAL_PREFIX = "kubernetes://"
CACERT_SUFFIX = "-cacert"

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def file_cert_secret(cert: str, key: str) -> str:
    return f"{FILE_CERT_PREFIX}{cert}~{key}"


def file_root_secret(ca: str) -> str:
    return f"{FILE_ROOT_PREFIX}{ca}"


def credential_secret(name: str, ca: bool = False) -> str:
    return f"{CREDENTIAL_PREFIX}{name}{CACERT_SUFFIX if ca else ''}"


def _params(tls: ServerTLSSettings) -> common_pb2.TlsParameters:
    low = _VERSIONS.get(tls.min_protocol_version, common_pb2.TlsParameters.TLSv1_2)
    out = common_pb2.TlsParameters(tls_minimum_protocol_version=low)
    high = tls.max_protocol_version
    if high in _VERSIONS:
        out.tls_maximum_protocol_version = _VERSIONS[high]
    ciphers = list(tls.cipher_suites)
    if ciphers:
        out.cipher_suites.extend(ciphers)
    return out


def certificate_secret(tls: ServerTLSSettings) -> str:
    """The SDS name of the server certificate of ``tls`` ("" when it names none)."""
    if tls.credential_name:
        return credential_secret(tls.credential_name)
    if tls.server_certificate and tls.private_key:
        return file_cert_secret(tls.server_certificate, tls.private_key)
    return ""


def ca_secret(tls: ServerTLSSettings) -> str:
    """The SDS name of the CA that verifies client certificates ("" when none is configured)."""
    if tls.credential_name:
        return credential_secret(tls.credential_name, ca=True)
    if tls.ca_certificates:
        return file_root_secret(tls.ca_certificates)
    return ""


def _san_matchers(sans: Sequence[str]) -> list[common_pb2.SubjectAltNameMatcher]:
    out = []
    for san_type in (common_pb2.SubjectAltNameMatcher.DNS, common_pb2.SubjectAltNameMatcher.URI):
        for s in sorted(set(sans)):
            out.append(
                common_pb2.SubjectAltNameMatcher(san_type=san_type, matcher=string_pb2.StringMatcher(exact=s))  # type: ignore[arg-type]
            )
    return out


def server_tls_context(
    settings: ServerTLSSettings | None, sds_cluster: str, alpn: Sequence[str]
) -> tls_pb2.DownstreamTlsContext:
    """The DownstreamTlsContext of a server's ``tls`` settings (mode SIMPLE when not given)."""
    tls = settings or ServerTLSSettings()
    mode = tls.mode or "SIMPLE"
    if mode == "ISTIO_MUTUAL":
        common = mesh_common_context(sds_cluster, alpn=alpn)
        return tls_pb2.DownstreamTlsContext(
            common_tls_context=common, require_client_certificate=boolean(True)
        )
    common = tls_pb2.CommonTlsContext(tls_params=_params(tls), alpn_protocols=list(alpn))
    cert = certificate_secret(tls)
    if cert:
        common.tls_certificate_sds_secret_configs.append(sds_secret(cert, sds_cluster))
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        sans = list(tls.subject_alt_names)
        default = common_pb2.CertificateValidationContext(match_typed_subject_alt_names=_san_matchers(sans))
        ca = ca_secret(tls)
        if ca:
            ctx.common_tls_context.combined_validation_context.CopyFrom(
                tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                    default_validation_context=default,
                    validation_context_sds_secret_config=sds_secret(ca, sds_cluster),
                )
            )
        ctx.require_client_certificate.CopyFrom(boolean(mode == "MUTUAL"))
    return ctx


def server_tls_socket(
    tls: ServerTLSSettings | None, sds_cluster: str, alpn: Sequence[str]
) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=TLS_SOCKET, typed_config=typed(server_tls_context(tls, sds_cluster, alpn))
    )
