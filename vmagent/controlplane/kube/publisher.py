"""Auto-registered VMs published into the cluster as WorkloadEntry objects, named and annotated as
Istio does, so ``kubectl get workloadentries`` and Kiali see them.

For every auto-registered entry of the control plane's store:

* the object ``GROUP-ADDRESS`` in the group's namespace, with the entry's spec, labels and
  annotations, plus ``istio.io/autoRegistrationGroup``, ``istio.io/connectedAt`` /
  ``istio.io/disconnectedAt`` (RFC 3339) and ``istio.io/workloadController`` (which control plane
  wrote it), and an owner reference to the WorkloadGroup when the group is an object in the cluster
  (so deleting the group deletes its entries, as in Istio);
* ``status.conditions`` with a ``Healthy`` condition that follows the probe, written through the
  status subresource.

An entry deleted from the store (graceful leave, or the grace period after its VM disconnected) is
deleted from the cluster. Objects without ``istio.io/autoRegistrationGroup`` (written by an operator)
and objects another controller wrote are never touched.

Writes carry the object's resourceVersion as a precondition; a ``409 Conflict`` is answered by reading
the object again and re-applying the change. A failed write is retried on the next round (at the latest
after ``resync`` seconds), so a flapping API server delays the objects but loses nothing.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from vmagent.common.backoff import Backoff
from vmagent.controlplane.kube.client import JsonObj, KubeClient, KubeError, Resource
from vmagent.controlplane.registry.workload_entry import AUTO_REGISTRATION_ANNOTATION
from vmagent.controlplane.registry.workload_store import WorkloadRecord, WorkloadStore

log = logging.getLogger(__name__)

WORKLOAD_ENTRIES = Resource("networking.istio.io", "v1", "workloadentries", "WorkloadEntry")
CONNECTED_AT = "istio.io/connectedAt"
DISCONNECTED_AT = "istio.io/disconnectedAt"
CONTROLLER = "istio.io/workloadController"

GroupLookup = Callable[[str, str], JsonObj | None]  # (namespace, name) -> the group object, if in the cluster


def published_by(obj: JsonObj, controller: str) -> bool:
    """True for a WorkloadEntry that the control plane ``controller`` auto-registered."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return AUTO_REGISTRATION_ANNOTATION in ann and ann.get(CONTROLLER) == controller


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def desired_object(
    rec: WorkloadRecord, controller: str, group: JsonObj | None, api_version: str = "networking.istio.io/v1"
) -> JsonObj:
    """The WorkloadEntry object (metadata, spec) for ``rec``."""
    annotations = dict(rec.annotations)
    annotations[AUTO_REGISTRATION_ANNOTATION] = rec.group
    annotations[CONTROLLER] = controller
    connected = _rfc3339(rec.connected_at)
    if rec.connected and connected:
        annotations[CONNECTED_AT] = connected
    disconnected = _rfc3339(rec.disconnected_at)
    if not rec.connected and disconnected:
        annotations[DISCONNECTED_AT] = disconnected
    meta: dict[str, Any] = {
        "name": rec.name,
        "namespace": rec.namespace,
        "labels": dict(rec.labels),
        "annotations": annotations,
    }
    gmeta = (group or {}).get("metadata") or {}
    if gmeta.get("uid"):
        meta["ownerReferences"] = [
            {
                "apiVersion": str((group or {}).get("apiVersion") or "networking.istio.io/v1"),
                "kind": "WorkloadGroup",
                "name": str(gmeta.get("name")),
                "uid": str(gmeta["uid"]),
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
    return {
        "apiVersion": api_version,
        "kind": "WorkloadEntry",
        "metadata": meta,
        "spec": dict(rec.spec),
    }


def desired_status(rec: WorkloadRecord) -> JsonObj:
    if not rec.has_probe:
        return {}
    return {
        "conditions": [
            {
                "type": "Healthy",
                "status": "True" if rec.healthy else "False",
                "lastProbeTime": _rfc3339(rec.health_reported_at),
                "lastTransitionTime": _rfc3339(rec.health_changed_at),
                "message": rec.health_message,
            }
        ]
    }


def _same(current: JsonObj, wanted: JsonObj) -> bool:
    cm, wm = current.get("metadata") or {}, wanted["metadata"]
    return bool(
        (cm.get("labels") or {}) == wm["labels"]
        and (cm.get("annotations") or {}) == wm["annotations"]
        and (cm.get("ownerReferences") or []) == wm.get("ownerReferences", [])
        and (current.get("spec") or {}) == wanted["spec"]
    )


def _status_view(status: Any) -> list[tuple[str, str, str]]:
    """What matters of a status for deciding to write it (probe times alone do not cause writes)."""
    conds = (status or {}).get("conditions") or [] if isinstance(status, dict) else []
    return [
        (str(c.get("type")), str(c.get("status")), str(c.get("message") or ""))
        for c in conds
        if isinstance(c, dict)
    ]


class WorkloadEntryPublisher:
    """Keeps the cluster's auto-registered WorkloadEntries equal to the store (module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        store: WorkloadStore,
        controller: str,
        current: Callable[[], dict[tuple[str, str], JsonObj]],
        group: GroupLookup,
        is_leader: Callable[[], bool] = lambda: True,
        resync: float = 30.0,
        resource: Resource = WORKLOAD_ENTRIES,
    ) -> None:
        self.client = client
        self.resource = resource
        self._warned: set[tuple[str, str]] = set()
        self.store = store
        self.controller = controller
        self._current = current  # the cluster's WorkloadEntries (an informer's cache)
        self._group = group
        self._is_leader = is_leader
        self._resync = resync
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(initial=0.5, maximum=10.0)
        self.writes = 0
        self.last_error = ""
        store.on_record_change(self.trigger)

    def trigger(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="workloadentry-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._resync)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._is_leader():
                continue
            try:
                self.sync()
                self._backoff.reset()
                self.last_error = ""
            except KubeError as exc:
                if str(exc) != self.last_error:
                    log.warning("publishing WorkloadEntries: %s (retrying)", exc)
                self.last_error = str(exc)
                self._stop.wait(self._backoff.next())
                self._wake.set()

    def sync(self) -> None:
        """One round: create, update and delete until the cluster matches the store."""
        records = {r.key: r for r in self.store.records()}
        current = self._current()
        failures: list[KubeError] = []
        for key, rec in records.items():
            try:
                self._publish(rec, current.get(key))
            except KubeError as exc:
                failures.append(exc)
        for key, obj in current.items():
            ann = (obj.get("metadata") or {}).get("annotations") or {}
            if key in records or AUTO_REGISTRATION_ANNOTATION not in ann:
                continue
            if ann.get(CONTROLLER) != self.controller:
                continue
            try:
                self._delete(obj)
            except KubeError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _publish(self, rec: WorkloadRecord, current: JsonObj | None) -> None:
        gmeta = self._group(rec.namespace, rec.group)
        wanted = desired_object(rec, self.controller, gmeta, self.resource.api_version)
        status = desired_status(rec)
        path = self.resource.object_path(rec.namespace, rec.name)
        if current is None:
            try:
                current = self.client.request(
                    "POST", self.resource.collection_path(rec.namespace), body=wanted
                )
                self.writes += 1
                log.info("published WorkloadEntry %s/%s", rec.namespace, rec.name)
            except KubeError as exc:
                if exc.status != 409:  # 409: it exists already (our cache is behind): check it below
                    raise
                current = self.client.get(path)
        ann = (current.get("metadata") or {}).get("annotations") or {}
        if AUTO_REGISTRATION_ANNOTATION not in ann:
            if rec.key not in self._warned:
                self._warned.add(rec.key)
                log.warning(
                    "WorkloadEntry %s/%s exists and was written by an operator; it is left as it is",
                    rec.namespace,
                    rec.name,
                )
            return
        if ann.get(CONTROLLER, self.controller) != self.controller:
            return  # another control plane's entry
        for _ in range(5):  # 409: read again and re-apply
            if not _same(current, wanted):
                body = dict(wanted)
                body["metadata"] = {**wanted["metadata"], "resourceVersion": _rv(current)}
                try:
                    current = self.client.request("PUT", path, body=body)
                    self.writes += 1
                except KubeError as exc:
                    if exc.status != 409:
                        raise
                    current = self.client.get(path)
                    continue
            if _status_view(current.get("status")) != _status_view(status):
                body = {"metadata": {"resourceVersion": _rv(current)}, "status": status or None}
                try:
                    current = self.client.request(
                        "PATCH", f"{path}/status", body=body, content_type="application/merge-patch+json"
                    )
                    self.writes += 1
                except KubeError as exc:
                    if exc.status != 409:
                        raise
                    current = self.client.get(path)
                    continue
            return
        raise KubeError(409, "Conflict", "still conflicting after 5 attempts", f"WorkloadEntry {path}")

    def _delete(self, obj: JsonObj) -> None:
        meta = obj.get("metadata") or {}
        path = self.resource.object_path(str(meta.get("namespace")), str(meta.get("name")))
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": _rv(obj)},
        }
        try:
            self.client.request("DELETE", path, body=body)
            self.writes += 1
            log.info("deleted WorkloadEntry %s/%s", meta.get("namespace"), meta.get("name"))
        except KubeError as exc:
            if exc.status not in (404, 409):  # gone already, or changed: the next round decides again
                raise


def _rv(obj: JsonObj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
