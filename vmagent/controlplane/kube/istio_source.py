"""The Istio kinds stored in a Kubernetes cluster as a config source.

One informer per supported kind (``networking.istio.io`` and ``security.istio.io``). Each object goes
through the same validator as a file (``validate_document``): a valid object is in force; an invalid one
is not applied (its last valid version, if any, stays in force, as for a file), is listed by ``errors()``
(so ``vmagent-cp config errors`` and ``/api/v1/config/errors`` show it with ``NS/NAME`` and the field
path), and its ``status.validationMessages`` names the problem, as Istio's status writer does, when the
kind has a status subresource. The status is cleared again when the object is fixed.

The version watched per group is the newest one the API server serves among those vmagent accepts
(found by discovery at start; ``v1`` when the group is not served yet — the informer then waits for the
CRD to appear).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from vmagent.controlplane.config.issues import Issue
from vmagent.controlplane.config.kinds import KINDS, KindInfo
from vmagent.controlplane.config.validate import validate_document
from vmagent.controlplane.kube.client import JsonObj, KubeClient, KubeError, Resource
from vmagent.controlplane.kube.informer import DELETED, Change, Informer
from vmagent.controlplane.model import ConfigObject

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
SOURCE_NAME = "kubernetes"
# Istio's analyzer code for an object that fails schema validation.
SCHEMA_ERROR = {"code": "IST0106", "name": "SchemaValidationError"}


def plural(kind: str) -> str:
    """The resource name of an Istio kind, as Istio's CRDs name it (``ServiceEntry`` -> ``serviceentries``)."""
    low = kind.lower()
    return low[:-1] + "ies" if low.endswith("y") and low[-2:-1] not in "aeiou" else low + "s"


def served_version(client: KubeClient, info: KindInfo) -> str:
    """The newest version of ``info``'s group that the API server serves and vmagent accepts."""
    preferred = sorted(info.versions, key=_version_rank, reverse=True)
    try:
        group = client.get(f"/apis/{info.group}")
    except KubeError:
        return preferred[0]
    served = {str(v.get("version")) for v in group.get("versions") or [] if isinstance(v, dict)}
    for v in preferred:
        if v in served:
            return v
    return preferred[0]


def _version_rank(v: str) -> int:
    """v1 > v1beta1 > v1alpha3 (the versions Istio has served)."""
    return {"v1": 3, "v1beta1": 2, "v1alpha3": 1}.get(v, 0)


def istio_resource(info: KindInfo, version: str) -> Resource:
    return Resource(info.group, version, plural(info.kind), info.kind)


def _document(obj: JsonObj) -> dict[str, Any]:
    """The object as a user would have written it (status left out: it is ours to write)."""
    doc = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    meta = dict(doc.get("metadata") or {})
    meta.pop("managedFields", None)
    doc["metadata"] = meta
    return doc


