"""gRPC services that issue certificates: Istio's CreateCertificate and vmagent's Join.

Authentication decides the identity; the CSR never does:
* on the mutual-TLS port the caller's current mesh certificate (renewal),
* on either port a join token (``authorization: Bearer``), whose WorkloadGroup's service account is used;
* on either port, for ``CreateCertificate`` only, a Kubernetes ServiceAccount token (a pod's first
  certificate, when the control plane has a cluster): the identity is the one the API server's TokenReview
  names (vmagent/controlplane/ca/sa_tokens.py). Which of the two bearer kinds a token is is decided by
  vmagent/controlplane/ca/credentials.py, never by trying both.

A join (a token use: a new VM) is logged at INFO; a renewal, the bulk of the traffic, at DEBUG, with a
per-minute INFO summary of both; the ``issued_certs`` table has every certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
from cryptography import x509

from vmagent.api import bootstrap_pb2, bootstrap_pb2_grpc, istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.x509util import SpiffeId, cert_pem
from vmagent.controlplane.ca.authn import bearer_token, peer_identity
from vmagent.controlplane.ca.authority import CertificateAuthority, CsrError, parse_csr
from vmagent.controlplane.ca.certrecords import CertRecords
from vmagent.controlplane.ca.credentials import KUBERNETES, CredentialError, declared_kind, resolve_kind
from vmagent.controlplane.ca.join_limiter import FailedJoinLimiter, peer_host
from vmagent.controlplane.ca.sa_tokens import ReviewRefused, ServiceAccountTokens
from vmagent.controlplane.ca.tokens import TokenAuthority, TokenClaims, TokenError

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


class _IssueLog:
    """Counts issuances and logs one INFO summary a minute (renewals are logged one by one only at DEBUG;
    every certificate is in the ``issued_certs`` table)."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._counts = {"join": 0, "renew": 0, "kubernetes": 0}
        self._since = time.monotonic()

    def count(self, via: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts[via] += 1
            if now - self._since < self._interval:
                return
            counts, elapsed = dict(self._counts), now - self._since
            self._counts = dict.fromkeys(self._counts, 0)
            self._since = now
        log.info(
            "issued %d certificates in the last %.0f s (%d joins, %d renewals, %d to pods)",
            sum(counts.values()), elapsed, counts["join"], counts["renew"], counts["kubernetes"],
        )  # fmt: skip


class IssuerObserver(Protocol):
    """Told of every CSR, issuance and refusal (the control plane's Prometheus metrics)."""

    def csr_received(self, via: str) -> None: ...

    def issued(self, via: str) -> None: ...

    def refused(self, via: str, code: str) -> None: ...

    def token_refused(self, reason: str) -> None: ...


class CertificateIssuer:
    """The logic shared by both services: authenticate, validate, consume, sign, record.

    Methods raise ``_Refused``; the servicers below turn it into the gRPC status. Nothing on the
    renewal path touches the database synchronously (revocations come from ``CertRecords``' snapshot,
    the issued row is written behind), so :class:`AsyncIstioCertificateServicer` runs it on the event loop.
    """

    PEER_CACHE_SIZE = 10_000

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenAuthority,
        records: CertRecords,
        groups: GroupLookup,
        mesh: MeshInfo,
        observer: IssuerObserver | None = None,
        sa_tokens: ServiceAccountTokens | None = None,
    ) -> None:
        """``sa_tokens``: the cluster's TokenReview (None: no cluster, ServiceAccount tokens refused)."""
        self.ca = ca
        self.sa_tokens = sa_tokens
        self.observer = observer
        self.tokens = tokens
        self.records = records
        self.groups = groups
        self.mesh = mesh
        # Verified peer certificate (PEM, as the TLS layer hands it over) -> its identity and serial: a
        # client renews over one connection many times, so each certificate is parsed once.
        self._peers: dict[bytes, tuple[SpiffeId, int] | None] = {}
        self._issued = _IssueLog()
        self.join_limiter = FailedJoinLimiter()

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
        self, token: str | None, csr: str, validity: int, hostname: str, source: str = ""
    ) -> tuple[list[x509.Certificate], SpiffeId, TokenClaims, dict[str, Any]]:
        """Verify the join token, then issue for its WorkloadGroup's identity (consuming one use).

        ``source`` (the caller's address) is refused for a while after too many failed tokens.
        """
        obs = self.observer
        if obs is not None:
            obs.csr_received("join")
        try:
            result = self._issue_with_token(token, csr, validity, hostname, source)
        except _Refused as exc:
            if obs is not None:
                obs.refused("join", exc.code.name.lower())
            raise
        if obs is not None:
            obs.issued("join")
        return result

    def _issue_with_token(
        self, token: str | None, csr: str, validity: int, hostname: str, source: str
    ) -> tuple[list[x509.Certificate], SpiffeId, TokenClaims, dict[str, Any]]:
        wait = self.join_limiter.retry_after(source)
        if wait is not None:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed joins from {source or 'this address'}; retry in {wait:.0f} s",
            )
        if token is None:
            self.join_limiter.failed(source)
            self._token_refused("missing")
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "no join token (authorization: Bearer) was sent")
        try:
            claims = self.tokens.verify(token)
        except TokenError as exc:
            self.join_limiter.failed(source)
            log.warning("join refused from %s: %s", source or "?", exc)
            self._token_refused(exc.reason)
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
        identity, group = self.identity_for_group(claims.namespace, claims.group)
        parsed = _parse(csr)
        with self.records.write_lock:  # shared with CA workers: see certrecords.WriteLock
            self._consume(claims)  # only for a CSR that will be signed
        chain = self.ca.sign_csr(parsed, identity, _ttl(validity))
        self.records.record(chain[0], identity, via="join", hostname=hostname)
        # A join is answered only once its record is committed: a control plane killed right after the
        # agent saw its certificate still has the record (tests/integration/test_cp_crash_consistency.py).
        if not self.records.flush():
            raise _Refused(grpc.StatusCode.UNAVAILABLE, "the certificate record could not be stored; retry")
        self._issued.count("join")
        log.info("join: issued %s serial %x to %s", identity, chain[0].serial_number, hostname or "?")
        return chain, identity, claims, group

    def _token_refused(self, reason: str) -> None:
        if self.observer is not None:
            self.observer.token_refused(reason)

    def _consume(self, claims: TokenClaims) -> None:
        try:
            self.tokens.consume(claims)
        except TokenError as exc:
            self._token_refused(exc.reason)
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc

    def issue_with_sa_token(
        self, token: str, csr: str, validity: int, source: str = ""
    ) -> tuple[list[x509.Certificate], SpiffeId]:
        """Review the ServiceAccount token with the cluster, then issue for the identity it names."""
        obs = self.observer
        if obs is not None:
            obs.csr_received(KUBERNETES)
        try:
            result = self._issue_with_sa_token(token, csr, validity, source)
        except _Refused as exc:
            if obs is not None:
                obs.refused(KUBERNETES, exc.code.name.lower())
            raise
        if obs is not None:
            obs.issued(KUBERNETES)
        return result

    def _issue_with_sa_token(
        self, token: str, csr: str, validity: int, source: str
    ) -> tuple[list[x509.Certificate], SpiffeId]:
        wait = self.join_limiter.retry_after(source)
        if wait is not None:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed token requests from {source or 'this address'}; retry in {wait:.0f} s",
            )
        if self.sa_tokens is None:
            self.join_limiter.failed(source)
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "a Kubernetes ServiceAccount token was sent, but this control plane has no cluster "
                "(start it with --kubeconfig or --in-cluster to accept pods' tokens)",
            )
        parsed = _parse(csr)  # a bad CSR costs no TokenReview
        try:
            reviewed = self.sa_tokens.review(token)
        except ReviewRefused as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                self.join_limiter.failed(source)
                log.warning("ServiceAccount token refused from %s: %s", source or "?", exc.message)
            raise _Refused(exc.code, exc.message) from exc
        identity = reviewed.identity
        if identity.trust_domain != self.mesh.trust_domain:  # pragma: no cover - built from our own
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{identity} is not in this trust domain")
        chain = self.ca.sign_csr(parsed, identity, _ttl(validity))
        self.records.record(chain[0], identity, via=KUBERNETES, hostname=reviewed.pod)
        if not self.records.flush():
            raise _Refused(grpc.StatusCode.UNAVAILABLE, "the certificate record could not be stored; retry")
        self._issued.count(KUBERNETES)
        log.info(
            "pod %s: issued %s serial %x (ServiceAccount token)",
            reviewed.pod or "?", identity, chain[0].serial_number,
        )  # fmt: skip
        return chain, identity

    def renew(self, context: grpc.ServicerContext, csr: str, validity: int) -> list[x509.Certificate]:
        """Issue for the identity of the caller's mesh certificate (mTLS), unless it is revoked."""
        obs = self.observer
        if obs is not None:
            obs.csr_received("renew")
        try:
            chain = self._renew(context, csr, validity)
        except _Refused as exc:
            if obs is not None:
                obs.refused("renew", exc.code.name.lower())
            raise
        if obs is not None:
            obs.issued("renew")
        return chain

    def _renew(self, context: grpc.ServicerContext, csr: str, validity: int) -> list[x509.Certificate]:
        peer = self._peer(context)
        if peer is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate and no join token")
        identity, serial = peer
        if identity.trust_domain != self.mesh.trust_domain:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{identity} is not in this trust domain")
        if self.records.is_revoked_cached(identity, serial):
            log.warning("renewal refused: %s serial %x is revoked", identity, serial)
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"the certificate of {identity} has been revoked"
            )
        chain = self.ca.sign_csr(_parse(csr), identity, _ttl(validity))
        self.records.record(chain[0], identity, via="renew", previous_serial=serial)
        self._issued.count("renew")
        log.debug("renewed %s: serial %x -> %x", identity, serial, chain[0].serial_number)
        return chain

    def create_certificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.ServicerContext
    ) -> istio_ca_pb2.IstioCertificateResponse:
        """``CreateCertificate``: a join token or a ServiceAccount token if one was sent, else the
        caller's mesh certificate."""
        token = bearer_token(context)
        if token is None:
            chain = self.renew(context, request.csr, request.validity_duration)
            return istio_ca_pb2.IstioCertificateResponse(cert_chain=self.chain_pem(chain))
        source = peer_host(context.peer())
        kind = self.credential_kind(token, context)
        if kind == KUBERNETES:
            chain, _ = self.issue_with_sa_token(token, request.csr, request.validity_duration, source)
        else:
            chain, *_ = self.issue_with_token(token, request.csr, request.validity_duration, "", source)
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=self.chain_pem(chain))

    def credential_kind(self, token: str, context: grpc.ServicerContext) -> str:
        """The bearer token's kind (join or kubernetes), refused when the caller declared the other one."""
        try:
            return resolve_kind(token, declared_kind(context))
        except CredentialError as exc:
            self.join_limiter.failed(peer_host(context.peer()))
            self._token_refused("wrong_kind")
            log.warning("certificate request refused from %s: %s", peer_host(context.peer()), exc.message)
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, exc.message) from exc

    def chain_pem(self, chain: list[x509.Certificate]) -> list[str]:
        """PEM strings of an issued chain (the CA's part is encoded once, not per certificate)."""
        return [cert_pem(chain[0]).decode(), *self.ca.chain_tail_pem]

    def _peer(self, context: grpc.ServicerContext) -> tuple[SpiffeId, int] | None:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") if auth else None
        if not pems:
            return None
        key = pems[0]
        try:
            return self._peers[key]
        except KeyError:
            pass
        found = peer_identity(context)
        value = (found[0], found[1].serial_number) if found is not None else None
        if len(self._peers) >= self.PEER_CACHE_SIZE:
            self._peers.clear()  # bounded; a renewal storm refills it with the live connections
        self._peers[key] = value
        return value


