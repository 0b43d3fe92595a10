"""The agent's single mutual-TLS channel to the control plane, rebuilt when the certificate rotates."""

from __future__ import annotations

import logging
import threading

import grpc

from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.join import secure_channel

log = logging.getLogger(__name__)


class ControlPlaneChannel:
    """``get()`` returns a channel authenticated with the current certificate.

    After a rotation the next ``get()`` builds a channel with the new certificate; streams already open
    on the old channel keep running until they end (the old channel is closed at ``close()``).
    """

    def __init__(self, address: str, server_name: str, identities: IdentityStore) -> None:
        self._address = address
        self._server_name = server_name
        self._identities = identities
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._serial: int | None = None
        self._old: list[grpc.Channel] = []

    @property
    def address(self) -> str:
        return self._address

    def get(self) -> grpc.Channel:
        ident = self._identities.current()
        with self._lock:
            if self._channel is None or self._serial != ident.serial:
                if self._channel is not None:
                    self._old.append(self._channel)
                self._channel = self._build(ident)
                self._serial = ident.serial
            return self._channel

    def _build(self, ident: Identity) -> grpc.Channel:
        log.debug("control-plane channel to %s with certificate serial %x", self._address, ident.serial)
        return secure_channel(
            self._address, ident.root_pem, self._server_name, (ident.key_pem, ident.chain_pem)
        )

    def close(self) -> None:
        with self._lock:
            for ch in [*self._old, *([self._channel] if self._channel else [])]:
                ch.close()
            self._old.clear()
            self._channel = None
