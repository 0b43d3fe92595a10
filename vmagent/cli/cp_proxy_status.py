"""`vmagent-cp proxy-status`: connected proxies and, per xDS type, whether they are synced, stale or NACKed.

Asks a running control plane's HTTP API (``GET {server}/api/v1/proxies``). ``-o json`` prints that list
unchanged (the format is documented in docs/xds.md); text output is one row per proxy stream followed
by Envoy's error text for every NACKed type.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmagent.cli.common import add_output_flag, fetch_list, print_json
from vmagent.common.constants import CP_HTTP_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{CP_HTTP_PORT}"
TYPE_COLUMNS = ("CDS", "LDS", "EDS", "RDS", "SDS")
STATE_LABEL = {"synced": "SYNCED", "stale": "STALE", "nacked": "NACKED"}


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser("proxy-status", help="connected proxies and their xDS sync state")
    add_output_flag(p)
    p.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"control plane HTTP API (default {DEFAULT_SERVER})"
    )
    p.set_defaults(func=run)


def fetch(server: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The proxy list from the control plane's HTTP API; VmagentError when unreachable or malformed."""
    return fetch_list(server, "/api/v1/proxies", "proxies", timeout)


def render_text(proxies: list[dict[str, Any]]) -> str:
    """A table: PROXY IDENTITY PROTOCOL CONNECTED CDS LDS EDS RDS SDS, then NACK errors."""
    if not proxies:
        return "no proxies connected"
    extra = sorted({t for p in proxies for t in p.get("types", {})} - set(TYPE_COLUMNS))
    header = ["PROXY", "IDENTITY", "PROTOCOL", "CONNECTED", *TYPE_COLUMNS, *extra]
    rows = [header]
    errors: list[str] = []
    for p in proxies:
        types = p.get("types", {})
        cells = [
            str(p.get("proxy", "")),
            str(p.get("identity", "")),
            str(p.get("protocol", "")),
            str(p.get("connected_since", "")),
        ]
        for t in (*TYPE_COLUMNS, *extra):
            info = types.get(t)
            cells.append(
                "-" if info is None else STATE_LABEL.get(info.get("state", ""), str(info.get("state")))
            )
            if info is not None and info.get("state") == "nacked":
                errors.append(
                    f"{p.get('proxy')} {t} rejected version {info.get('sent_version')} "
                    f"(running {info.get('acked_version') or 'none'}): {info.get('error')}"
                )
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if errors:
        lines += ["", "NACKs:", *("  " + e for e in errors)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    proxies = fetch(args.server)
    if args.output == "json":
        print_json(proxies)
    else:
        print(render_text(proxies))
    return 0
