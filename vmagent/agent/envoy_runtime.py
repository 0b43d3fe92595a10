"""The proxy's system user and the runtime directory that holds the agent's Unix sockets.

Access model: the runtime directory is ``0750 root:vmagent-proxy`` and each socket in it is
``0660 root:vmagent-proxy``, so only the agent (root) and the proxy user's group reach SDS and ADS.
When no proxy user is in play (tests, ``run_as_user=None``) both are private to the current user
(``0700`` / ``0600``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from vmagent.common.errors import VmagentError


@dataclass(frozen=True)
class ProxyUser:
    name: str
    uid: int
    gid: int


def lookup_proxy_user(name: str) -> ProxyUser:
    """The uid and primary gid of system user ``name``, looked up (never assumed to be 1337)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError as exc:
        raise VmagentError(
            f"system user {name!r} does not exist; install the vmagent package (it creates the user) "
            f"or create it with `useradd --system {name}`"
        ) from exc
    return ProxyUser(name, pw.pw_uid, pw.pw_gid)


def lookup_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError as exc:
        raise VmagentError(f"system group {name!r} does not exist") from exc


def prepare_runtime_dir(path: Path, proxy_gid: int | None) -> Path:
    """Create the runtime directory with the access model above; raise VmagentError saying why it cannot."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if proxy_gid is None:
            os.chmod(path, 0o700)
        else:
            os.chown(path, -1, proxy_gid)
            os.chmod(path, 0o750)  # noqa: S103 - group = the proxy, by design
    except OSError as exc:
        raise VmagentError(
            f"cannot create runtime directory {path}: {exc.strerror or exc}; "
            "choose another one with --runtime-dir"
        ) from exc
    return path


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` free for a new Unix socket: its directory must exist, a stale socket is removed."""
    parent = path.parent
    if not parent.is_dir():
        raise VmagentError(f"cannot listen on {path}: directory {parent} does not exist")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise VmagentError(f"cannot listen on {path}: a non-socket file is in the way; remove it")
    path.unlink()


def restrict_socket(path: Path, peer_gid: int | None) -> None:
    """Set the socket's mode: 0660 with group ``peer_gid`` (the proxy), or 0600 when there is none."""
    if peer_gid is None:
        os.chmod(path, 0o600)
    else:
        os.chown(path, -1, peer_gid)
        os.chmod(path, 0o660)


def serve_grpc_on_socket(
    path: Path,
    peer_gid: int | None,
    max_streams: int,
    what: str,
    threads: str,
    add_handlers: Callable[[grpc.Server], None],
) -> grpc.Server:
    """A started gRPC server for Envoy on the Unix socket ``path`` (a stale socket replaced), at most
    ``max_streams`` concurrent calls, the socket then restricted to the proxy's group (:func:`restrict_socket`).
    ``what`` names the service in errors; ``threads`` prefixes its worker threads' names."""
    prepare_socket_path(path)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix=threads),
        maximum_concurrent_rpcs=max_streams,
    )
    add_handlers(server)
    if not server.add_insecure_port(f"unix:{path}"):
        raise VmagentError(f"cannot listen on {path} for {what}")
    server.start()
    restrict_socket(path, peer_gid)
    return server
