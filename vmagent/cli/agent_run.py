"""`vmagent run`: the daemon (systemd's ExecStart)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, AgentPaths


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run the agent daemon",
        description="Run the agent: rotate the certificate, run Envoy, capture traffic, probe health. "
        "Notifies systemd when ready (Type=notify) and pets its watchdog.",
    )
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: %(default)s")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=DEFAULT_RUNTIME_DIR,
        help="Unix sockets of SDS and xDS; default: %(default)s",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmagent.agent.daemon import run_agent
    from vmagent.agent.state_commit import recover

    paths = AgentPaths(args.config_dir, args.state_dir, args.runtime_dir)
    # Before the config is read: finish or undo a join or rotation that a crash interrupted.
    recover(paths)
    return run_agent(paths)
