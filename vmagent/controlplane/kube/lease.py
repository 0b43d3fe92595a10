"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Every replica runs a ``LeaseElector``. The holder renews ``spec.renewTime`` every ``retry_period``;
another replica takes the Lease over once ``renewTime + leaseDurationSeconds`` has passed by its own
clock. Every write is a PUT carrying the Lease's resourceVersion, so of two replicas racing for an
expired Lease exactly one wins (the other gets ``409 Conflict`` and stays a follower). A holder that
cannot renew within ``renew_deadline`` stops leading before the Lease can expire, so two leaders never
overlap by more than the clock skew between replicas.

The client library's own ``leaderelection`` package is not used: its loops cannot be stopped (a
control plane must shut down cleanly) and it exits the process on a bad argument.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from vmagent.controlplane.kube.client import JsonObj, KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

LEASE_NAME = "vmagent-cp-leader"
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")


def _micro_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class LeaseElector:
    """Holds (or waits for) the Lease ``namespace/name`` on behalf of ``identity``."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_change = on_change
        self._clock = clock
        self._leading = False
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder = ""  # the identity the Lease names, as last read
        self.last_error = ""
        self.transitions = 0

    def is_leader(self) -> bool:
        # Leading ends by itself when renewals have failed for renew_deadline, even before the loop notices.
        return self._leading and self._clock() - self._last_renew < self.renew_deadline

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lease-elector", daemon=True)
            self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop; a leader releases the Lease (clears the holder) so a follower takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._leading and release:
            try:
                lease = self.client.get(LEASES.object_path(self.namespace, self.name))
                if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    spec = dict(lease.get("spec") or {})
                    spec["holderIdentity"] = None
                    spec["leaseDurationSeconds"] = 1
                    self.client.request(
                        "PUT", LEASES.object_path(self.namespace, self.name), body={**lease, "spec": spec}
                    )
            except KubeError as exc:
                log.info("lease %s/%s not released: %s", self.namespace, self.name, exc)
        self._set_leading(False)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except KubeError as exc:
                if str(exc) != self.last_error:
                    log.warning("lease %s/%s: %s (retrying)", self.namespace, self.name, exc)
                self.last_error = str(exc)
                ok = False
            else:
                self.last_error = ""
            if ok:
                self._last_renew = self._clock()
            self._set_leading(ok or self.is_leader())
            self._stop.wait(self.retry_period)

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info(
            "%s %s the lease %s/%s", self.identity, "holds" if leading else "lost", self.namespace, self.name
        )
        if self._on_change is not None:
            try:
                self._on_change(leading)
            except Exception:
                log.exception("lease change handler failed")

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        now = self._clock()
        path = LEASES.object_path(self.namespace, self.name)
        try:
            lease = self.client.get(path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        spec: JsonObj = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        if holder and holder != self.identity:
            renewed = _parse_time(str(spec.get("renewTime") or "")) or 0.0
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if now < renewed + duration:
                return False  # held by another replica that is still renewing
        if holder != self.identity:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(self.lease_duration)
        spec["renewTime"] = _micro_time(now)
        try:
            self.client.request("PUT", path, body={**lease, "spec": spec})  # carries resourceVersion
        except KubeError as exc:
            if exc.status == 409:
                return False  # another replica wrote first
            raise
        if holder != self.identity:
            self.transitions += 1
        self.holder = self.identity
        return True

    def _create(self, now: float) -> bool:
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            self.client.request("POST", LEASES.collection_path(self.namespace), body=body)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self.holder = self.identity
        self.transitions += 1
        return True
