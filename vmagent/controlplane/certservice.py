"""gRPC services that issue certificates: Istio's CreateCertificate and vmagent's Join.

Authentication decides the identity; the CSR never does:
* on the mutual-TLS port the caller's current mesh certificate (renewal),
* on either port a join token (``authorization: Bearer``), whose WorkloadGroup's service account is used.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from vmagent.api import bootstrap_pb2, bootstrap_pb2_grpc, istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.x509util import SpiffeId, cert_pem
from vmagent.controlplane.authn import bearer_token, peer_identity
from vmagent.controlplane.ca import CertificateAuthority, CsrError, parse_csr
from vmagent.controlplane.certrecords import CertRecords
from vmagent.controlplane.tokens import TokenAuthority, TokenClaims, TokenError

log = logging.getLogger(__name__)

# (namespace, name) -> the WorkloadGroup object as a dict (apiVersion, kind, metadata, spec), or None.
GroupLookup = Callable[[str, str], dict[str, Any] | None]


@dataclass(frozen=True)
class MeshInfo:
    """What a joining agent is told about the mesh."""

    trust_domain: str
    mtls_port: int
    mesh_config: dict[str, Any]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _abort(context: grpc.ServicerContext, exc: _Refused) -> NoReturn:
    context.abort(exc.code, exc.message)
    raise AssertionError("unreachable")  # context.abort raises


class CertificateIssuer:
    """The logic shared by both services: authenticate, validate, consume, sign, record."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenAuthority,
        records: CertRecords,
        groups: GroupLookup,
        mesh: MeshInfo,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.records = records
        self.groups = groups
        self.mesh = mesh

    def identity_for_group(self, namespace: str, name: str) -> tuple[SpiffeId, dict[str, Any]]:
        group = self.groups(namespace, name)
        if group is None:
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION, f"WorkloadGroup {namespace}/{name} does not exist"
            )
        template = (group.get("spec") or {}).get("template") or {}
        sa = str(template.get("serviceAccount") or "default")
        return SpiffeId(self.mesh.trust_domain, namespace, sa), group

    def issue_with_token(
        self, context: grpc.ServicerContext, csr: str, validity: int, hostname: str
    ) -> tuple[list[Any], SpiffeId, TokenClaims, dict[str, Any]]:
        token = bearer_token(context)
        if token is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "no join token (authorization: Bearer) was sent")
        try:
            claims = self.tokens.verify(token)
        except TokenError as exc:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
        identity, group = self.identity_for_group(claims.namespace, claims.group)
        chain = self._sign(csr, identity, validity, before_sign=lambda: self._consume(claims))
        self.records.record(chain[0], identity, via="join", hostname=hostname)
        log.info("join: issued %s serial %x to %s", identity, chain[0].serial_number, hostname or "?")
        return chain, identity, claims, group

    def _consume(self, claims: TokenClaims) -> None:
        try:
            self.tokens.consume(claims)
        except TokenError as exc:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc

    def renew(self, context: grpc.ServicerContext, csr: str, validity: int) -> list[Any]:
        peer = peer_identity(context)
        if peer is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate and no join token")
        identity, cert = peer
        if identity.trust_domain != self.mesh.trust_domain:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{identity} is not in this trust domain")
        if self.records.is_revoked(identity, cert.serial_number):
            log.warning("renewal refused: %s serial %x is revoked", identity, cert.serial_number)
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"the certificate of {identity} has been revoked"
            )
        chain = self._sign(csr, identity, validity)
        self.records.record(chain[0], identity, via="renew", previous_serial=cert.serial_number)
        log.info("renewed %s: serial %x -> %x", identity, cert.serial_number, chain[0].serial_number)
        return chain

    def _sign(
        self, csr: str, identity: SpiffeId, validity: int, before_sign: Callable[[], None] | None = None
    ) -> list[Any]:
        try:
            parse_csr(csr.encode())
        except CsrError as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        if before_sign is not None:
            before_sign()
        ttl = datetime.timedelta(seconds=validity) if validity > 0 else None
        return self.ca.sign_workload_csr(csr.encode(), identity, ttl)


class IstioCertificateServicer(istio_ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    """``istio.v1.auth.IstioCertificateService/CreateCertificate``: token or mTLS authenticated."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self._issuer = issuer

    def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.ServicerContext
    ) -> istio_ca_pb2.IstioCertificateResponse:
        try:
            if bearer_token(context) is not None:
                chain, *_ = self._issuer.issue_with_token(context, request.csr, request.validity_duration, "")
            else:
                chain = self._issuer.renew(context, request.csr, request.validity_duration)
        except _Refused as exc:
            _abort(context, exc)
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=[cert_pem(c).decode() for c in chain])


class BootstrapServicer(bootstrap_pb2_grpc.BootstrapServicer):  # type: ignore[misc]
    """``vmagent.v1.Bootstrap/Join``: the first certificate plus the VM's configuration."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self._issuer = issuer

    def Join(
        self, request: bootstrap_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> bootstrap_pb2.JoinResponse:
        try:
            chain, identity, claims, group = self._issuer.issue_with_token(
                context, request.csr, request.validity_duration, request.hostname
            )
        except _Refused as exc:
            _abort(context, exc)
        mesh = self._issuer.mesh
        return bootstrap_pb2.JoinResponse(
            cert_chain=[cert_pem(c).decode() for c in chain],
            root_cert=self._issuer.ca.root_pem.decode(),
            trust_domain=mesh.trust_domain,
            namespace=claims.namespace,
            group=claims.group,
            service_account=identity.service_account,
            workload_group_json=json.dumps(group, sort_keys=True),
            mtls_port=mesh.mtls_port,
            mesh_config_json=json.dumps(mesh.mesh_config, sort_keys=True),
        )
