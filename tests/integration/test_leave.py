"""`vmagent leave` against a real control socket (Unix socket, peer credentials, JSON lines) served by
ControlServer with a stand-in for the daemon's leave; the daemon's own leave runs in the system tier
(tests/system/test_registration_leave.py)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port, require_root
from vmagent.agent.control import (
    AgentNotRunning,
    ControlClient,
    ControlServer,
    Progress,
    control_socket,
    left_marker,
)
from vmagent.cli.common import build_parser, run_cli
from vmagent.common.errors import VmagentError
from vmagent.lab.netns import as_user

CONFIG = """\
control_plane: {{address: "127.0.0.1:15012", mtls_address: "127.0.0.1:15013"}}
trust_domain: cluster.local
workload: {{namespace: demo, group: api, service_account: api}}
status: {{port: {port}}}
"""


def cli(argv: list[str]) -> int:
    parser = build_parser("vmagent", "test", ["vmagent.cli.agent_leave"])
    return run_cli("vmagent", parser, argv)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    config, state, runtime = tmp_path / "etc", tmp_path / "state", tmp_path / "run"
    for d in (config, state, runtime):
        d.mkdir()
    (config / "config.yaml").write_text(CONFIG.format(port=free_port()))
    return config, state, runtime


def argv(dirs: tuple[Path, Path, Path], *extra: str) -> list[str]:
    config, state, runtime = dirs
    return [
        "leave",
        "--config-dir",
        str(config),
        "--state-dir",
        str(state),
        "--runtime-dir",
        str(runtime),
        *extra,
    ]


class FakeDaemon:
    """A control server whose leave reports progress and answers like the daemon, naming an exiting pid."""

    def __init__(self, runtime: Path, result: dict[str, Any] | None = None, error: str = "") -> None:
        self.requests: list[dict[str, Any]] = []
        self.child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        self.result = result or {}
        self.error = error
        self.server = ControlServer(control_socket(runtime), {"leave": self.leave})

    def leave(self, request: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        self.requests.append(dict(request))
        progress("deregistering api-10.0.0.7 and waiting for every proxy")
        if self.error:
            raise VmagentError(self.error)
        assert self.child.stdin is not None
        self.child.stdin.close()  # the "daemon" exits after answering
        threading.Thread(target=self.child.wait, daemon=True).start()
        return {
            "entry": "api-10.0.0.7", "confirmed": True, "left_at": "2024-05-01T10:00:00+00:00",
            "warnings": [], "pid": self.child.pid, "systemd_unit": None, **self.result,
        }  # fmt: skip

    def close(self) -> None:
        self.server.stop()
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()


@pytest.fixture
def daemon(dirs: tuple[Path, Path, Path]) -> Iterator[FakeDaemon]:
    d = FakeDaemon(dirs[2])
    d.server.start()
    yield d
    d.close()


def test_leave_prints_progress_waits_for_the_exit_and_passes_timeout_and_force(
    dirs: tuple[Path, Path, Path], daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(argv(dirs, "--timeout", "12s", "--force")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "deregistering api-10.0.0.7 and waiting for every proxy ...",
        "left the mesh: WorkloadEntry api-10.0.0.7 removed, confirmed by every proxy",
        "the agent stopped",
    ]
    assert daemon.requests == [{"op": "leave", "timeout": 12.0, "force": True}]
    assert daemon.child.poll() is not None


def test_under_systemd_the_unit_is_disabled(
    dirs: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "systemctl.calls"
    fake = bindir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    d = FakeDaemon(dirs[2], result={"systemd_unit": "vmagent.service"})
    d.server.start()
    try:
        assert cli(argv(dirs)) == 0
    finally:
        d.close()
    assert calls.read_text() == "disable --now vmagent.service\n"
    assert "disabled vmagent.service: it stays stopped across reboots" in capsys.readouterr().out


def test_no_agent_is_not_an_error_and_a_left_vm_says_when_it_left(
    dirs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(argv(dirs)) == 0
    assert "the agent is not running: nothing to leave" in capsys.readouterr().out
    left_marker(dirs[1]).write_text('{"left_at": "2024-05-01T10:00:00+00:00", "entry": "api-10.0.0.7"}')
    assert cli(argv(dirs)) == 0
    assert "this VM left the mesh at 2024-05-01T10:00:00+00:00" in capsys.readouterr().out


def test_a_stale_socket_means_not_running(
    dirs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = control_socket(dirs[2])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: a SIGKILLed daemon
    with pytest.raises(AgentNotRunning):
        ControlClient(path).call("leave", {}, timeout=2)
    assert cli(argv(dirs)) == 0
    assert "the agent is not running" in capsys.readouterr().out
    server = ControlServer(path, {})  # a new daemon replaces the stale socket
    server.start()
    server.stop()


def test_agent_running_without_its_socket_is_an_error_naming_runtime_dir(
    dirs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port = int((dirs[0] / "config.yaml").read_text().rsplit("port: ", 1)[1].split("}")[0])

    class Status(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Status)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert cli(argv(dirs)) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vmagent: error: an agent answers on its status port {port} but not on ")
    assert err.endswith("pass the --runtime-dir it runs with") and "\n" not in err


def test_a_refused_leave_exits_1_with_the_daemons_reason(
    dirs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d = FakeDaemon(dirs[2], error="the control plane did not confirm the leave within 30s (UNAVAILABLE)")
    d.server.start()
    try:
        assert cli(argv(dirs)) == 1
    finally:
        d.close()
    assert capsys.readouterr().err == (
        "vmagent: error: the control plane did not confirm the leave within 30s (UNAVAILABLE)\n"
    )


def test_socket_is_0600_and_other_users_are_refused() -> None:
    require_root()
    # A directory every user can traverse (pytest's tmp dirs are 0700), so only the socket's mode decides.
    runtime = Path(tempfile.mkdtemp(prefix="vmagent-control-", dir="/tmp"))
    os.chmod(runtime, 0o755)  # noqa: S103 - on purpose, see above
    path = control_socket(runtime)
    server = ControlServer(path, {"leave": lambda _r, _p: {"left": True}})
    server.start()
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)\n"
        )
        r = subprocess.run([*as_user("nobody"), sys.executable, "-c", code, str(path)], check=False)
        assert r.returncode == 13, "a user other than root must not reach the control socket"
        r = subprocess.run([*as_user("nobody"), "test", "-x", str(runtime)], check=False)
        assert r.returncode == 0, "the directory itself is open: the refusal came from the socket's mode"
    finally:
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)
    assert not path.exists()


def test_peer_credentials_are_checked(tmp_path: Path) -> None:
    path = control_socket(tmp_path)
    server = ControlServer(path, {"leave": lambda _r, _p: {"left": True}}, allowed_uids=frozenset({54321}))
    server.start()
    try:
        with pytest.raises(VmagentError, match="only root may control the agent"):
            ControlClient(path).call("leave", {}, timeout=5)
    finally:
        server.stop()


def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = control_socket(tmp_path)
    first = ControlServer(path, {})
    first.start()
    try:
        with pytest.raises(VmagentError, match="another agent answers on"):
            ControlServer(path, {}).start()
        with pytest.raises(VmagentError, match="unknown operation 'status'"):
            ControlClient(path).call("status", {}, timeout=5)
    finally:
        first.stop()
