"""Raw JSON access to a Kubernetes API server through the official ``kubernetes`` client.

The client's ``ApiClient`` does the connection, TLS and authentication (a kubeconfig's client
certificate, bearer token or exec plugin, or the in-cluster service account, re-read when the kubelet
rotates it); this module only builds paths and reads JSON. Objects stay plain dicts: the control
plane reads a few fields of each and never needs the generated model classes, whose deserialisation
is the slow part of the client for tens of thousands of endpoints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

JsonObj = dict[str, Any]
POOL_SIZE = 32


class KubeError(VmagentError):
    """A request the API server refused (``status`` is the HTTP status, 0 when it was unreachable)."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status = status
        self.reason = reason
        self.what = what
        detail = f"{status} {reason}" if status else reason
        super().__init__(f"Kubernetes API: {what}: {detail}: {message}".rstrip(": "))


class KubeConfigError(VmagentError):
    """The kubeconfig (or the in-cluster environment) cannot be used."""


@dataclass(frozen=True)
class Resource:
    """One kind of the Kubernetes API, as a REST collection."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, namespace: str, name: str, subresource: str = "") -> str:
        path = f"{self.collection_path(namespace if self.namespaced else None)}/{name}"
        return f"{path}/{subresource}" if subresource else path

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def load_api_client(kubeconfig: Path | None, in_cluster: bool, context: str | None = None) -> Any:
    """An ``ApiClient`` for the kubeconfig at ``kubeconfig`` or the in-cluster service account.

    Raises ``KubeConfigError`` naming the file and what is wrong with it."""
    from kubernetes import client, config  # imported here: the agent never loads it

    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            if kubeconfig is None:
                raise KubeConfigError("no kubeconfig given")
            if not kubeconfig.is_file():
                raise KubeConfigError(f"{kubeconfig}: kubeconfig does not exist")
            config.load_kube_config(
                config_file=str(kubeconfig),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except KubeConfigError:
        raise
    except config.ConfigException as exc:
        where = "in-cluster service account" if in_cluster else str(kubeconfig)
        raise KubeConfigError(f"{where}: cannot use it to reach Kubernetes: {exc}") from exc
    except Exception as exc:  # the loader raises YAML and key errors for malformed files
        where = "in-cluster service account" if in_cluster else str(kubeconfig)
        raise KubeConfigError(f"{where}: not a usable kubeconfig: {type(exc).__name__}: {exc}") from exc
    # One connection per informer's watch plus the lists, writes and the Lease: the default pool (4 or 10)
    # would discard and reopen TLS connections on every request.
    configuration.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(configuration)


class KubeClient:
    """JSON requests against one API server (thread-safe: the client's connection pool is)."""

    def __init__(self, api_client: Any, request_timeout: float = 30.0) -> None:
        self.api = api_client
        self.request_timeout = request_timeout

    @classmethod
    def from_config(cls, kubeconfig: Path | None, in_cluster: bool) -> KubeClient:
        return cls(load_api_client(kubeconfig, in_cluster))

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def _send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        what = f"{method} {path}"
        try:
            resp = self.api.call_api(
                m, url, hdrs, data, post, _request_timeout=timeout or self.request_timeout
            )
        except Exception as exc:  # urllib3 errors: refused, TLS, DNS, timeouts
            if type(exc).__name__ == "ApiException":
                raise KubeError(getattr(exc, "status", 0) or 0, str(exc), "", what) from exc
            raise KubeError(0, "unreachable", f"{type(exc).__name__}: {exc}", what) from exc
        if not 200 <= resp.status <= 299:
            raw = resp.read()
            message, reason = _status_message(raw, resp.reason or "")
            resp.response.release_conn()
            raise KubeError(resp.status, reason, message, what)
        return resp

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> JsonObj:
        """One request; the decoded JSON body. ``KubeError`` for any non-2xx status."""
        resp = self._send(method, path, query, body, content_type)
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise KubeError(resp.status, "bad response", f"not JSON: {exc}", f"{method} {path}") from exc
        return data if isinstance(data, dict) else {}

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> JsonObj:
        return self.request("GET", path, query)

    def open_watch(self, path: str, query: Sequence[tuple[str, str]], read_timeout: float) -> WatchStream:
        """Start a watch request; read its lines with ``WatchStream.lines()``, end it with ``close()``."""
        return WatchStream(self._send("GET", path, query, timeout=(10.0, read_timeout)))

    def close(self) -> None:
        self.api.close()


class WatchStream:
    """The body of a watch response, line by line; ``close()`` (from any thread) ends ``lines()``."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp

    def lines(self) -> Iterator[str]:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            yield from iter_resp_lines(self._resp.response)
        finally:
            self.close()

    def close(self) -> None:
        raw = self._resp.response
        shutdown = getattr(raw, "shutdown", None)  # urllib3 >= 2.3 wakes a blocked read
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # already closed
                log.debug("watch shutdown failed", exc_info=True)
        raw.close()
        raw.release_conn()


def _status_message(raw: bytes, fallback: str) -> tuple[str, str]:
    """(message, reason) from a ``Status`` body, or the raw text."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300], fallback
    if isinstance(data, dict):
        return str(data.get("message", "")), str(data.get("reason", fallback) or fallback)
    return "", fallback
