"""`vmagent envoy-admin PATH`: a read-only look at Envoy's admin API for root.

Envoy's admin API is a Unix socket that only root and the proxy user reach (``vmagent/agent/envoy_admin.py``);
this command sends one ``GET PATH`` to it and prints the body. Only GET: Envoy refuses GET on every
endpoint that changes its state (``/quitquitquit``, ``/drain_listeners``, ``/logging``, ...), so nothing
this command sends can stop or reconfigure the proxy.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Any

from vmagent.agent.config import AgentConfig
from vmagent.agent.envoy_admin import AdminEndpoint, admin_request, admin_socket, describe
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, AgentPaths
from vmagent.agent.sections import parse_envoy
from vmagent.common.errors import VmagentError


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "envoy-admin",
        help="GET a path of Envoy's admin API (root only; e.g. /config_dump, /clusters, /stats)",
        description="Send GET PATH to Envoy's admin API, a Unix socket in the runtime directory that only "
        "root and the proxy user can use, and print the answer. Read-only: Envoy refuses GET on the "
        "endpoints that change its state. Exit 0 on HTTP 200, 1 otherwise.",
    )
    p.add_argument("path", help="the admin path and query, e.g. '/stats?filter=^cluster\\.' or /config_dump")
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: %(default)s")
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=DEFAULT_RUNTIME_DIR,
        help="the agent's --runtime-dir, where Envoy's admin socket is; default: %(default)s",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default: %(default)s)")
    p.set_defaults(func=run)


def endpoint(paths: AgentPaths) -> AdminEndpoint:
    """The admin socket, or the TCP address when the config opted in to ``envoy.admin_address``."""
    if paths.config_file.is_file():
        cfg = parse_envoy(AgentConfig.load(paths.config_file).section("envoy"), str(paths.config_file))
        tcp = cfg.admin_tcp()
        if tcp is not None:
            return tcp
    return admin_socket(paths.runtime_dir)


def run(args: argparse.Namespace) -> int:
    path = str(args.path)
    if not path.startswith("/"):
        raise VmagentError(f"envoy-admin: {path!r} is not an admin path (it starts with '/', e.g. /clusters)")
    target = endpoint(AgentPaths(config_dir=args.config_dir, runtime_dir=args.runtime_dir))
    try:
        status, body = admin_request(target, "GET", path, timeout=args.timeout)
    except OSError as exc:
        where = describe(target)
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise VmagentError(
                f"permission denied on Envoy's admin API {where}: only root and the proxy user may use it"
            ) from exc
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise VmagentError(
                f"Envoy's admin API {where} does not answer: is the agent running with Envoy "
                "(`vmagent status`)? Check --runtime-dir"
            ) from exc
        raise VmagentError(f"Envoy's admin API {where}: {exc.strerror or exc}") from exc
    sys.stdout.buffer.write(body)
    if body and not body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    if status != 200:
        print(f"Envoy answered HTTP {status} for GET {path}", file=sys.stderr)
        return 1
    return 0
