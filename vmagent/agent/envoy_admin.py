"""Where Envoy's admin API listens and how the agent reaches it.

By default the admin API is a Unix socket, ``envoy/admin.sock`` in the agent's runtime directory, never
a TCP port: any local user could otherwise ``POST /quitquitquit`` or read ``/config_dump``.

Access model (the agent runs as root, but its unit grants no CAP_DAC_OVERRIDE, so it goes through the
ordinary permission checks like anyone else; the unit's ``RestrictSUIDSGID=`` also rules out a
set-group-id directory):

* the runtime directory is ``0750 root:vmagent-proxy`` (other users cannot even look inside);
* ``envoy/`` in it is ``0770 root:vmagent-proxy``: Envoy (the proxy user) creates its socket there;
* Envoy sets the socket's mode to ``0660`` (the bootstrap's ``pipe.mode``): ``vmagent-proxy:vmagent-proxy``;
* the agent adds the group ``vmagent-proxy`` to its supplementary groups (:func:`join_proxy_group`), so it
  connects through the group (and may give its own files that group without CAP_CHOWN);
  ``vmagent envoy-admin`` (root in a shell, with CAP_DAC_OVERRIDE) simply can.

So only root and the proxy user reach it. Without a proxy user (development, tests) Envoy runs as the
agent's own user, the directory is ``0700`` and the socket ``0600``.

``envoy.admin_address: HOST:PORT`` in the agent config opts in to a TCP admin port instead, for
debugging only; then every local user can reach it again.
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
from pathlib import Path

from vmagent.common.errors import VmagentError

ADMIN_DIR = "envoy"
ADMIN_SOCKET = "admin.sock"
SOCKET_MODE = 0o660
PRIVATE_SOCKET_MODE = 0o600
_DIR_MODE = 0o770  # root:vmagent-proxy

# The admin API's address: a Unix socket path, or (host, port) when TCP was opted in to.
AdminEndpoint = Path | tuple[str, int]


def admin_socket(runtime_dir: Path) -> Path:
    """The admin socket of the Envoy whose agent uses ``runtime_dir``."""
    return runtime_dir / ADMIN_DIR / ADMIN_SOCKET


def describe(endpoint: AdminEndpoint) -> str:
    if isinstance(endpoint, Path):
        return f"unix:{endpoint}"
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket (stdlib only)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_request(endpoint: AdminEndpoint, method: str, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """One HTTP request to Envoy's admin API; returns (status, body). Raises OSError when unreachable."""
    conn: http.client.HTTPConnection
    if isinstance(endpoint, Path):
        conn = _UnixHTTPConnection(endpoint, timeout)
    else:
        conn = http.client.HTTPConnection(endpoint[0], endpoint[1], timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def prepare_admin_dir(runtime_dir: Path, proxy_gid: int | None) -> Path:
    """Create ``envoy/`` in ``runtime_dir`` for the admin socket (see the access model); return the socket.

    A directory left by an earlier run is kept (a running Envoy's socket stays reachable), its owner and
    mode set again.
    """
    d = runtime_dir / ADMIN_DIR
    try:
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            d.unlink()
        d.mkdir(mode=0o700, exist_ok=True)
        if proxy_gid is None:
            os.chmod(d, 0o700)
        else:
            os.chown(d, -1, proxy_gid)  # the agent is in the group: no CAP_CHOWN needed
            os.chmod(d, _DIR_MODE)
            _regroup_running_socket(d / ADMIN_SOCKET, proxy_gid)
    except OSError as exc:
        raise VmagentError(
            f"cannot prepare Envoy's admin directory {d}: {exc.strerror or exc}; "
            "choose another runtime directory with --runtime-dir"
        ) from exc
    return d / ADMIN_SOCKET


def _regroup_running_socket(sock: Path, proxy_gid: int) -> None:
    """A running Envoy's socket that systemd handed to root:root (it chowns a kept RuntimeDirectory to the
    unit's user at each start) gets the proxy's group back, so root and the proxy's group reach it as before."""
    try:
        st = sock.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid() and st.st_gid != proxy_gid:
        os.chown(sock, -1, proxy_gid)
        os.chmod(sock, SOCKET_MODE)


def join_proxy_group(proxy_gid: int) -> None:
    """Add the proxy's group to this process's supplementary groups (to reach the 0660 admin socket)."""
    groups = os.getgroups()
    if proxy_gid in groups or os.getgid() == proxy_gid:
        return
    try:
        os.setgroups([*groups, proxy_gid])
    except OSError as exc:
        raise VmagentError(
            f"cannot join the proxy's group {proxy_gid} to reach Envoy's admin socket: {exc.strerror or exc}"
        ) from exc
