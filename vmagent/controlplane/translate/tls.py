"""TLS contexts: Istio mutual TLS with SDS secrets ``default``/``ROOTCA``, and DestinationRule TLS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.protos import boolean, grpc_source, typed

TLS_SOCKET = "envoy.transport_sockets.tls"


@dataclass(frozen=True)
class UpstreamTls:
    """How a cluster's connections are secured (DestinationRule ``tls`` or automatic mutual TLS).

    ``mode`` is ISTIO_MUTUAL, SIMPLE or MUTUAL. File paths are read by Envoy on the proxy's host.
    """

    mode: str
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()
    ca_certificates: str = ""
    client_certificate: str = ""
    private_key: str = ""
    credential_name: str = ""
    alpn: tuple[str, ...] = ()


def sds_secret(name: str, sds_cluster: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=grpc_source(sds_cluster))


def _tls_params() -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2)


def _san_matchers(sans: Sequence[str], san_type: int) -> list[common_pb2.SubjectAltNameMatcher]:
    return [
        common_pb2.SubjectAltNameMatcher(san_type=san_type, matcher=string_pb2.StringMatcher(exact=s))  # type: ignore[arg-type]
        for s in sorted(set(sans))
    ]


def mesh_common_context(
    sds_cluster: str, peer_sans: Sequence[str] = (), alpn: Sequence[str] = ()
) -> tls_pb2.CommonTlsContext:
    """The proxy's certificate (SDS ``default``), trust in the mesh root (SDS ``ROOTCA``), peer URI SANs."""
    return tls_pb2.CommonTlsContext(
        tls_params=_tls_params(),
        alpn_protocols=list(alpn),
        tls_certificate_sds_secret_configs=[sds_secret(names.SECRET_DEFAULT, sds_cluster)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=_san_matchers(peer_sans, common_pb2.SubjectAltNameMatcher.URI)
            ),
            validation_context_sds_secret_config=sds_secret(names.SECRET_ROOTCA, sds_cluster),
        ),
    )


def upstream_context(tls: UpstreamTls, sds_cluster: str) -> tls_pb2.UpstreamTlsContext:
    """The UpstreamTlsContext for ``tls``."""
    if tls.mode == "ISTIO_MUTUAL":
        return tls_pb2.UpstreamTlsContext(
            common_tls_context=mesh_common_context(sds_cluster, tls.subject_alt_names, tls.alpn), sni=tls.sni
        )
    common = tls_pb2.CommonTlsContext(tls_params=_tls_params(), alpn_protocols=list(tls.alpn))
    if tls.ca_certificates or tls.subject_alt_names:
        vc = common_pb2.CertificateValidationContext(
            match_typed_subject_alt_names=_san_matchers(
                tls.subject_alt_names, common_pb2.SubjectAltNameMatcher.DNS
            )
        )
        if tls.ca_certificates:
            vc.trusted_ca.CopyFrom(base_pb2.DataSource(filename=tls.ca_certificates))
        common.validation_context.CopyFrom(vc)
    if tls.mode == "MUTUAL":
        if tls.credential_name:
            common.tls_certificate_sds_secret_configs.append(sds_secret(tls.credential_name, sds_cluster))
        elif tls.client_certificate and tls.private_key:
            common.tls_certificates.append(
                common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
                    private_key=base_pb2.DataSource(filename=tls.private_key),
                )
            )
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni)


def upstream_socket(tls: UpstreamTls, sds_cluster: str) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=typed(upstream_context(tls, sds_cluster)))


def inbound_mtls_socket(sds_cluster: str, alpn: Sequence[str] = ()) -> base_pb2.TransportSocket:
    """Mutual TLS on inbound: present ``default``, require a client certificate issued by ``ROOTCA``."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=mesh_common_context(sds_cluster, alpn=alpn),
        require_client_certificate=boolean(True),
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=typed(ctx))
