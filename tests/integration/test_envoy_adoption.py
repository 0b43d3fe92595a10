"""A real Envoy outlives its supervisor and the next one adopts it (vmagent/agent/envoy_adoption.py).

A supervisor in a child process stands for the agent and is SIGKILLed: its Envoy runs on (its parent is
a keeper shell, not the agent; Envoy would otherwise take SIGTERM as its parent died), with its log in a
file. The next supervisor on the same paths adopts that Envoy when
it is the recorded process with the same bootstrap, and drains and replaces it when the bootstrap
changed; a recorded pid that belongs to some other process is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port, wait_for
from vmagent.agent.envoy_admin import prepare_admin_dir
from vmagent.agent.envoy_bootstrap import (
    BootstrapParams,
    find_envoy_binary,
    render_bootstrap,
    write_bootstrap,
)
from vmagent.agent.envoy_process import EnvoySupervisor
from vmagent.agent.envoy_runtime import prepare_runtime_dir
from vmagent.lab.netns import Netns


@pytest.fixture
def runtime() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vma-adopt-", dir="/tmp"))
    yield d
    record = d / "envoy.json"
    if record.exists():  # never leave an Envoy behind, whatever failed
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


def _bootstrap(runtime: Path, name: str = "vm-7") -> dict[str, Any]:
    admin = prepare_admin_dir(prepare_runtime_dir(runtime, None), None)
    p = BootstrapParams(
        node_ip="10.1.2.3",
        name=name,
        namespace="shop",
        xds_socket=runtime / "xds.sock",
        sds_socket=runtime / "sds.sock",
        prometheus_port=free_port(),
        readiness_port=free_port(),
        admin=admin,
        admin_shared_with_group=False,
        listen_host="127.0.0.1",
    )
    doc = render_bootstrap(p)
    del doc["dynamic_resources"]  # no control plane here: static listeners only
    return doc


def _supervisor(runtime: Path) -> EnvoySupervisor:
    return EnvoySupervisor(
        find_envoy_binary(),
        runtime / "envoy-bootstrap.json",
        None,
        runtime / "envoy" / "admin.sock",
        drain_timeout=1,
        record_path=runtime / "envoy.json",
        log_path=runtime / "envoy.log",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_AGENT = """
import sys, time
from pathlib import Path
from tests.integration.test_envoy_adoption import _supervisor
from tests.harness import wait_for
sup = _supervisor(Path(sys.argv[1]))
sup.start()
wait_for(sup.live, 15, what="Envoy live")
print(sup.pid(), flush=True)
time.sleep(600)
"""


def _orphaned_envoy(runtime: Path) -> int:
    """Start a supervisor in a child process, wait for its Envoy, SIGKILL the child; Envoy's pid."""
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(runtime)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert agent.stdout is not None
        return int(agent.stdout.readline())
    finally:
        agent.kill()  # SIGKILL: nothing of the "agent" runs any more
        agent.wait()


def test_an_envoy_outlives_its_killed_supervisor_and_is_adopted(runtime: Path) -> None:
    bootstrap = runtime / "envoy-bootstrap.json"
    write_bootstrap(bootstrap, _bootstrap(runtime))
    pid = _orphaned_envoy(runtime)
    assert json.loads((runtime / "envoy.json").read_text())["pid"] == pid
    wait_for(lambda: b"starting main dispatch loop" in (runtime / "envoy.log").read_bytes(), 15, what="log")
    write_bootstrap(bootstrap, json.loads(bootstrap.read_text()))  # the next agent writes the same bootstrap
    second = _supervisor(runtime)
    second.start()
    try:
        assert _alive(pid), "Envoy outlived its supervisor"
        assert second.adopted_pid == pid and second.pid() == pid and second.live()
        assert second.restarts == 0
        print(f"\nEnvoy pid {pid} outlived its SIGKILLed supervisor and was adopted")
        # An adopted Envoy is still supervised: killed, it is restarted, its exit status known.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: second.live() and second.pid() != pid, 15, what="a new Envoy after the kill")
        assert second.restarts == 1 and second.last_exit_code == -signal.SIGKILL
    finally:
        second.stop()
    assert not _alive(pid)
    assert not (runtime / "envoy.json").exists()


def test_a_changed_bootstrap_replaces_the_running_envoy(runtime: Path) -> None:
    bootstrap = runtime / "envoy-bootstrap.json"
    write_bootstrap(bootstrap, _bootstrap(runtime))
    old = _orphaned_envoy(runtime)  # the Envoy of an agent that was killed (no supervisor would restart it)
    write_bootstrap(bootstrap, _bootstrap(runtime, name="vm-8"))  # what the next agent would give Envoy
    second = _supervisor(runtime)
    second.start()
    try:
        wait_for(second.live, 15, what="the new Envoy live")
        assert second.adopted_pid is None and second.pid() not in (None, old)
        assert not _alive(old), "the old Envoy was drained and stopped"
    finally:
        second.stop()


def test_a_recorded_pid_that_is_not_envoy_is_left_alone(runtime: Path) -> None:
    bootstrap = runtime / "envoy-bootstrap.json"
    write_bootstrap(bootstrap, _bootstrap(runtime))
    other = subprocess.Popen(["sleep", "300"])
    try:
        (runtime / "envoy.json").write_text(
            json.dumps(
                {
                    "pid": other.pid,
                    "started_at": 0,
                    "bootstrap_sha256": "x",
                    "bootstrap_path": str(bootstrap),
                    "binary": str(find_envoy_binary()),
                }
            )
        )
        sup = _supervisor(runtime)
        sup.start()
        try:
            wait_for(sup.live, 15, what="a new Envoy live")
            assert sup.adopted_pid is None and sup.pid() != other.pid
            assert other.poll() is None, "the unrelated process was not touched"
        finally:
            sup.stop()
    finally:
        other.kill()
        other.wait()


def test_cleanup_keeps_the_envoy_after_a_crash_and_stops_it_otherwise(runtime: Path) -> None:
    """`vmagent cleanup` as the unit's ExecStopPost runs it (in a namespace of its own: it also cleans
    capture there, which has none)."""
    write_bootstrap(runtime / "envoy-bootstrap.json", _bootstrap(runtime))
    pid = _orphaned_envoy(runtime)
    cmd = [
        str(Path(sys.executable).parent / "vmagent"), "cleanup", "--keep-after-crash",
        "--runtime-dir", str(runtime), "--config-dir", str(runtime / "no-config"),
    ]  # fmt: skip
    with Netns("vmclean") as ns:
        kept = ns.run(cmd, env={"SERVICE_RESULT": "signal"})
        assert f"its Envoy pid {pid} keeps serving and capture stays" in kept.stdout, kept.stdout
        assert _alive(pid)
        stopped = ns.run(cmd, env={"SERVICE_RESULT": "success"})
        assert f"stopped the Envoy pid {pid}" in stopped.stdout, stopped.stdout
        assert "capture was not applied" in stopped.stdout
    wait_for(lambda: not _alive(pid), 10, what="the Envoy to be gone")
    assert not (runtime / "envoy.json").exists()