def _parse(csr: str) -> x509.CertificateSigningRequest:
    try:
        return parse_csr(csr.encode())
    except CsrError as exc:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _ttl(validity: int) -> datetime.timedelta | None:
    return datetime.timedelta(seconds=validity) if validity > 0 else None


class IstioCertificateServicer(istio_ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    """``istio.v1.auth.IstioCertificateService/CreateCertificate``: token or mTLS authenticated.

    For a threaded ``grpc.server`` (or a ``grpc.aio`` server's migration pool)."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self._issuer = issuer

    def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.ServicerContext
    ) -> istio_ca_pb2.IstioCertificateResponse:
        try:
            return self._issuer.create_certificate(request, context)
        except _Refused as exc:
            _abort(context, exc)


class AsyncIstioCertificateServicer(istio_ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    """The same service for a ``grpc.aio`` server. A renewal runs on the event loop itself (it needs no
    database round trip, and handing each call to a thread costs more than signing it); a token-
    authenticated call, which consumes a token use in SQLite, runs in a worker thread."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self._issuer = issuer

    async def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> istio_ca_pb2.IstioCertificateResponse:
        try:
            if bearer_token(context) is not None:
                return await asyncio.to_thread(self._issuer.create_certificate, request, context)
            chain = self._issuer.renew(context, request.csr, request.validity_duration)
            return istio_ca_pb2.IstioCertificateResponse(cert_chain=self._issuer.chain_pem(chain))
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
            raise AssertionError("unreachable") from exc  # abort raises


class BootstrapServicer(bootstrap_pb2_grpc.BootstrapServicer):  # type: ignore[misc]
    """``vmagent.v1.Bootstrap/Join``: the first certificate plus the VM's configuration."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self._issuer = issuer

    def Join(
        self, request: bootstrap_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> bootstrap_pb2.JoinResponse:
        try:
            token = bearer_token(context)
            if token is not None and self._issuer.credential_kind(token, context) == KUBERNETES:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a Kubernetes ServiceAccount token is not a join token: Join is for VMs "
                    "(`vmagent-cp token create`); a pod gets its certificate from CreateCertificate",
                )
            chain, identity, claims, group = self._issuer.issue_with_token(
                token,
                request.csr,
                request.validity_duration,
                request.hostname,
                peer_host(context.peer()),
            )
        except _Refused as exc:
            _abort(context, exc)
        mesh = self._issuer.mesh
        return bootstrap_pb2.JoinResponse(
            cert_chain=self._issuer.chain_pem(chain),
            root_cert=self._issuer.ca.root_pem.decode(),
            trust_domain=mesh.trust_domain,
            namespace=claims.namespace,
            group=claims.group,
            service_account=identity.service_account,
            workload_group_json=json.dumps(group, sort_keys=True),
            mtls_port=mesh.mtls_port,
            mesh_config_json=json.dumps(mesh.mesh_config, sort_keys=True),
        )


def add_join_services(server: grpc.Server, issuer: CertificateIssuer) -> None:
    """Everything the join (TLS) port serves, on a threaded server: CreateCertificate and Join."""
    istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(IstioCertificateServicer(issuer), server)
    bootstrap_pb2_grpc.add_BootstrapServicer_to_server(BootstrapServicer(issuer), server)
