"""`vmagent-cp workloads`: the auto-registered workloads, their health, connection and certificate.

Asks a running control plane's HTTP API (``GET {server}/api/v1/workloads``). ``-o json`` prints that list
unchanged (documented in docs/registration.md); text output is one row per workload, followed by the
reason of every unhealthy one.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmagent.cli.common import add_output_flag, fetch_list, print_json
from vmagent.common.constants import CP_HTTP_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{CP_HTTP_PORT}"
PATH = "/api/v1/workloads"


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser("workloads", help="registered workloads: health, connection, certificate")
    add_output_flag(p)
    p.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"control plane HTTP API (default {DEFAULT_SERVER})"
    )
    p.set_defaults(func=run)


def fetch(server: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The workload list from the control plane's HTTP API; VmagentError when unreachable or malformed."""
    return fetch_list(server, PATH, "workloads", timeout)


def _connected(w: dict[str, Any]) -> str:
    if w.get("connected"):
        return f"yes since {w.get('connected_at') or '?'}"
    return f"no since {w.get('disconnected_at') or '?'}"


def render_text(workloads: list[dict[str, Any]]) -> str:
    """A table: WORKLOAD GROUP ADDRESS HEALTH EDS CONNECTED CERT-EXPIRY, then why unhealthy ones are."""
    if not workloads:
        return "no registered workloads"
    header = ["WORKLOAD", "GROUP", "ADDRESS", "HEALTH", "EDS", "CONNECTED", "CERT EXPIRY"]
    rows = [header]
    notes: list[str] = []
    for w in workloads:
        ns = str(w.get("namespace", ""))
        name = f"{ns}/{w.get('name', '')}"
        rows.append(
            [
                name,
                f"{ns}/{w.get('group', '')}",
                str(w.get("address", "")),
                str(w.get("health", "")),
                "in" if w.get("in_eds") else "out",
                _connected(w),
                str(w.get("cert_expiry") or "-"),
            ]
        )
        if w.get("health") != "healthy" and w.get("health_message"):
            notes.append(f"{name}: {w['health_message']}")
        if not w.get("connected") and w.get("delete_at"):
            notes.append(f"{name}: deleted at {w['delete_at']} unless it reconnects")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip() for r in rows]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    workloads = fetch(args.server)
    if args.output == "json":
        print_json(workloads)
    else:
        print(render_text(workloads))
    return 0
