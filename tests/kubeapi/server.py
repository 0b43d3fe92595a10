"""``KubeApiServer``: the test API server in a thread, with its certificates, kubeconfigs and test hooks."""

from __future__ import annotations

import copy
import os
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.kubeapi.auth import Authenticator, User
from tests.kubeapi.certs import CertAuthority, Pair
from tests.kubeapi.handlers import ApiHTTPServer, ServerState
from tests.kubeapi.operations import Operations
from tests.kubeapi.resources import Registry, ResourceType
from tests.kubeapi.store import Store
from tests.kubeapi.tokens import TokenIssuer

Obj = dict[str, Any]
ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


class KubeApiServer:
    """Serves on ``host:port`` (0: any free port) over HTTPS, certificates and kubeconfigs under ``workdir``.

    ``cert``/``key`` replace the generated serving certificate and ``cert_ca`` is then the CA that clients
    trust (written into kubeconfigs); ``client_ca`` adds a CA whose client certificates are accepted. The namespaces default, kube-system and kube-public exist from the start,
    each with a ServiceAccount ``default``, as in a new cluster.
    """

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        cert_ca: Path | None = None,
        client_ca: Path | None = None,
        bookmark_interval: float = 1.0,
        max_watch_seconds: float = 1800.0,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = CertAuthority()
        self.ca_path = _write(workdir / "ca.crt", self.ca.cert_pem, 0o644)
        if cert and key:
            if cert_ca is None:
                raise ValueError(
                    "a serving certificate (cert/key) needs cert_ca, the CA clients should trust"
                )
            self.cert_path, self.key_path, self.ca_path = cert, key, cert_ca
        else:
            pair = self.ca.issue(
                "kube-apiserver",
                hosts=(host, "localhost", "127.0.0.1", "kubernetes.default.svc"),
                server=True,
            )
            self.cert_path = _write(workdir / "apiserver.crt", pair.cert_pem, 0o644)
            self.key_path = _write(workdir / "apiserver.key", pair.key_pem)
        self.store = Store()
        self.registry = Registry()
        self.ops = Operations(self.store, self.registry, TokenIssuer)
        self.admin_token = secrets.token_urlsafe(24)
        self.auth = Authenticator(self.ops.tokens, {self.admin_token: ADMIN})
        self.state = ServerState(self.ops, self.auth, bookmark_interval, max_watch_seconds)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(self.cert_path), str(self.key_path))
        tls.verify_mode = ssl.CERT_OPTIONAL
        tls.load_verify_locations(cadata=self.ca.cert_pem.decode())
        if client_ca:
            tls.load_verify_locations(cafile=str(client_ca))
        self._http = ApiHTTPServer((host, port), self.state, tls)
        self.host = host
        self.port = self._http.server_address[1]
        self.url = f"https://{host}:{self.port}"
        self._thread: threading.Thread | None = None
        for ns in ("default", "kube-system", "kube-public"):
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> KubeApiServer:
        self._thread = threading.Thread(target=self._http.serve_forever, name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        self.store.end_watches()  # wakes the watch threads, which then cut their connections
        self._http.shutdown()
        self._http.close_connections()
        self._http.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- credentials ----------------------------------------------------------------------------
    def client_cert(self, user: str = "kubernetes-admin", group: str = "system:masters") -> Pair:
        return self.ca.issue(user, org=group)

    def kubeconfig(
        self,
        path: Path | None = None,
        *,
        auth: str = "cert",
        token: str | None = None,
        namespace: str = "default",
    ) -> Path:
        """Writes a kubeconfig for this server (auth "cert": an admin client certificate; "token": a bearer
        token, the admin's unless ``token`` is given) and returns its path."""
        path = path or self.workdir / f"kubeconfig-{auth}"
        user: Obj
        if auth == "cert":
            pair = self.client_cert()
            crt = _write(self.workdir / "admin.crt", pair.cert_pem, 0o644)
            key = _write(self.workdir / "admin.key", pair.key_pem)
            user = {"client-certificate": str(crt), "client-key": str(key)}
        elif auth == "token":
            user = {"token": token or self.admin_token}
        else:
            raise ValueError(f"kubeconfig auth {auth!r}: expected 'cert' or 'token'")
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)}}
            ],
            "users": [{"name": "test-user", "user": user}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": "test-user", "namespace": namespace}}
            ],
            "current-context": "test",
        }
        return _write(path, yaml.safe_dump(doc).encode())

    def add_token(self, token: str, user: str, groups: tuple[str, ...] = ()) -> None:
        """Accept ``token`` as a bearer token of ``user``."""
        self.auth.add_token(token, User(user, (*groups, "system:authenticated")))

    # -- test hooks -----------------------------------------------------------------------------
    def drop_watches(self) -> None:
        """Cut every open watch connection (clients see the stream break, as on an API server restart)."""
        self.store.end_watches()

    def fail_token_reviews(self, code: int | None, message: str = "etcdserver: request timed out") -> None:
        """Answer every TokenReview with HTTP ``code`` and ``message`` (None: review tokens again)."""
        self.ops.token_review_fault = (code, message) if code is not None else None

    def compact(self, revision: int | None = None) -> int:
        """Compact the event log at ``revision`` (default: now): older resourceVersions get 410 Gone."""
        return self.store.compact(revision)

    @property
    def revision(self) -> int:
        return self.store.revision

    def _type(self, obj: Obj) -> ResourceType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for t in self.registry.all():
            if t.group == group and t.version == version and t.kind == kind:
                return t
        raise LookupError(f"no resource of kind {kind} in {api_version} is served (is its CRD created?)")

    def create(self, obj: Obj) -> Obj:
        """Create ``obj`` (any served kind) as a client would; a given ``status`` is then written through the
        status subresource, since create resets it for kinds that have one."""
        t = self._type(obj)
        ns = obj.get("metadata", {}).get("namespace", "default") if t.namespaced else ""
        created = self.ops.create(t, ns, copy.deepcopy(obj))
        if t.status and "status" in obj:
            created["status"] = obj["status"]
            created = self.ops.update(t, ns, created["metadata"]["name"], created, "status")
        return created

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> Obj:
        t = self._type({"apiVersion": api_version, "kind": kind})
        return self.ops.get(t, namespace if t.namespaced else "", name)

    def update(self, obj: Obj, subresource: str = "") -> Obj:
        t = self._type(obj)
        meta = obj["metadata"]
        return self.ops.update(
            t, meta.get("namespace", "") if t.namespaced else "", meta["name"], obj, subresource
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "") -> Obj:
        t = self._type({"apiVersion": api_version, "kind": kind})
        return self.ops.delete(t, namespace if t.namespaced else "", name)

    def token(
        self,
        namespace: str,
        service_account: str,
        audiences: list[str] | None = None,
        expires_in: int = 3600,
        pod: str | None = None,
    ) -> str:
        """A ServiceAccount token as TokenRequest mints it, but any lifetime (tests of expiry need seconds)."""
        sa = self.ops.get(
            self._type({"apiVersion": "v1", "kind": "ServiceAccount"}), namespace, service_account
        )
        pod_obj = (
            self.ops.get(self._type({"apiVersion": "v1", "kind": "Pod"}), namespace, pod) if pod else None
        )
        return self.ops.tokens.mint(sa, audiences or [], expires_in, pod_obj)[0]
