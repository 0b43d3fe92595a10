"""`vmagent-cp`: the control plane."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vmagent.cli.common import build_parser, run_cli

SUBCOMMANDS = [
    "vmagent.cli.cp_serve",
    "vmagent.cli.cp_token",
    "vmagent.cli.cp_revoke",
    "vmagent.cli.cp_config",
    "vmagent.cli.cp_config_errors",
    "vmagent.cli.cp_workloads",
    "vmagent.cli.cp_proxy_status",
    "vmagent.cli.cp_manifests",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vmagent-cp", "The vmagent control plane: mesh CA, registry and xDS.", SUBCOMMANDS)
    return run_cli("vmagent-cp", parser, argv)


if __name__ == "__main__":
    sys.exit(main())
