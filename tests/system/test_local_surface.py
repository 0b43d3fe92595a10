"""The local attack surface of a VM and of the control plane host (issue 20 item 6, issue 13 item 8).

Real VMs (network namespaces), real agent, Envoy (as vmagent-proxy) and control plane. An ordinary local
user (``nobody``) of a VM cannot reach Envoy's admin API nor make the agent leave, while the status port,
the merged metrics and readiness stay open to it; the running agent holds only the capabilities its
configuration needs; the control plane's HTTP API listens on loopback only by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from vmagent.agent.privileges import CAPS, current
from vmagent.common.constants import CP_HTTP_PORT, ENVOY_ADMIN_PORT
from vmagent.lab.demo_config import GROUPS, SERVICES
from vmagent.lab.mesh import MeshLab, VmHost, exe
from vmagent.lab.netns import LineLog, Netns
from vmagent.lab.wait import wait_for

AGENT_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    require_tool("ss")
    lab = MeshLab(Path(tmp_path_factory.mktemp("surface")), prefix="vmsurf", subnet="10.230.57.0/24")
    try:
        lab.add_control_plane({"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES})
        lab.add_vm("web", "demo/web")
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def web(mesh: MeshLab) -> VmHost:
    vm = mesh.vms["web"]
    wait_for(lambda: vm.status().get("ready"), timeout=60, what="the web VM's agent to be ready")
    return vm


def _listening(ns: Netns) -> set[int]:
    """The TCP ports something listens on in ``ns``."""
    out = ns.run(["ss", "-H", "-ltn"]).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines() if line.strip()}


def _names(caps: set[int]) -> set[str]:
    by_number = {v: k for k, v in CAPS.items()}
    return {by_number.get(c, f"cap_{c}") for c in caps}


def test_a_local_user_cannot_reach_envoy_admin(web: VmHost) -> None:
    assert ENVOY_ADMIN_PORT not in _listening(web.ns), "Envoy's admin API must not listen on TCP"
    tcp = web.curl(f"http://127.0.0.1:{ENVOY_ADMIN_PORT}/config_dump", "-X", "GET")
    quit_try = web.curl("http://localhost/quitquitquit", "-X", "POST", "--unix-socket", str(web.admin_socket))
    dump_try = web.curl("http://localhost/config_dump", "--unix-socket", str(web.admin_socket))
    print(
        f"as nobody: TCP {ENVOY_ADMIN_PORT} -> curl exit {tcp.returncode}; "
        f"POST /quitquitquit on the socket -> curl exit {quit_try.returncode}; "
        f"GET /config_dump -> curl exit {dump_try.returncode}"
    )
    # curl exit 7: could not connect (refused on TCP; permission denied on the socket).
    assert (tcp.returncode, quit_try.returncode, dump_try.returncode) == (7, 7, 7)
    assert web.status()["envoy"]["live"] is True
    # Root reads it through the agent's CLI (GET only: Envoy refuses GET on what changes its state).
    dirs = ["--config-dir", str(web.config_dir), "--runtime-dir", str(web.runtime_dir)]
    info = web.vmagent("envoy-admin", "/server_info", *dirs)
    assert '"state": "LIVE"' in info.stdout
    pid = web.status()["envoy"]["pid"]
    refused = web.vmagent("envoy-admin", "/quitquitquit", *dirs, check=False)
    print(f"root: vmagent envoy-admin /quitquitquit -> exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode == 1
    assert web.status()["envoy"]["pid"] == pid and web.status()["envoy"]["live"] is True


def test_status_metrics_and_readiness_stay_open_to_local_users(web: VmHost) -> None:
    status = web.curl("http://127.0.0.1:15020/stats/prometheus")
    body, _, code = status.stdout.rpartition("\n")
    assert code == "200"
    assert "vmagent_xds_acks_total" in body and "envoy_server_live" in body  # Envoy's, read over the socket
    ready = web.curl("http://127.0.0.1:15021/healthz/ready")
    assert ready.stdout.rpartition("\n")[2] == "200"
    prom = web.curl("http://127.0.0.1:15090/stats/prometheus")
    assert prom.stdout.rpartition("\n")[2] == "200" and "envoy_server_live" in prom.stdout


def test_a_local_user_cannot_make_the_agent_leave(web: VmHost) -> None:
    cmd = [exe("vmagent"), "leave", *web.dirs(), "--runtime-dir", str(web.runtime_dir)]
    r = web.ns.run(cmd, user="nobody", check=False, timeout=60)
    print(f"`vmagent leave` as nobody -> exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode != 0 and "run this as root" in r.stderr
    assert web.agent is not None and web.agent.poll() is None
    assert web.status()["ready"] is True and web.status().get("leave") is None


def test_the_agent_keeps_only_the_capabilities_it_needs(web: VmHost) -> None:
    assert web.agent is not None
    tasks = sorted(Path(f"/proc/{web.agent.pid}/task").iterdir())
    held: set[int] = set()
    for task in tasks:
        tid = f"{web.agent.pid}/task/{task.name}"
        for kind in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            held |= current(kind, tid)
    print(f"agent ({len(tasks)} threads): effective, permitted, bounding, ambient = {sorted(_names(held))}")
    assert _names(held) == AGENT_CAPS


def test_state_dir_and_key_are_private(web: VmHost) -> None:
    state = web.state_dir.stat().st_mode & 0o777
    key = (web.state_dir / "key.pem").stat().st_mode & 0o777
    print(f"state dir {oct(state)}, key {oct(key)}")
    assert (state, key) == (0o700, 0o600)


def test_control_plane_http_api_is_loopback_only_by_default(mesh: MeshLab, tmp_path: Path) -> None:
    """A second control plane with serve's default listen addresses: its HTTP API (15014) answers on
    loopback and refuses connections from another host on the LAN."""
    host = mesh.add_host("cpdefault")
    peer = mesh.add_host("cppeer")  # a plain host: a VM's own traffic would go through its Envoy
    state = tmp_path / "state"
    config = tmp_path / "config"
    config.mkdir()
    (config / "10-groups.yaml").write_text(GROUPS)
    proc = host.popen([exe("vmagent-cp"), "serve", "--config-dir", str(config), "--state-dir", str(state)])
    try:
        LineLog(proc).wait_line("control plane ready", timeout=60)
        assert CP_HTTP_PORT in _listening(host)
        health = f"http://127.0.0.1:{CP_HTTP_PORT}/healthz"
        local = host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", health], check=False)
        remote_url = f"http://{host.address}:{CP_HTTP_PORT}/healthz"
        remote = peer.run(["curl", "-s", "--max-time", "5", remote_url], check=False, timeout=20)
        print(
            f"15014 from loopback -> HTTP {local.stdout}; from {peer.address} -> curl exit {remote.returncode}"
        )
        assert local.stdout == "200"
        assert remote.returncode == 7  # connection refused: nothing listens on the LAN address
    finally:
        proc.terminate()
        proc.wait(timeout=20)
