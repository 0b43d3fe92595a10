"""`vmagent cleanup`: stop the Envoy a dead agent left running and remove traffic capture.

Envoy outlives a killed or crashed agent, and capture stays, so that the restarted agent adopts that
Envoy without failing a request (docs/reliability.md). This command undoes both when the agent is not
coming back: the unit's ``ExecStopPost`` runs ``vmagent cleanup --keep-after-crash`` (which keeps them
when systemd reports a crash, ``$SERVICE_RESULT``, and the recorded Envoy still serves), and package
removal runs ``vmagent cleanup``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from vmagent.agent.capture import CaptureManager
from vmagent.agent.capture_config import load_capture_config
from vmagent.agent.envoy_admin import admin_socket, join_proxy_group
from vmagent.agent.envoy_adoption import recorded_envoy, stop_recorded_envoy
from vmagent.agent.envoy_runtime import lookup_proxy_user
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, AgentPaths
from vmagent.common.constants import PROXY_USER
from vmagent.common.errors import VmagentError

# $SERVICE_RESULT values (systemd.exec(5)) that mean the agent died rather than stopped.
CRASH_RESULTS = frozenset({"signal", "core-dump", "watchdog", "exit-code"})
RECORD = "envoy.json"


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "cleanup",
        help="stop an Envoy left by a dead agent and remove traffic capture",
        description="Stop the Envoy that a killed or crashed agent left running (the one recorded in the "
        "runtime directory, checked to be that Envoy first) and remove traffic capture. With "
        "--keep-after-crash (the unit's ExecStopPost) both are kept when $SERVICE_RESULT says the agent "
        "crashed and its Envoy still runs: the restarted agent adopts it.",
    )
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: %(default)s")
    p.add_argument("--runtime-dir", type=Path, default=DEFAULT_RUNTIME_DIR, help="default: %(default)s")
    p.add_argument(
        "--keep-after-crash",
        action="store_true",
        help="do nothing when $SERVICE_RESULT is signal, core-dump, watchdog or exit-code and the agent's "
        "Envoy still runs",
    )
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    paths = AgentPaths(config_dir=args.config_dir, runtime_dir=args.runtime_dir)
    record = paths.runtime_dir / RECORD
    admin = admin_socket(paths.runtime_dir)
    with contextlib.suppress(VmagentError, OSError):  # reach the 0660 admin socket through its group
        join_proxy_group(lookup_proxy_user(PROXY_USER).gid)
    result = os.environ.get("SERVICE_RESULT", "")
    if args.keep_after_crash and result in CRASH_RESULTS:
        found = recorded_envoy(record, admin)
        if not isinstance(found, str):
            print(
                f"the agent died ({result}); its Envoy pid {found[0].pid} keeps serving and capture stays, "
                "for the restarted agent to adopt (`vmagent cleanup` removes both)"
            )
            found[1].close()
            return 0
    print(stop_recorded_envoy(record, admin))
    manager = CaptureManager(load_capture_config(paths.config_file))
    had = any(manager.plan_clean().texts.values())
    manager.clean()
    print("capture removed" if had else "capture was not applied; nothing to do")
    return 0
