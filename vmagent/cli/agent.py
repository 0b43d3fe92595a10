"""`vmagent`: the VM-side agent."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vmagent.cli.common import build_parser, run_cli

SUBCOMMANDS = [
    "vmagent.cli.agent_join",
    "vmagent.cli.agent_run",
    "vmagent.cli.agent_status",
    "vmagent.cli.agent_leave",
    "vmagent.cli.agent_capture",
    "vmagent.cli.agent_cleanup",
    "vmagent.cli.agent_envoy_admin",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vmagent", "Join this VM to the mesh and run its proxy.", SUBCOMMANDS)
    return run_cli("vmagent", parser, argv)


if __name__ == "__main__":
    sys.exit(main())
