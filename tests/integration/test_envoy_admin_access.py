"""Envoy's admin API is out of reach of local users: a Unix socket only root and the proxy user can use.

Real Envoy run as the proxy user (``vmagent-proxy``) by the agent's supervisor, fed by the agent's SDS
server and ADS proxy; the attacker is ``nobody`` (run through ``setpriv``). What operators and Prometheus
need stays reachable through the agent's status port and Envoy's 15090/15021 listeners.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, wait_for
from tests.integration.test_envoy_dataplane import Stack, _make_stack, _serving
from vmagent.agent.envoy_admin import admin_request
from vmagent.agent.envoy_runtime import lookup_proxy_user
from vmagent.common.constants import ENVOY_ADMIN_PORT, PROXY_USER
from vmagent.lab.mesh import ensure_proxy_user
from vmagent.lab.netns import as_user

# Connect to a Unix socket and send one HTTP request; prints OK and the status line, or the error.
_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    s.sendall(sys.argv[2].encode() + b" HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    print("OK", s.recv(200).split(b"\\r\\n")[0].decode())
except OSError as exc:
    print("ERR", type(exc).__name__, exc.errno)
"""


@pytest.fixture
def runtime() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="vma-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def proxied(tmp_path: Path, runtime: Path) -> Iterator[Stack]:
    require_root()
    ensure_proxy_user()
    gen = _make_stack(tmp_path, runtime, run_as=PROXY_USER)
    s = next(gen)
    try:
        wait_for(lambda: _serving(s), 15, what="TLS listener serving with Envoy as vmagent-proxy")
        yield s
    finally:
        gen.close()


def _client(prefix: list[str], sock: Path, request: str) -> str:
    py = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    r = subprocess.run(
        [*prefix, py, "-c", _CLIENT, str(sock), request], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _tcp_listen_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    ports: set[int] = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            ports.add(int(line.split()[3].rpartition(":")[2]))
    return ports


def test_a_local_user_cannot_reach_envoy_admin(proxied: Stack, runtime: Path) -> None:
    s = proxied
    assert isinstance(s.admin, Path)
    sock = s.admin
    proxy = lookup_proxy_user(PROXY_USER)
    # Access model on disk: envoy/ is 0770 root:vmagent-proxy, the socket 0660 vmagent-proxy:vmagent-proxy,
    # and the runtime directory around them 0750 root:vmagent-proxy.
    dst = sock.parent.stat()
    assert (stat.S_IMODE(dst.st_mode), dst.st_uid, dst.st_gid) == (0o770, 0, proxy.gid)
    sst = sock.stat()
    assert stat.S_ISSOCK(sst.st_mode)
    assert (stat.S_IMODE(sst.st_mode), sst.st_uid, sst.st_gid) == (0o660, proxy.uid, proxy.gid)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o750
    # No TCP admin port: Envoy listens on its data-plane, Prometheus and readiness ports only.
    pid = s.envoy.pid()
    assert pid is not None
    listening = _tcp_listen_ports(pid)
    assert ENVOY_ADMIN_PORT not in listening
    assert listening == {s.listen_port, s.prometheus_port, s.readiness_port}, listening
    # The attacker: an ordinary local user cannot connect, so cannot stop Envoy or dump its config.
    nobody = as_user("nobody")
    quit_try = _client(nobody, sock, "POST /quitquitquit")
    dump_try = _client(nobody, sock, "GET /config_dump")
    print(f"as nobody: POST /quitquitquit -> {quit_try}; GET /config_dump -> {dump_try}")
    assert quit_try.startswith("ERR PermissionError")
    assert dump_try.startswith("ERR PermissionError")
    assert s.envoy.pid() == pid and s.envoy.live()
    # Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the agent under its systemd unit) gets in only
    # through the proxy's group, which the agent joins (join_proxy_group); without it, root is refused too.
    bare_root = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    in_group = [*bare_root, f"--groups={proxy.gid}", "--"]
    assert _client(in_group, sock, "GET /ready").startswith("OK HTTP/1.1 200")
    assert _client([*bare_root, "--clear-groups", "--"], sock, "GET /ready").startswith("ERR PermissionError")
    code, body = admin_request(sock, "GET", "/server_info")
    assert code == 200 and b'"LIVE"' in body


def test_stats_and_readiness_stay_reachable_through_the_agent(proxied: Stack) -> None:
    s = proxied
    wait_for(lambda: s.get("/healthz/ready", s.status.port)[0] == 200, 15, what="ready on the status port")
    wait_for(lambda: s.get("/healthz/ready", s.readiness_port)[0] == 200, 10, what="ready through 15021")
    code, merged = s.get("/stats/prometheus", s.status.port)
    assert code == 200
    assert b"vmagent_xds_acks_total" in merged and b"envoy_server_live" in merged
    code, envoy_only = s.get("/stats/prometheus", s.prometheus_port)  # Envoy's 15090 reads its own socket
    assert code == 200 and b"envoy_server_live" in envoy_only
    # Only /stats/prometheus goes through 15090: the rest of the admin API is not reachable there.
    code, _ = s.get("/config_dump", s.prometheus_port)
    assert code == 404
