"""`vmagent leave`: take this VM out of the mesh without failing a request, then stop the agent.

The running daemon does the work (``Agent.leave``), asked over its control socket (root only):
deregister and wait until the control plane confirms the endpoint left EDS on every proxy, drain
Envoy's inbound connections, remove capture, stop. This command then waits for the daemon to exit
and, when systemd runs it, disables the unit so that the next boot does not register the VM again.
Safe to repeat: with the agent stopped it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from vmagent.agent.config import AgentConfig
from vmagent.agent.control import AgentNotRunning, ControlClient, control_socket, read_left_marker
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, AgentPaths
from vmagent.cli.agent_status import local_status
from vmagent.common import proc
from vmagent.common.constants import AGENT_STATUS_PORT
from vmagent.common.durations import duration_arg
from vmagent.common.errors import VmagentError

# Beyond --timeout: Envoy's drain (5 s) and capture removal, before the daemon answers.
ANSWER_MARGIN = 20.0
# How long the daemon may take to exit after it answered (Envoy drain + SIGTERM grace, the rest).
EXIT_TIMEOUT = 30.0


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "leave",
        help="deregister, drain, remove capture and stop the agent",
        description="Ask the running agent to leave the mesh: the control plane removes its WorkloadEntry "
        "and confirms once no proxy routes to it any more; then the agent drains Envoy, removes traffic "
        "capture and exits. Under systemd the unit is also disabled, so a reboot does not bring the VM "
        "back (`systemctl enable --now vmagent` does). Exit 0 also when the agent is not running.",
    )
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: %(default)s")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=DEFAULT_RUNTIME_DIR,
        help="the agent's --runtime-dir, where its control socket is; default: %(default)s",
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
        default="30s",
        help="how long to wait for the control plane to confirm (default: 30s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="stop even when the control plane cannot confirm (proxies then keep sending traffic here "
        "until its heartbeat timeout)",
    )
    p.add_argument(
        "--no-disable", action="store_true", help="under systemd, leave the unit enabled (it starts at boot)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = AgentPaths(args.config_dir, args.state_dir, args.runtime_dir)
    timeout = args.timeout.total_seconds()
    client = ControlClient(control_socket(paths.runtime_dir))
    try:
        result = client.call(
            "leave",
            {"timeout": timeout, "force": args.force},
            timeout=timeout + ANSWER_MARGIN,
            on_progress=lambda message: print(f"{message} ...", flush=True),
        )
    except AgentNotRunning:
        return not_running(paths)
    entry = result.get("entry") or "this workload"
    how = "confirmed by every proxy" if result.get("confirmed") else "NOT confirmed by the control plane"
    print(f"left the mesh: WorkloadEntry {entry} removed, {how}")
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}")
    pid = int(result.get("pid") or 0)
    if pid and not wait_exit(pid, EXIT_TIMEOUT):
        raise VmagentError(
            f"the agent (pid {pid}) left the mesh but has not exited after {EXIT_TIMEOUT:g}s; see its log"
        )
    print("the agent stopped")
    unit = result.get("systemd_unit")
    if unit and not args.no_disable:
        try:
            proc.run(["systemctl", "disable", "--now", str(unit)])
        except VmagentError as exc:
            raise VmagentError(
                f"left the mesh, but disabling {unit} failed ({exc}); run `systemctl disable {unit}` "
                "or the next boot registers this VM again"
            ) from exc
        print(f"disabled {unit}: it stays stopped across reboots; `systemctl enable --now {unit}` rejoins")
    return 0


def not_running(paths: AgentPaths) -> int:
    """No daemon on the control socket: fine when the agent is stopped, an error when it runs elsewhere."""
    port = status_port(paths)
    if port is not None and status_answers(port):
        raise VmagentError(
            f"an agent answers on its status port {port} but not on {control_socket(paths.runtime_dir)}: "
            "pass the --runtime-dir it runs with"
        )
    marker = read_left_marker(paths.state_dir)
    if marker is not None:
        print(f"the agent is not running: this VM left the mesh at {marker.get('left_at')}; nothing to do")
    else:
        print(
            "the agent is not running: nothing to leave (a stopped agent's entry leaves EDS after the control "
            "plane's heartbeat timeout and is deleted after its grace period)"
        )
    return 0


def status_port(paths: AgentPaths) -> int | None:
    try:
        config = AgentConfig.load(paths.config_file)
    except VmagentError:
        return None
    return int(config.section("status").get("port", AGENT_STATUS_PORT))


def status_answers(port: int) -> bool:
    return local_status(port, timeout=2) is not None


def wait_exit(pid: int, timeout: float) -> bool:
    """True once process ``pid`` is gone (or a zombie), False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
