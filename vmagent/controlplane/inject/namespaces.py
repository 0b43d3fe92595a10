"""A namespace's labels for the injection policy, read from the API server and kept for a few seconds
(a Deployment's pods arrive in bursts; the labels rarely change)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vmagent.controlplane.kube.client import KubeClient, KubeError, Resource

NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)


class NamespaceLabels:
    """``labels(name)``: the labels of namespace ``name``; ``KubeError`` when it cannot be read."""

    def __init__(
        self, client: KubeClient, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}

    def __call__(self, name: str) -> dict[str, str]:
        if not name:
            raise KubeError(0, "no namespace", "the request names no namespace", "namespace lookup")
        now = self._clock()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        obj = self.client.get(NAMESPACES.object_path("", name))
        raw = (obj.get("metadata") or {}).get("labels") or {}
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        with self._lock:
            self._cache[name] = (now, labels)
            if len(self._cache) > 10000:  # bound the memory of a cluster with churning namespaces
                self._cache.clear()
        return labels
