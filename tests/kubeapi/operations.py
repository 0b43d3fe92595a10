"""What each verb does to the store: create, get, list, update, patch, delete, with the API server's rules.

HTTP-free: the handlers parse requests and call these; the fixture calls them directly.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kubeapi import patch as patches
from tests.kubeapi.errors import ApiError, already_exists, conflict, expired, invalid, not_found
from tests.kubeapi.resources import VIRTUAL, Registry, ResourceType, crd_types
from tests.kubeapi.schema import check_custom_resource
from tests.kubeapi.store import Expired, Key, Obj, Store
from tests.kubeapi.tokens import TokenIssuer

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CRD = ("apiextensions.k8s.io", "customresourcedefinitions")
_NS = ("", "namespaces")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    revision: int
    continue_token: str = ""
    remaining: int | None = None


class Operations:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        issuer_factory: Callable[[Callable[[str, str, str], Obj | None]], TokenIssuer],
    ) -> None:
        self.store = store
        self.registry = registry
        self.tokens = issuer_factory(self._lookup)
        self._next_ip = 10
        # Test hook: (HTTP status, message) every TokenReview is answered with instead of a review.
        self.token_review_fault: tuple[int, str] | None = None

    # -- helpers --------------------------------------------------------------------------------
    def _lookup(self, resource: str, ns: str, name: str) -> Obj | None:
        return self.store.get(("", resource, ns, name))

    @staticmethod
    def key(t: ResourceType, ns: str, name: str) -> Key:
        return (t.group, t.resource, ns if t.namespaced else "", name)

    @staticmethod
    def present(t: ResourceType, obj: Obj) -> Obj:
        """The stored object as a client of ``t``'s version sees it (no conversion: apiVersion only)."""
        obj["apiVersion"] = t.api_version
        obj["kind"] = t.kind
        return obj

    def _require_namespace(self, t: ResourceType, ns: str) -> None:
        if t.namespaced and self.store.get(("", "namespaces", "", ns)) is None:
            raise ApiError(
                404, f'namespaces "{ns}" not found', "NotFound", {"name": ns, "kind": "namespaces"}
            )

    def _validate(self, t: ResourceType, obj: Any, ns: str, name_in_url: str | None) -> Obj:
        if not isinstance(obj, dict):
            raise ApiError(400, f"the body of the request is not a {t.kind} object (a JSON/YAML map)")
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise invalid(t, "", [("metadata", "must be an object")])
        name = meta.get("name", "")
        if obj.get("kind") not in (None, "", t.kind):
            raise ApiError(
                400, f"the kind of the body ({obj.get('kind')}) does not match the URL's ({t.kind})"
            )
        if (
            obj.get("apiVersion") not in (None, "")
            and obj["apiVersion"].split("/")[0] != t.api_version.split("/")[0]
        ):
            raise ApiError(
                400,
                f"the apiVersion of the body ({obj['apiVersion']}) does not match the URL's ({t.api_version})",
            )
        if name_in_url is not None and name and name != name_in_url:
            raise ApiError(
                400, f"the name of the object ({name}) does not match the name on the URL ({name_in_url})"
            )
        if t.namespaced and meta.get("namespace") not in (None, "", ns):
            raise ApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        causes: list[tuple[str, str]] = []
        if name and (not _NAME.match(name) or len(name) > 253):
            causes.append(
                (
                    "metadata.name",
                    f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                )
            )
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                causes.append((f"metadata.{field}", "must be a map of string to string"))
            elif field == "labels":
                for k, v in value.items():
                    if not _LABEL_VALUE.match(v) or len(v) > 63:
                        causes.append(
                            (
                                f"metadata.labels.{k}",
                                f"Invalid value: {v!r}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'",
                            )
                        )
        causes += self._kind_rules(t, obj)
        if causes:
            raise invalid(t, name, causes)
        if t.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        return obj

    @staticmethod
    def _kind_rules(t: ResourceType, obj: Obj) -> list[tuple[str, str]]:
        """A few of the built-in kinds' validation rules; a CRD's schema for custom resources."""
        spec = obj.get("spec")
        causes: list[tuple[str, str]] = []
        if t.kind == "Pod":
            containers = (spec or {}).get("containers") if isinstance(spec, dict) else None
            if not containers:
                causes.append(("spec.containers", "Required value"))
            for i, c in enumerate(containers or []):
                for f in ("name", "image"):
                    if not isinstance(c, dict) or not c.get(f):
                        causes.append((f"spec.containers[{i}].{f}", "Required value"))
        elif t.kind == "Service" and isinstance(spec, dict):
            for i, p in enumerate(spec.get("ports") or []):
                port = p.get("port") if isinstance(p, dict) else None
                if not isinstance(port, int) or not 0 < port < 65536:
                    causes.append(
                        (
                            f"spec.ports[{i}].port",
                            f"Invalid value: {port!r}: must be between 1 and 65535, inclusive",
                        )
                    )
        elif t.kind == "EndpointSlice":
            if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
                causes.append(("addressType", 'Unsupported value: supported values: "FQDN", "IPv4", "IPv6"'))
            for i, e in enumerate(obj.get("endpoints") or []):
                if not isinstance(e, dict) or not e.get("addresses"):
                    causes.append((f"endpoints[{i}].addresses", "Required value"))
        elif t.kind == "CustomResourceDefinition":
            if not isinstance(spec, dict):
                return [("spec", "Required value")]
            names = spec.get("names") or {}
            for f in ("plural", "kind"):
                if not names.get(f):
                    causes.append((f"spec.names.{f}", "Required value"))
            if not spec.get("group"):
                causes.append(("spec.group", "Required value"))
            if not spec.get("versions"):
                causes.append(("spec.versions", "Required value"))
            want = f"{names.get('plural')}.{spec.get('group')}"
            if obj["metadata"].get("name") != want:
                causes.append(
                    (
                        "metadata.name",
                        f'Invalid value: {obj["metadata"].get("name")!r}: must be spec.names.plural+"."+spec.group ({want})',
                    )
                )
        elif t.kind == "Lease" and isinstance(spec, dict):
            d = spec.get("leaseDurationSeconds")
            if d is not None and (not isinstance(d, int) or d <= 0):
                causes.append(("spec.leaseDurationSeconds", f"Invalid value: {d!r}: must be greater than 0"))
        return causes

    def _schema(self, t: ResourceType, obj: Obj, strict: bool = False) -> Obj:
        """Validate a custom resource by its CRD's schema; unknown fields are pruned, or refused (400) with
        ``fieldValidation=Strict`` (what kubectl sends by default)."""
        if not t.crd:
            return obj
        unknown: list[str] = []
        out, causes = check_custom_resource(obj, t.schema, unknown)
        name = obj.get("metadata", {}).get("name", "")
        if strict and unknown:
            text = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiError(
                400,
                f'{t.kind} in version "{t.version}" cannot be handled as a {t.kind}: strict decoding error: {text}',
            )
        if causes:
            raise invalid(t, name, causes)
        return out

    # -- reads ----------------------------------------------------------------------------------
    def get(self, t: ResourceType, ns: str, name: str) -> Obj:
        obj = self.store.get(self.key(t, ns, name))
        if obj is None:
            raise not_found(t, name)
        return self.present(t, obj)

    def list(
        self,
        t: ResourceType,
        ns: str | None,
        match: Callable[[Obj], bool],
        rv: str = "",
        rv_match: str = "",
        limit: int = 0,
        cont: str = "",
    ) -> ListResult:
        at: int | None = None
        start: tuple[str, str] | None = None
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                at, start = int(token["rv"]), (str(token["start"][0]), str(token["start"][1]))
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, f"invalid continue token: {e}") from None
        elif rv_match == "Exact" or (rv and rv != "0" and rv_match == ""):
            want = _parse_rv(rv)
            if rv_match == "Exact":
                at = want
            if want > self.store.revision:
                raise ApiError(
                    504,
                    f"Too large resource version: {want}, current: {self.store.revision}",
                    "Timeout",
                    {
                        "causes": [
                            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                        ]
                    },
                )
        try:
            objs, revision, remaining = self.store.page(
                t.group, t.resource, ns if t.namespaced else None, at, match=match, after=start, limit=limit
            )
        except Expired as e:
            if cont:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                ) from None
            raise expired(f"too old resource version: {e.requested} ({e.compacted})") from None
        items = [self.present(t, o) for o in objs]
        if remaining:
            last = _sort_key(items[-1])
            token = base64.urlsafe_b64encode(json.dumps({"rv": revision, "start": last}).encode()).decode()
            return ListResult(items, revision, token, remaining)
        return ListResult(items, revision)

    # -- writes ---------------------------------------------------------------------------------
    def create(self, t: ResourceType, ns: str, body: Any, dry_run: bool = False, strict: bool = False) -> Obj:
        if (t.group, t.resource) in VIRTUAL:
            return self.token_review(body)
        obj = self._validate(t, copy.deepcopy(body), ns, None)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(t, "", [("metadata.name", "Required value: name or generateName is required")])
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
            )
        name = meta["name"]
        self._require_namespace(t, ns)
        obj = self._schema(t, obj, strict)
        meta = obj["metadata"]
        for f in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(f, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if t.status:
            obj.pop("status", None)
        self._defaults(t, obj)
        self.present(t, obj)
        key = self.key(t, ns, name)
        with self.store.cond:
            if self.store.get(key) is not None:
                raise already_exists(t, name)
            if dry_run:
                return obj
            stored = self.store.put(key, obj)
            if (t.group, t.resource) == _CRD:
                stored = self._crd_established(stored)
            if (t.group, t.resource) == _NS:
                # The service account controller's part: every namespace gets a ServiceAccount "default".
                sa = {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {
                        "name": "default",
                        "namespace": name,
                        "uid": str(uuid.uuid4()),
                        "creationTimestamp": now_rfc3339(),
                    },
                }
                self.store.put(("", "serviceaccounts", name, "default"), sa)
        return self.present(t, stored)

    def _defaults(self, t: ResourceType, obj: Obj) -> None:
        if t.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif t.kind == "Pod":
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            obj["spec"].setdefault("serviceAccountName", "default")
        elif t.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec["type"] != "ExternalName" and not spec.get("clusterIP"):
                spec["clusterIP"] = str(SERVICE_CIDR[self._next_ip])
                self._next_ip += 1
            if spec.get("clusterIP"):
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            obj["status"] = {"loadBalancer": {}}
        elif t.kind == "ServiceAccount" or t.kind == "ConfigMap":
            pass
        elif t.kind == "Secret":
            obj.setdefault("type", "Opaque")

    def _crd_established(self, crd: Obj) -> Obj:
        """Serve the CRD's resources and mark it Established, as the apiextensions controllers do."""
        self.registry.set_crd(crd["metadata"]["name"], crd_types(crd))
        now = now_rfc3339()
        crd["status"] = {
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
        }
        return self.store.put(
            ("apiextensions.k8s.io", "customresourcedefinitions", "", crd["metadata"]["name"]), crd
        )

    def update(
        self,
        t: ResourceType,
        ns: str,
        name: str,
        body: Any,
        subresource: str = "",
        dry_run: bool = False,
        strict: bool = False,
    ) -> Obj:
        new = self._validate(t, copy.deepcopy(body), ns, name)
        new["metadata"]["name"] = name
        with self.store.cond:
            old = self.store.get(self.key(t, ns, name))
            if old is None:
                raise not_found(t, name)
            rv = new["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(t, name)
            return self._write(t, ns, old, new, subresource, dry_run, strict)

    def _write(
        self,
        t: ResourceType,
        ns: str,
        old: Obj,
        new: Obj,
        subresource: str,
        dry_run: bool,
        strict: bool = False,
    ) -> Obj:
        """Store ``new`` in place of ``old`` with the server-owned fields kept; no write when nothing changed."""
        name = old["metadata"]["name"]
        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            new = self._schema(t, new, strict)
            if t.status:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        meta, old_meta = new["metadata"], old["metadata"]
        for f in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
        ):
            if f in old_meta:
                meta[f] = old_meta[f]
            else:
                meta.pop(f, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = old_meta.get("generation", 1) + 1
        self.present(t, new)
        self.present(t, old)
        if new == old or dry_run:
            return new
        key = self.key(t, ns, name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            gone = self.store.delete(key)
            assert gone is not None
            return self.present(t, gone)
        stored = self.store.put(key, new)
        if (t.group, t.resource) == _CRD and subresource != "status":
            stored = self._crd_established(stored)
        return self.present(t, stored)

    def patch(
        self,
        t: ResourceType,
        ns: str,
        name: str,
        content_type: str,
        raw: bytes,
        subresource: str = "",
        dry_run: bool = False,
        field_manager: str = "",
        force: bool = False,
        strict: bool = False,
    ) -> Obj:
        ctype = content_type.split(";")[0].strip()
        try:
            if ctype == "application/apply-patch+yaml":
                import yaml

                body = yaml.safe_load(raw)
            else:
                body = json.loads(raw)
        except Exception as e:
            raise ApiError(400, f"the patch body does not parse as {ctype}: {e}") from None
        with self.store.cond:
            old = self.store.get(self.key(t, ns, name))
            if old is None:
                if ctype == "application/apply-patch+yaml":
                    if not field_manager:
                        raise ApiError(
                            400,
                            'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                        )
                    if isinstance(body, dict):
                        body.setdefault("metadata", {}).setdefault("name", name)
                    return self.create(t, ns, body, dry_run, strict)
                raise not_found(t, name)
            self.present(t, old)
            try:
                if ctype == "application/json-patch+json":
                    new = patches.json_patch(old, body)
                elif ctype == "application/merge-patch+json":
                    new = patches.merge_patch(old, body)
                elif ctype == "application/strategic-merge-patch+json":
                    if t.crd:
                        raise ApiError(
                            415,
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                        )
                    new = patches.strategic_merge(old, body)
                elif ctype == "application/apply-patch+yaml":
                    if not field_manager:
                        raise ApiError(
                            400,
                            'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                        )
                    new = patches.merge_patch(old, body)
                else:
                    raise ApiError(
                        415,
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                    )
            except patches.PatchError as e:
                raise ApiError(
                    422, f"the server rejected our request due to an error in our request: {e}"
                ) from None
            if not isinstance(new, dict):
                raise ApiError(422, "the patch does not leave an object")
            rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(t, name)
            new = self._validate(t, new, ns, name)
            return self._write(t, ns, old, new, subresource, dry_run, strict)

    def delete(
        self, t: ResourceType, ns: str, name: str, options: Obj | None = None, dry_run: bool = False
    ) -> Obj:
        options = options or {}
        pre = options.get("preconditions") or {}
        key = self.key(t, ns, name)
        with self.store.cond:
            old = self.store.get(key)
            if old is None:
                raise not_found(t, name)
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(
                    409,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {old['metadata']['uid']}",
                    "Conflict",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object meta: {old['metadata']['resourceVersion']}",
                    "Conflict",
                )
            if dry_run:
                return self.present(t, old)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return self.present(t, old)
                old["metadata"]["deletionTimestamp"] = now_rfc3339()
                old["metadata"]["deletionGracePeriodSeconds"] = 0
                return self.present(t, self.store.put(key, old))
            if (t.group, t.resource) == _NS:
                self._delete_namespace_contents(name)
            if (t.group, t.resource) == _CRD:
                self._delete_crd_contents(old)
            gone = self.store.delete(key)
            assert gone is not None
            return self.present(t, gone)

    def _delete_namespace_contents(self, ns: str) -> None:
        for rt in self.registry.all():
            if rt.namespaced:
                for key in self.store.keys(rt.group, rt.resource, ns):
                    self.store.delete(key)

    def _delete_crd_contents(self, crd: Obj) -> None:
        spec = crd["spec"]
        for key in self.store.keys(spec["group"], spec["names"]["plural"]):
            self.store.delete(key)
        self.registry.set_crd(crd["metadata"]["name"], [])

    # -- authentication.k8s.io ------------------------------------------------------------------
    def token_review(self, body: Any) -> Obj:
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("token"), str) or not spec["token"]:
            raise ApiError(
                422, 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value', "Invalid"
            )
        if self.token_review_fault is not None:
            code, message = self.token_review_fault
            raise ApiError(code, message)
        result = self.tokens.review(spec["token"], spec.get("audiences") or None)
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": result.status(),
        }

    def token_request(self, ns: str, sa_name: str, body: Any) -> Obj:
        sa = self.store.get(("", "serviceaccounts", ns, sa_name))
        if sa is None:
            raise ApiError(
                404,
                f'serviceaccounts "{sa_name}" not found',
                "NotFound",
                {"name": sa_name, "kind": "serviceaccounts"},
            )
        spec = (body or {}).get("spec") or {}
        exp = spec.get("expirationSeconds", 3600)
        if not isinstance(exp, int) or exp < 600:
            raise ApiError(
                422,
                f'TokenRequest.authentication.k8s.io "{sa_name}" is invalid: spec.expirationSeconds: Invalid value: {exp!r}: may not specify a duration less than 10 minutes',
                "Invalid",
            )
        pod = None
        ref = spec.get("boundObjectRef")
        if ref:
            if ref.get("kind") != "Pod":
                raise ApiError(
                    422,
                    f'TokenRequest.authentication.k8s.io "{sa_name}" is invalid: spec.boundObjectRef.kind: Unsupported value: {ref.get("kind")!r} (this test server binds Pods only)',
                    "Invalid",
                )
            pod = self.store.get(("", "pods", ns, ref.get("name", "")))
            if pod is None or (ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]):
                raise ApiError(404, f'pods "{ref.get("name")}" not found', "NotFound")
        token, expires = self.tokens.mint(sa, list(spec.get("audiences") or []), exp, pod)
        out_spec = dict(
            spec, expirationSeconds=exp, audiences=list(spec.get("audiences") or self.tokens.audiences)
        )
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": None},
            "spec": out_spec,
            "status": {
                "token": token,
                "expirationTimestamp": dt.datetime.fromtimestamp(expires, dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            },
        }


def _sort_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _parse_rv(rv: str) -> int:
    try:
        value = int(rv)
    except ValueError:
        raise ApiError(400, f"invalid resource version: {rv!r}") from None
    return value
