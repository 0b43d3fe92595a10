"""`vmagent-cp token create|list|revoke`: join tokens, kept in the state dir's SQLite store."""

from __future__ import annotations

import argparse
import shlex
import socket
from pathlib import Path
from typing import Any

from vmagent.cli.common import add_output_flag, print_json
from vmagent.common.constants import CP_GRPC_PORT, DEFAULT_TRUST_DOMAIN
from vmagent.common.durations import duration_arg
from vmagent.common.errors import VmagentError
from vmagent.controlplane.app import DEFAULT_STATE_DIR, StateStore
from vmagent.controlplane.ca import CaSettings


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
        help=f"address VMs reach the control plane at (default: this host's address:{CP_GRPC_PORT})",
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
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument("--config-dir", type=Path, help="the control plane's config dir (to check the group)")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help=argparse.SUPPRESS)
    p.add_argument("--ca-cert", type=Path, help="operator CA certificate, when serve uses one")
    p.add_argument("--ca-key", type=Path, help="the key of --ca-cert")


def _store(args: argparse.Namespace) -> StateStore:
    return StateStore(args.state_dir, CaSettings(args.trust_domain), args.ca_cert, args.ca_key)


def create(args: argparse.Namespace) -> int:
    ns, sep, name = args.group.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise VmagentError(f"--group must be NAMESPACE/NAME, got {args.group!r}")
    if not _group_exists(args.config_dir, args.state_dir, ns, name):
        where = f"in {args.config_dir}" if args.config_dir else "(no --config-dir given)"
        raise VmagentError(f"WorkloadGroup {ns}/{name} not found {where}; create it before making tokens")
    store = _store(args)
    try:
        token, rec = store.tokens.create(ns, name, args.ttl, args.uses)
        ca_hash = store.ca.root_hash
    finally:
        store.close()
    address = args.join_address or f"{_default_host()}:{CP_GRPC_PORT}"
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


def _default_host() -> str:
    """This host's first non-loopback address, else its name."""
    from vmagent.controlplane.grpc_server import local_addresses

    for a in local_addresses():
        if not a.startswith("127.") and ":" not in a:
            return a
    return socket.getfqdn()


def _group_exists(config_dir: Path | None, state_dir: Path, namespace: str, name: str) -> bool:
    """Whether the WorkloadGroup is in the config dir or the state store, as `serve` would see it."""
    from vmagent.controlplane.app import config_sources
    from vmagent.controlplane.config import ConfigSet
    from vmagent.controlplane.registry import find_workload_group

    configs = ConfigSet(config_sources(config_dir, state_dir))
    configs.start()  # loads each source once
    try:
        return find_workload_group(configs, namespace, name) is not None
    finally:
        configs.stop()
