"""Certificate rotation: renew at about half the lifetime, authenticated by the current certificate.

The join token is never needed again. A failed attempt keeps the current certificate and retries with
exponential backoff; nothing but a verified chain for a fresh key replaces it.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
from collections.abc import Callable

import grpc

from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.join import make_csr
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.errors import VmagentError
from vmagent.common.x509util import chain_pem, generate_key, key_pem, load_chain, spiffe_ids, verify_chain

log = logging.getLogger(__name__)

RENEW_TIMEOUT = 15.0


def renewal_time(
    ident: Identity, rng: random.Random, fraction: float = 0.5, jitter: float = 0.1
) -> datetime.datetime:
    """When to renew: ``fraction`` of the lifetime (+- ``jitter`` of it) after ``not_before``."""
    lifetime = ident.not_after - ident.not_before
    share = fraction + rng.uniform(-jitter, jitter)
    return ident.not_before + lifetime * share


class Rotator:
    """A background thread that keeps the identity fresh."""

    def __init__(
        self,
        identities: IdentityStore,
        channel: Callable[[], grpc.Channel],
        key_algorithm: str = "ec-p256",
        ttl_seconds: int = 0,
        max_backoff: float = 60.0,
        rng: random.Random | None = None,
        reissue: Callable[[], Identity] | None = None,
    ) -> None:
        """``reissue``: gets a certificate without the current one, used once it has expired (pod mode:
        the ServiceAccount token); None (a VM): an expired certificate needs a new join."""
        self._reissue = reissue
        self._identities = identities
        self._channel = channel
        self._key_algorithm = key_algorithm
        self._ttl = ttl_seconds  # 0: the CA's default lifetime
        self._max_backoff = max_backoff
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.next_rotation: datetime.datetime | None = None
        self.last_error: str = ""
        self.last_success: datetime.datetime | None = None
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rotation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=RENEW_TIMEOUT + 1)

    def rotate_now(self) -> None:
        self.next_rotation = datetime.datetime.now(datetime.UTC)
        self._wake.set()

    def _loop(self) -> None:
        ident = self._identities.current()
        self.next_rotation = renewal_time(ident, self._rng)
        backoff = 1.0
        while not self._stop.is_set():
            now = datetime.datetime.now(datetime.UTC)
            due = self.next_rotation or now
            if now < due:
                self._wake.wait(timeout=min((due - now).total_seconds(), 30.0))
                self._wake.clear()
                continue
            try:
                new = self.renew_once()
            except (VmagentError, grpc.RpcError) as exc:
                self.failures += 1
                self.last_error = _describe(exc)
                current = self._identities.current()
                # Retry with backoff, but never sleep past the certificate's expiry.
                left = (current.not_after - now).total_seconds()
                delay = min(backoff, self._max_backoff, max(left / 4, 1.0))
                backoff = min(backoff * 2, self._max_backoff)
                log.warning(
                    "certificate renewal failed (%s); keeping serial %x, retry in %.1fs",
                    self.last_error,
                    current.serial,
                    delay,
                )
                self.next_rotation = now + datetime.timedelta(seconds=delay)
                continue
            backoff = 1.0
            self.failures = 0
            self.last_error = ""
            self.last_success = now
            self.next_rotation = renewal_time(new, self._rng)
            log.info(
                "certificate renewed: serial %x valid until %s; next rotation %s",
                new.serial,
                new.not_after.isoformat(),
                self.next_rotation.isoformat(),
            )

    def renew_once(self) -> Identity:
        """One renewal over mTLS; the new identity is saved only after it is fully verified."""
        current = self._identities.current()
        if self._reissue is not None and current.expired():
            new = self._reissue()
            if new.spiffe_id != current.spiffe_id:
                raise VmagentError(f"reissued identity {new.spiffe_id}, expected {current.spiffe_id}")
            self._identities.save(new)
            return new
        key = generate_key(self._key_algorithm)
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(self._channel())
        resp = stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key).decode(), validity_duration=self._ttl),
            timeout=RENEW_TIMEOUT,
        )
        chain = load_chain("".join(resp.cert_chain).encode())
        verify_chain(chain, current.root)
        if spiffe_ids(chain[0]) != [current.spiffe_id.uri]:
            raise VmagentError(
                f"renewal returned identity {spiffe_ids(chain[0])}, expected {current.spiffe_id}"
            )
        new = Identity(key_pem(key), chain_pem(chain), current.root_pem)
        self._identities.save(new)
        return new


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
