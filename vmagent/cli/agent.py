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
]


def main(argv: Sequence[str] | None = None) -> int:
    modules = [m for m in SUBCOMMANDS if _exists(m)]
    parser = build_parser("vmagent", "Join this VM to the mesh and run its proxy.", modules)
    return run_cli("vmagent", parser, argv)


def _exists(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
