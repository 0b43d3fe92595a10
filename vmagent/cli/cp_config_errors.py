"""`vmagent-cp config errors`: what a running control plane refused, and which objects are shadowed.

Asks ``GET {server}/api/v1/config/errors`` (one line per problem: source, object, field path, message;
files of the config dir, and Istio objects in the cluster as ``kubernetes: KIND NS/NAME: ...``) and
``GET {server}/api/v1/config/warnings`` (an object defined by two sources: which one is in force).
Exit status 1 when there is any error, so scripts can gate on it.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmagent.cli.common import add_output_flag, fetch_json, print_json
from vmagent.common.constants import CP_HTTP_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{CP_HTTP_PORT}"


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="the running control plane's view of the config")
    sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    e = sub.add_parser(
        "errors",
        help="objects the control plane refused, and shadowed ones",
        description="Print every config problem of a running control plane (files and cluster objects, "
        "with the field path) and every object defined by two sources. Exit 1 when there is an error.",
    )
    add_output_flag(e)
    e.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"control plane HTTP API (default {DEFAULT_SERVER})"
    )
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    errors = [str(x) for x in fetch_json(args.server, "/api/v1/config/errors", "config errors", list)]
    warnings = [str(x) for x in fetch_json(args.server, "/api/v1/config/warnings", "config warnings", list)]
    if args.output == "json":
        print_json({"errors": errors, "warnings": warnings})
    else:
        if not errors and not warnings:
            print("no config errors")
        for e in errors:
            print(f"error: {e}")
        for w in warnings:
            print(f"warning: {w}")
    return 1 if errors else 0
