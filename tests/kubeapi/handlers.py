"""HTTP: routes Kubernetes REST paths to the operations, negotiates JSON/Table, streams watches (chunked)."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.kubeapi import discovery, openapi, protobuf
from tests.kubeapi.auth import Authenticator, User
from tests.kubeapi.errors import ApiError
from tests.kubeapi.operations import Operations
from tests.kubeapi.resources import ResourceType
from tests.kubeapi.selectors import SelectorError, field_selector, label_selector
from tests.kubeapi.table import row, table
from tests.kubeapi.watch import DROPPED, WatchRequest, stream

Obj = dict[str, Any]


@dataclass
class ServerState:
    ops: Operations
    auth: Authenticator
    bookmark_interval: float = 1.0
    max_watch_seconds: float = 1800.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set[socket.socket] = field(default_factory=set)
    requests: int = 0


class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: ServerState, tls: ssl.SSLContext) -> None:
        self.state = state
        self.tls = tls
        super().__init__(address, Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # The TLS handshake happens in the request's own thread, so one slow client cannot stall accept().
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a cut watch, a closed kubectl) is normal here: no traceback for it."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ConnectionError, ssl.SSLError (EOF), BrokenPipeError
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.state.lock:
            conns = list(self.state.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiHTTPServer

    def setup(self) -> None:
        conn = self.request
        conn.settimeout(15)
        try:
            conn.do_handshake()
        except (OSError, ssl.SSLError):
            conn.close()
            raise
        conn.settimeout(None)
        with self.server.state.lock:
            self.server.state.connections.add(conn)
        super().setup()

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.request)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing ---------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Obj) -> None:
        self._send(code, json.dumps(doc).encode())

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _parse(self, raw: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as e:
                raise ApiError(
                    415, f"the body of the request was in an unknown format ({ctype}): {e}"
                ) from None
        if ctype not in ("application/json", "application/yaml", "application/apply-patch+yaml", ""):
            raise ApiError(
                415,
                f"the body of the request was in an unknown format ({ctype}) - accepted media types include: application/json, application/yaml",
            )
        try:
            if ctype in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw) if raw else None
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, f"the body of the request does not parse as {ctype}: {e}") from None

    def _handle(self, method: str) -> None:
        state = self.server.state
        with state.lock:
            state.requests += 1
        try:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            raw = self._body()
            path = url.path.rstrip("/") or "/"
            if path in ("/healthz", "/livez", "/readyz"):
                self._send(200, b"ok", "text/plain; charset=utf-8")
                return
            if path == "/version":
                self._json(200, discovery.VERSION_INFO)
                return
            peer = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
            user = state.auth.authenticate(peer, self.headers.get("Authorization"))
            if user is None:
                raise ApiError(401, "Unauthorized")
            self._route(method, path, query, raw, user)
        except ApiError as e:
            self._json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes, user: User) -> None:
        ops = self.server.state.ops
        reg = ops.registry
        if path.startswith("/_test/"):
            self._test_hook(method, path, query)
            return
        if path == "/api":
            self._json(200, discovery.api_versions())
            return
        if path == "/apis":
            self._json(200, discovery.api_group_list(reg))
            return
        if path == "/openapi/v3":
            self._json(200, openapi.root(reg))
            return
        if path.startswith("/openapi/v3/"):
            gv = path.removeprefix("/openapi/v3/").split("/")
            group, version = (
                ("", gv[1])
                if gv[0] == "api" and len(gv) == 2
                else (gv[1], gv[2])
                if len(gv) == 3
                else ("", "")
            )
            doc = openapi.gv_doc(reg, group, version) if version else None
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource")
            self._json(200, doc)
            return
        parts = path.split("/")[1:]
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            if len(parts) == 2:
                doc = discovery.api_group(reg, parts[1])
                if doc is None:
                    raise ApiError(404, "the server could not find the requested resource")
                self._json(200, doc)
                return
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if not rest:
            doc = discovery.resource_list(reg, group, version)
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource")
            self._json(200, doc)
            return
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = reg.find(group, version, rest[2])
            if inner is not None and inner.namespaced:
                ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        t = reg.find(group, version, rest[0])
        if t is None:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if t.namespaced and ns is None and (name is not None or method != "GET"):
            raise ApiError(404, "the server could not find the requested resource")
        if not t.namespaced and ns is not None:
            raise ApiError(404, "the server could not find the requested resource")
        if (
            sub
            and not (sub == "status" and t.status)
            and not (sub == "token" and t.resource == "serviceaccounts" and not t.group)
        ):
            raise ApiError(404, "the server could not find the requested resource")
        self._verb(method, t, ns or "", ns, name, sub, query, raw)

    def _verb(
        self,
        method: str,
        t: ResourceType,
        ns: str,
        ns_filter: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
    ) -> None:
        ops = self.server.state.ops
        dry = query.get("dryRun") == "All"
        strict = query.get("fieldValidation") == "Strict"
        allowed = set(t.verbs)
        if name is None:
            if method == "GET":
                if query.get("watch") in ("1", "true"):
                    self._watch(t, ns_filter, query)
                    return
                self._list(t, ns_filter, query)
                return
            if method == "POST" and "create" in allowed:
                self._json(201, ops.create(t, ns, self._parse(raw), dry, strict))
                return
            if method == "DELETE" and "deletecollection" in allowed:
                listed = ops.list(t, ns_filter, self._matcher(t, query))
                gone = [
                    ops.delete(t, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                    for o in listed.items
                ]
                self._json(
                    200,
                    {
                        "kind": f"{t.kind}List",
                        "apiVersion": t.api_version,
                        "metadata": {"resourceVersion": str(ops.store.revision)},
                        "items": gone,
                    },
                )
                return
            raise ApiError(
                405,
                f"the server does not allow this method on the requested resource ({method} {t.resource})",
            )
        if sub == "token":
            if method != "POST":
                raise ApiError(405, "only create (POST) is served for serviceaccounts/token")
            self._json(201, ops.token_request(ns, name, self._parse(raw)))
            return
        if method == "GET" and "get" in allowed:
            obj = ops.get(t, ns, name)
            if self._wants_table():
                obj = table(
                    t,
                    [obj],
                    obj["metadata"].get("resourceVersion", ""),
                    query.get("includeObject", "Metadata"),
                )
            self._json(200, obj)
        elif method == "PUT" and "update" in allowed:
            self._json(200, ops.update(t, ns, name, self._parse(raw), sub, dry, strict))
        elif method == "PATCH" and "patch" in allowed:
            ctype = self.headers.get("Content-Type") or ""
            self._json(
                200,
                ops.patch(
                    t,
                    ns,
                    name,
                    ctype,
                    raw,
                    sub,
                    dry,
                    query.get("fieldManager", ""),
                    query.get("force") == "true",
                    strict,
                ),
            )
        elif method == "DELETE" and "delete" in allowed and not sub:
            body = self._parse(raw) if raw else None
            self._json(200, ops.delete(t, ns, name, body if isinstance(body, dict) else None, dry))
        else:
            raise ApiError(
                405,
                f"the server does not allow this method on the requested resource ({method} {t.resource})",
            )

    def _wants_table(self) -> bool:
        accept = self.headers.get("Accept") or ""
        first = accept.split(",")[0]
        return "as=Table" in first

    @staticmethod
    def _matcher(t: ResourceType, query: dict[str, str]) -> Any:
        try:
            labels = label_selector(query.get("labelSelector", ""))
            fields = field_selector(query.get("fieldSelector", ""), t.kind)
        except SelectorError as e:
            raise ApiError(400, str(e)) from None
        return lambda o: labels(o) and fields(o)

    def _list(self, t: ResourceType, ns: str | None, query: dict[str, str]) -> None:
        ops = self.server.state.ops
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise ApiError(400, f"invalid limit {query.get('limit')!r}") from None
        result = ops.list(
            t,
            ns,
            self._matcher(t, query),
            query.get("resourceVersion", ""),
            query.get("resourceVersionMatch", ""),
            limit,
            query.get("continue", ""),
        )
        if self._wants_table():
            self._json(
                200,
                table(
                    t,
                    result.items,
                    str(result.revision),
                    query.get("includeObject", "Metadata"),
                    result.continue_token,
                ),
            )
            return
        meta: Obj = {"resourceVersion": str(result.revision)}
        if result.continue_token:
            meta["continue"] = result.continue_token
            meta["remainingItemCount"] = result.remaining
        self._json(
            200,
            {"kind": f"{t.kind}List", "apiVersion": t.api_version, "metadata": meta, "items": result.items},
        )

    def _watch(self, t: ResourceType, ns: str | None, query: dict[str, str]) -> None:
        state = self.server.state
        try:
            timeout = float(query.get("timeoutSeconds") or state.max_watch_seconds)
        except ValueError:
            raise ApiError(400, f"invalid timeoutSeconds {query.get('timeoutSeconds')!r}") from None
        req = WatchRequest(
            type=t,
            namespace=ns,
            match=self._matcher(t, query),
            resource_version=query.get("resourceVersion", ""),
            bookmarks=query.get("allowWatchBookmarks") in ("1", "true"),
            send_initial_events=query.get("sendInitialEvents") == "true",
            timeout=min(timeout, state.max_watch_seconds),
            bookmark_interval=state.bookmark_interval,
        )
        as_table = self._wants_table()
        include = query.get("includeObject", "Metadata")
        events = stream(state.ops, req)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.close_connection = True
        for ev in events:
            if ev is DROPPED:
                # A dropped connection, as when an API server restarts: no clean end of the stream.
                try:
                    self.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if as_table and ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                obj = ev["object"]
                ev = {
                    "type": ev["type"],
                    "object": {
                        "kind": "Table",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                        "columnDefinitions": [],
                        "rows": [row(t, obj, include)],
                    },
                }
            data = json.dumps(ev).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _test_hook(self, method: str, path: str, query: dict[str, str]) -> None:
        """Fault injection for tests that run the server as a process: drop watches, compact."""
        ops = self.server.state.ops
        if method != "POST":
            raise ApiError(405, "test hooks take POST")
        if path == "/_test/drop-watches":
            ops.store.end_watches()
            self._json(200, {"dropped": True})
        elif path == "/_test/compact":
            rev = query.get("revision")
            self._json(200, {"compacted": ops.store.compact(int(rev) if rev else None)})
        else:
            raise ApiError(404, f"no test hook {path}")