class IstioKubeSource:
    """``ConfigSource`` of the Istio objects in the cluster (see the module docstring)."""

    name = SOURCE_NAME

    def __init__(
        self,
        client: KubeClient,
        kinds: Sequence[str] = tuple(KINDS),
        write_status: Callable[[], bool] = lambda: True,
        skip: Callable[[JsonObj], bool] = lambda _obj: False,
    ) -> None:
        self._skip = skip
        self.client = client
        self._kinds = list(kinds)
        self._write_status = write_status
        self._lock = threading.Lock()
        self._objects: dict[Key, ConfigObject] = {}
        self._errors: dict[Key, list[Issue]] = {}
        self._subscribers: list[Callable[[], None]] = []
        self.informers: dict[str, Informer] = {}

    # -- ConfigSource -------------------------------------------------------------------------------

    def objects(self) -> dict[Key, ConfigObject]:
        with self._lock:
            return dict(self._objects)

    def errors(self) -> list[str]:
        with self._lock:
            return [str(i) for key in sorted(self._errors) for i in self._errors[key]]

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def start(self) -> None:
        for kind in self._kinds:
            info = KINDS[kind]
            resource = istio_resource(info, served_version(self.client, info))
            informer = Informer(self.client, resource, self._changed)
            self.informers[kind] = informer
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def cached(self, kind: str) -> dict[tuple[str, str], JsonObj]:
        """The raw objects of ``kind`` as the cluster has them (valid or not)."""
        informer = self.informers.get(kind)
        return informer.objects() if informer is not None else {}

    def resource(self, kind: str) -> Resource:
        """The collection watched for ``kind`` (the version the API server serves)."""
        informer = self.informers.get(kind)
        return informer.resource if informer is not None else istio_resource(KINDS[kind], "v1")

    def wait_synced(self, timeout: float) -> bool:
        """True once every kind that the API server serves has been listed (kinds not installed are
        not waited for)."""
        return all(inf.wait_synced(timeout) for inf in self.informers.values() if inf.state != "waiting")

    # -- changes ------------------------------------------------------------------------------------

    def _changed(self, changes: list[Change]) -> None:
        dirty = False
        for change in changes:
            dirty |= self._apply(change)
        if dirty:
            with self._lock:
                subscribers = list(self._subscribers)
            for cb in subscribers:
                cb()

    def _apply(self, change: Change) -> bool:
        obj = change.obj
        kind = str(obj.get("kind", ""))
        ns, name = change.key
        key = (kind, ns, name)
        if change.type == DELETED or self._skip(obj):
            with self._lock:
                removed = self._objects.pop(key, None) is not None
                had_errors = self._errors.pop(key, None) is not None
            return removed or had_errors
        result = validate_document(_document(obj), SOURCE_NAME, 1)
        with self._lock:
            before = (self._objects.get(key), self._errors.get(key))
            if result.obj is not None:
                status = obj.get("status")
                if kind == "WorkloadEntry" and isinstance(status, dict):  # health (Healthy condition)
                    result.obj = dataclasses.replace(result.obj, status=status)
                self._objects[key] = result.obj
                self._errors.pop(key, None)
            else:
                self._errors[key] = result.errors  # the last valid version (if any) stays in force
            after = (self._objects.get(key), self._errors.get(key))
        if result.errors:
            log.error("config: %s", "; ".join(str(e) for e in result.errors))
        self._sync_status(obj, result.errors)
        return before != after

    def resync_status(self) -> None:
        """Bring every object's ``status.validationMessages`` in line with the validator: what a replica
        does when it becomes the status writer (objects that changed while it was not are behind)."""
        for informer in list(self.informers.values()):
            for obj in informer.objects().values():
                if not self._skip(obj):
                    self._sync_status(obj, validate_document(_document(obj), SOURCE_NAME, 1).errors)

    def _sync_status(self, obj: JsonObj, errors: list[Issue]) -> None:
        """Write ``status.validationMessages`` when it differs from what the object carries."""
        if not self._write_status():
            return
        status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        assert isinstance(status, dict)
        wanted = [
            {
                "level": "ERROR",
                "type": dict(SCHEMA_ERROR),
                "description": f"{e.path}: {e.message}" if e.path else e.message,
            }
            for e in errors
        ]
        if (status.get("validationMessages") or []) == wanted:
            return
        meta = obj.get("metadata") or {}
        info = KINDS.get(str(obj.get("kind")))
        if info is None:
            return
        version = str(obj.get("apiVersion", "")).split("/")[-1]
        path = istio_resource(info, version).object_path(
            str(meta.get("namespace", "")), str(meta.get("name", "")), "status"
        )
        body = {
            "status": {"validationMessages": wanted or None, "observedGeneration": meta.get("generation")}
        }
        try:
            self.client.request("PATCH", path, body=body, content_type="application/merge-patch+json")
        except KubeError as exc:
            if exc.status == 404:  # no status subresource for this kind, or the object is gone
                log.debug("no status written for %s: %s", path, exc)
            else:
                log.warning("cannot write the validation status of %s: %s", path, exc)
