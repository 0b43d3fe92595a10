"""`vmagent-cp token create|list|revoke`: join tokens, kept in the state dir's SQLite store.

`token create` agrees with the running control plane without repeating its flags: it asks
``/api/v1/server`` of ``--server`` (default http://127.0.0.1:15014) for the server's state dir, its
WorkloadGroups and the address it listens on for joins. When no server answers it falls back to
``--state-dir`` / ``--config-dir`` and this host's address, and says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vmagent.cli.common import add_output_flag, print_json
from vmagent.common.constants import CP_GRPC_PORT, CP_HTTP_PORT, DEFAULT_TRUST_DOMAIN
from vmagent.common.durations import duration_arg
from vmagent.common.errors import VmagentError
from vmagent.controlplane.ca.authority import CaSettings
from vmagent.controlplane.grpc_server import join_address
from vmagent.controlplane.paths import DEFAULT_STATE_DIR
from vmagent.controlplane.state import StateStore

DEFAULT_SERVER = f"http://127.0.0.1:{CP_HTTP_PORT}"


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("token", help="create, list and revoke join tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    c = tsub.add_parser(
        "create",
        help="make a join token and print the join command",
        description="Make a join token for a WorkloadGroup and print the exact "
        "`vmagent join` command (with the root CA's hash) to run on the VM.",
    )
    c.add_argument("--group", required=True, metavar="NS/GROUP", help="the WorkloadGroup the VM joins")
    c.add_argument("--ttl", type=duration_arg, default="1h", help="how long the token is valid (1h)")
    c.add_argument("--uses", type=int, default=1, help="how many joins it allows (1)")
    c.add_argument(
        "--join-address",
        metavar="HOST:PORT",
        help="address VMs reach the control plane at (default: the address the running server listens on "
        f"for joins; without a running server this host's address:{CP_GRPC_PORT})",
    )
    c.add_argument(
        "--server",
        metavar="URL",
        default=DEFAULT_SERVER,
        help="the running control plane's HTTP API, asked for its state dir, groups and join address "
        "(default: %(default)s)",
    )
    _common(c)
    add_output_flag(c)
    c.set_defaults(func=create)

    ls = tsub.add_parser("list", help="list join tokens and their state")
    _common(ls)
    add_output_flag(ls)
    ls.set_defaults(func=list_tokens)

    r = tsub.add_parser("revoke", help="revoke a join token by id")
    r.add_argument("id", help="the token id (see `token list`)")
    _common(r)
    r.set_defaults(func=revoke)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        help=f"the control plane's state dir (default: the running server's, else {DEFAULT_STATE_DIR})",
    )
    p.add_argument("--config-dir", type=Path, help="the control plane's config dir (to check the group)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help=argparse.SUPPRESS)
    p.add_argument("--ca-cert", type=Path, help="operator CA certificate, when serve uses one")
    p.add_argument("--ca-key", type=Path, help="the key of --ca-cert")


def _store(args: argparse.Namespace) -> StateStore:
    if args.state_dir is None:
        args.state_dir = DEFAULT_STATE_DIR
    return StateStore(args.state_dir, CaSettings(args.trust_domain), args.ca_cert, args.ca_key)


def server_info(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The running control plane's ``/api/v1/server`` document, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/server", timeout=timeout) as resp:  # noqa: S310
            doc = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) and "state_dir" in doc else None


def create(args: argparse.Namespace) -> int:
    ns, sep, name = args.group.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise VmagentError(f"--group must be NAMESPACE/NAME, got {args.group!r}")
    server = server_info(args.server) if args.server else None
    if server is not None:
        served = Path(str(server["state_dir"]))
        if args.state_dir is not None and args.state_dir.resolve() != served:
            raise VmagentError(
                f"the control plane at {args.server} uses state dir {served}, not {args.state_dir}: "
                "its tokens would not be accepted; drop --state-dir or pass that one"
            )
        args.state_dir = served
        if f"{ns}/{name}" not in server.get("workload_groups", []):
            raise VmagentError(
                f"WorkloadGroup {ns}/{name} not found in the control plane at {args.server}; "
                "create it (config dir or `vmagent-cp apply`) before making tokens"
            )
        address = args.join_address or str(server["join_address"])
    else:
        if args.state_dir is None:
            args.state_dir = DEFAULT_STATE_DIR
        asked = f"no control plane answers at {args.server}" if args.server else "no --server given"
        print(
            f"token: {asked}; using state dir {args.state_dir}"
            + (f" and config dir {args.config_dir}" if args.config_dir else ""),
            file=sys.stderr,
        )
        if not _group_exists(args.config_dir, args.state_dir, ns, name):
            where = f"in {args.config_dir} or" if args.config_dir else "(no --config-dir given) in"
            raise VmagentError(
                f"WorkloadGroup {ns}/{name} not found {where} the state store of {args.state_dir}; "
                "start `vmagent-cp serve` (then its groups are asked for) or pass its --config-dir"
            )
        address = args.join_address or join_address(f"0.0.0.0:{CP_GRPC_PORT}")
    store = _store(args)
    try:
        token, rec = store.tokens.create(ns, name, args.ttl, args.uses)
        ca_hash = store.ca.root_hash
    finally:
        store.close()
    command = ["vmagent", "join", address, "--token", token, "--ca-hash", ca_hash]
    if args.output == "json":
        print_json(
            {
                **rec.as_json(),
                "token": token,
                "ca_hash": ca_hash,
                "address": address,
                "command": shlex.join(command),
            }
        )
    else:
        print(shlex.join(command))
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        records = store.tokens.list()
    finally:
        store.close()
    if args.output == "json":
        print_json([r.as_json() for r in records])
        return 0
    print(f"{'ID':32}  {'GROUP':24}  {'USED':>5}  {'EXPIRES':25}  STATE")
    for r in records:
        j = r.as_json()
        print(f"{r.jti:32}  {j['group']!s:24}  {r.used:>2}/{r.uses:<2}  {j['expires_at']!s:25}  {j['state']}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rec = store.tokens.revoke(args.id)
    finally:
        store.close()
    print(f"token {rec.jti} for {rec.namespace}/{rec.group} revoked")
    return 0


def _group_exists(config_dir: Path | None, state_dir: Path, namespace: str, name: str) -> bool:
    """Whether the WorkloadGroup is in the config dir or the state store, as `serve` would see it."""
    from vmagent.controlplane.config import ConfigSet
    from vmagent.controlplane.registry.services import find_workload_group
    from vmagent.controlplane.state import config_sources

    configs = ConfigSet(config_sources(config_dir, state_dir))
    configs.start()  # loads each source once
    try:
        return find_workload_group(configs, namespace, name) is not None
    finally:
        configs.stop()
