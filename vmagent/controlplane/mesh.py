"""Keeps every connected proxy's xDS snapshot in step with the config and the registry.

Changes (config objects, registry endpoints) trigger the push scheduler, which debounces them
(about 100 ms, at most 1 s) and recomputes the snapshots of the proxies in scope; the cache then sends
each proxy only the resource types that changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from envoy.config.core.v3 import base_pb2

from vmagent.common.x509util import SpiffeId
from vmagent.controlplane.model import Service
from vmagent.controlplane.proxies import (
    ConnectedProxy,
    ProxyBinder,
    ProxyTable,
    Refused,
    bind_without_registry,
)
from vmagent.controlplane.xds.cache import SnapshotCache
from vmagent.controlplane.xds.push import PushScheduler
from vmagent.controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

# (proxy, services) -> the proxy's complete snapshot
Translate = Callable[[ConnectedProxy, list[Service]], Snapshot]


class MeshController:
    def __init__(
        self,
        cache: SnapshotCache,
        services: Callable[[], list[Service]],
        translate: Translate,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        binder: ProxyBinder | None = None,
    ) -> None:
        """``binder`` ties proxies to their certificate and workload entry (without one: namespace checks
        only and no labels, for tests of the xDS machinery). ``on_refused(key, reason)``, set by the
        owner, ends the streams of a proxy that may no longer act for its entry."""
        self.cache = cache
        self._binder = binder
        self.on_refused: Callable[[str, str], object] | None = None
        self.proxies = ProxyTable()
        self._services = services
        self._translate = translate
        self.pushes = 0
        self.last_error = ""
        self._rounds_started = 0  # recompute rounds begun (each gets the next index)
        self._last_done = -1  # index of the latest round finished
        self._round_cond = threading.Condition()
        self._scheduler = PushScheduler(self.recompute, debounce=debounce, max_delay=max_delay)

    # -- ADS callbacks ------------------------------------------------------------------------------

    def on_proxy_connected(self, identity: SpiffeId, serial: int, node: base_pb2.Node) -> str:
        binder = self._binder
        if binder is None:
            proxy = bind_without_registry(identity, serial, node)
            self.proxies.add(proxy)
        else:
            proxy = binder.bind(identity, serial, node)
            self.proxies.add(proxy, lambda old, new: binder.same_lineage(new.serial, f"{old.serial:x}"))
        if self.cache.get(proxy.key) is None:
            self._push(proxy, self._services())
        log.info("proxy %s connected as %s", proxy.key, identity)
        return proxy.key

    def on_proxy_disconnected(self, key: str) -> None:
        if self.proxies.remove(key):
            self.cache.clear(key)
            log.info("proxy %s disconnected", key)

    # -- changes ------------------------------------------------------------------------------------

    def changed(self, scope: Iterable[str] | None = None) -> None:
        """Something the snapshots depend on changed (``scope``: proxy keys, None = all)."""
        self._scheduler.trigger(scope)

    def recompute(self, scope: set[str] | None) -> None:
        with self._round_cond:
            index = self._rounds_started
            self._rounds_started += 1
        services = self._services()
        for proxy in self.proxies.all():
            rebound = False
            if self._binder is not None:
                bound = self._rebind(proxy)
                if bound is None:
                    continue
                rebound, proxy = bound != proxy, bound
            if scope is None or proxy.key in scope or rebound:
                self._push(proxy, services)
        with self._round_cond:
            self._last_done = max(self._last_done, index)
            self._round_cond.notify_all()

    def wait_pushed(self, timeout: float, synced: Callable[[], bool]) -> bool:
        """Block until a recompute that began after this call has finished and ``synced()`` holds
        (every proxy ACKed what it was sent); False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._round_cond:
            wanted = self._rounds_started  # the first round that begins after this call
            self.changed(None)
            while self._last_done < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._round_cond.wait(left)
        while time.monotonic() < deadline:
            if synced():
                return True
            time.sleep(0.05)
        return synced()

    def _rebind(self, proxy: ConnectedProxy) -> ConnectedProxy | None:
        """``proxy`` bound again (entries and config may have changed since it connected); None, and its
        streams ended, when it may no longer act for its node."""
        assert self._binder is not None
        try:
            bound = self._binder.rebind(proxy)
        except Refused as exc:
            log.warning("proxy %s may no longer act for its node: %s", proxy.key, exc)
            if self.on_refused is not None:
                self.on_refused(proxy.key, str(exc))
            return None
        if bound != proxy:
            self.proxies.update(bound)
        return bound

    def _push(self, proxy: ConnectedProxy, services: list[Service]) -> None:
        try:
            snap = self._translate(proxy, services)
        except Exception as exc:  # a translation bug must not take the control plane down
            self.last_error = f"{proxy.key}: {exc}"
            log.exception("translation for %s failed; it keeps its last config", proxy.key)
            return
        changed = self.cache.set(proxy.key, snap)
        if changed:
            self.pushes += 1
            log.debug("pushed %s to %s", sorted(changed), proxy.key)

    def close(self) -> None:
        self._scheduler.close()
