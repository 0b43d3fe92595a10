"""The local control channel between the ``vmagent`` CLI and the running daemon.

A Unix stream socket, ``control.sock`` in the runtime directory, mode 0600 and owned by the daemon's user
(root): only root reaches it. The status port (15020) listens on every address and is read-only; a
command that changes the agent's state (``leave``) never goes over TCP. The daemon also checks the peer's
uid (``SO_PEERCRED``) and answers only root or its own uid.

Protocol, one request per connection, UTF-8 JSON lines:

* the client sends ``{"op": "leave", ...parameters}``;
* the daemon answers any number of ``{"event": "progress", "message": "..."}`` lines while it works,
  then one final line: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``;
  then it closes the connection.

:class:`ControlServer` serves it (one thread per connection, handlers by ``op``); :class:`ControlClient`
calls it and raises :class:`AgentNotRunning` when nobody listens, :class:`VmagentError` for anything else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmagent.common.errors import VmagentError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
LEFT_MARKER = "left.json"
MAX_LINE = 64 * 1024

Progress = Callable[[str], None]
# (request, progress) -> result; raise VmagentError for a failure the user can act on.
Handler = Callable[[Mapping[str, Any], Progress], dict[str, Any]]


def control_socket(runtime_dir: Path) -> Path:
    """Where the daemon with this runtime directory listens."""
    return runtime_dir / SOCKET_NAME


def left_marker(state_dir: Path) -> Path:
    """Written by the daemon after a leave (JSON: ``left_at``, ``entry``, ``confirmed``); removed at start."""
    return state_dir / LEFT_MARKER


def read_left_marker(state_dir: Path) -> dict[str, Any] | None:
    """The last leave's record, or None when the agent has not left (or started again since)."""
    try:
        doc = json.loads(left_marker(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def systemd_unit(pid: int | str = "self") -> str | None:
    """The systemd service unit running ``pid`` (from its cgroup), or None outside a systemd service."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return None


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class ControlServer:
    """Listens on ``path`` (0600) and dispatches each request to ``handlers[op]`` in its own thread."""

    def __init__(
        self, path: Path, handlers: Mapping[str, Handler], allowed_uids: frozenset[int] | None = None
    ) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._allowed = allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._requests: list[threading.Thread] = []

    def start(self) -> None:
        """Bind the socket (a stale one is replaced) and serve in a daemon thread."""
        self._free_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise VmagentError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        sock.settimeout(None)  # accept blocks; stop() shuts the socket down to wake it (no idle polling)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def stop(self, wait: float = 2.0) -> None:
        """Stop accepting, give requests in progress up to ``wait`` seconds to answer, remove the socket."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        deadline = time.monotonic() + wait
        for t in [self._thread, *self._requests]:
            if t is not None and t is not threading.current_thread():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _free_path(self) -> None:
        if not self.path.parent.is_dir():
            raise VmagentError(f"cannot listen on {self.path}: directory {self.path.parent} does not exist")
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise VmagentError(f"cannot listen on {self.path}: a non-socket file is in the way; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # stale: its daemon is gone
            return
        finally:
            probe.close()
        raise VmagentError(
            f"another agent answers on {self.path}; stop it or give this one another --runtime-dir"
        )

    def _serve(self) -> None:
        while not self._stopping.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            t = threading.Thread(target=self._handle, args=(conn,), name="control-request", daemon=True)
            self._requests = [r for r in self._requests if r.is_alive()] + [t]
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(None)
            writer = _Writer(conn)
            try:
                uid = peer_uid(conn)
                if uid not in self._allowed:
                    log.warning("control socket: refused a request from uid %d", uid)
                    writer.send({"ok": False, "error": "only root may control the agent"})
                    return
                request = _read_line(conn)
                op = str(request.get("op", ""))
                handler = self._handlers.get(op)
                if handler is None:
                    writer.send({"ok": False, "error": f"unknown operation {op!r}"})
                    return
                log.info("control socket: %s requested (uid %d)", op, uid)
                try:
                    result = handler(request, lambda m: writer.send({"event": "progress", "message": m}))
                except VmagentError as exc:
                    writer.send({"ok": False, "error": str(exc)})
                    return
                except Exception as exc:
                    log.exception("control request %s failed", op)
                    writer.send({"ok": False, "error": f"{op} failed in the agent: {exc}; see its log"})
                    return
                writer.send({"ok": True, "result": result})
            except (OSError, ValueError) as exc:
                log.info("control socket: request dropped: %s", exc)


class _Writer:
    """Sends JSON lines; a client that went away does not stop the handler's work."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._broken = False

    def send(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                self._conn.sendall(json.dumps(doc, sort_keys=True).encode() + b"\n")
            except OSError:
                self._broken = True


def _read_line(conn: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError("request too long")
    doc = json.loads(buf.split(b"\n", 1)[0] or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("a request is a JSON object")
    return doc


class AgentNotRunning(VmagentError):
    """Nobody listens on the control socket (no socket file, or a stale one)."""


class ControlClient:
    """Sends one request to the daemon listening on ``path`` and returns its result."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(
        self, op: str, params: Mapping[str, Any], timeout: float, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """The daemon's result; VmagentError with its message when it failed, AgentNotRunning when no
        daemon listens, VmagentError when it does not answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(timeout, 5.0))
            try:
                sock.connect(str(self.path))
            except FileNotFoundError as exc:
                raise AgentNotRunning(f"no agent listens on {self.path}") from exc
            except ConnectionRefusedError as exc:
                raise AgentNotRunning(f"no agent listens on {self.path} (stale socket)") from exc
            except PermissionError as exc:
                raise VmagentError(f"permission denied on {self.path}: run this as root") from exc
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                    raise AgentNotRunning(f"no agent listens on {self.path}") from exc
                raise VmagentError(f"cannot reach the agent on {self.path}: {exc.strerror or exc}") from exc
            try:
                sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered (a refusal) and closed before reading: its answer is buffered
            buf = b""
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        doc = json.loads(line)
                    except ValueError as exc:
                        raise VmagentError(f"the agent on {self.path} sent an unreadable answer") from exc
                    if doc.get("event") == "progress":
                        if on_progress is not None:
                            on_progress(str(doc.get("message", "")))
                        continue
                    if doc.get("ok"):
                        result = doc.get("result") or {}
                        return dict(result)
                    raise VmagentError(str(doc.get("error") or "the agent refused the request"))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VmagentError(f"the agent did not answer {op!r} within {timeout:g}s; see its log")
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError as exc:
                    raise VmagentError(
                        f"the agent did not answer {op!r} within {timeout:g}s; see its log"
                    ) from exc
                if not chunk:
                    raise VmagentError(f"the agent closed the control connection during {op!r}; see its log")
                buf += chunk
        finally:
            sock.close()
