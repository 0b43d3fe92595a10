"""What both CLIs share: running a subcommand and mapping failures to exit codes.

Exit status: 0 success, 1 a failure the user can act on (one line on stderr), 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vmagent import __version__
from vmagent.common.errors import VmagentError
from vmagent.common.logsetup import setup_logging

Handler = Callable[[argparse.Namespace], int]
DAEMON_COMMANDS = ("serve", "run")


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose subcommands come from ``modules``; each has ``add_subcommand(subparsers)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for the daemons (serve, run), warning for the other commands",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).add_subcommand(sub)
    return parser


def run_cli(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    level = args.log_level or ("info" if args.command in DAEMON_COMMANDS else "warning")
    setup_logging(prog, level)
    handler: Handler = args.func
    try:
        return handler(args)
    except VmagentError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def add_output_flag(parser: argparse.ArgumentParser, choices: Sequence[str] = ("text", "json")) -> None:
    parser.add_argument("-o", "--output", choices=list(choices), default=choices[0], help="output format")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def fetch_json(server: str, path: str, what: str, expected: type, timeout: float = 10.0) -> Any:
    """GET ``{server}{path}`` from the control plane's HTTP API, expecting JSON of type ``expected``.

    VmagentError (one line, exit 1) when the server is unreachable or the answer is not of that type.
    """
    import requests

    url = server.rstrip("/") + path
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise VmagentError(
            f"cannot reach the control plane at {server}: {exc}; is vmagent-cp serve running?"
        ) from exc
    if resp.status_code != 200:
        raise VmagentError(f"GET {url} returned HTTP {resp.status_code}: {resp.text.strip()[:200]}")
    try:
        data = resp.json()
    except ValueError as exc:
        raise VmagentError(f"GET {url} did not return JSON") from exc
    if not isinstance(data, expected):
        raise VmagentError(
            f"GET {url} returned {type(data).__name__}, expected a {expected.__name__} of {what}"
        )
    return data


def fetch_list(server: str, path: str, what: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """GET ``{server}{path}``, expecting a JSON list of ``what`` (see ``fetch_json``)."""
    data: list[dict[str, Any]] = fetch_json(server, path, what, list, timeout)
    return data
