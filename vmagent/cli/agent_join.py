"""`vmagent join`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from vmagent.agent.capture_config import CaptureConfig
from vmagent.agent.config import AgentConfig
from vmagent.agent.gateway import enable_gateway_mode, gateway_capture, parse_gateway
from vmagent.agent.join import JoinRequest, join
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, AgentPaths
from vmagent.common import proc
from vmagent.common.errors import VmagentError


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "join",
        help="join this VM to the mesh",
        description="Bootstrap this VM's identity: generate a key, send a CSR authenticated by the join "
        "token, verify the certificate against the pinned root, write the configuration, and start "
        "vmagent.service where systemd runs. Running it again on a joined VM changes nothing.",
    )
    p.add_argument("address", metavar="HOST:PORT", help="the control plane's join address (port 15012)")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument(
        "--token",
        help="the join token from `vmagent-cp token create` (visible to every local user in `ps` and "
        "kept in shell history while the command runs: prefer --token-file)",
    )
    tok.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the token from PATH, or from standard input with `-` (keeps it out of `ps` and history)",
    )
    ca = p.add_mutually_exclusive_group(required=True)
    ca.add_argument("--ca-hash", help="sha256:HEX of the mesh root's public key, as printed with the token")
    ca.add_argument("--ca-file", type=Path, help="the mesh root certificate (PEM) instead of --ca-hash")
    p.add_argument(
        "--address",
        dest="vm_address",
        default="",
        help="this VM's address in the mesh (default: detected at start)",
    )
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: %(default)s")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument("--key-algorithm", default="ec-p256", choices=["ec-p256", "rsa-2048", "rsa-4096"])
    p.add_argument("--no-start", action="store_true", help="do not enable and start vmagent.service")
    p.add_argument(
        "--gateway",
        action="store_true",
        help="run this VM as an ingress gateway: Envoy serves the Gateways that select this VM's labels, "
        "with no traffic capture (writes gateway.enabled: true; see docs/gateway.md)",
    )
    p.add_argument(
        "--no-dns-capture",
        action="store_true",
        help="do not send the VM's DNS queries (port 53) to the agent's DNS proxy; mesh names then do not "
        "resolve unless the VM's resolver knows them (writes capture.dns: false; see docs/dns.md)",
    )
    p.add_argument(
        "--rejoin",
        action="store_true",
        help="replace an existing identity (for example an expired one) using a new token; restarts "
        "vmagent.service so the running agent takes the new identity",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = args.token
    if args.token_file == "-":  # noqa: S105 (the path meaning standard input, not a secret)
        token = sys.stdin.readline().strip()
    elif args.token_file is not None:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise VmagentError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}") from exc
    if not token:
        raise VmagentError("the join token is empty")
    paths = AgentPaths(args.config_dir, args.state_dir, DEFAULT_RUNTIME_DIR)
    result = join(
        JoinRequest(
            address=args.address,
            token=token,
            ca_hash=args.ca_hash,
            ca_file=args.ca_file,
            vm_address=args.vm_address,
            key_algorithm=args.key_algorithm,
            rejoin=args.rejoin,
        ),
        paths,
    )
    if args.gateway:
        enable_gateway_mode(paths.config_file)
        print("gateway mode on: this VM's Envoy serves the Gateways that select its labels")
    if args.no_dns_capture:
        set_dns_capture(paths.config_file, False)
    print(dns_capture_line(paths.config_file))
    if result.already_joined:
        print(
            f"already joined as {result.identity} (certificate valid until {result.not_after}); "
            "nothing changed. Use --rejoin with a new token to replace this identity."
        )
        return 0
    print(f"joined as {result.identity}; certificate serial {result.serial} valid until {result.not_after}")
    if not args.no_start:
        _start_service(restart=args.rejoin)
    return 0


def _start_service(restart: bool = False) -> None:
    """Enable and start vmagent.service; ``restart`` (--rejoin): restart it, since a running agent keeps
    the identity it loaded at start (an expired one, typically) until it restarts."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        print("systemd is not running here: start the agent with `vmagent run`")
        return
    if proc.run(["systemctl", "cat", "vmagent.service"], check=False).returncode != 0:
        print("vmagent.service is not installed: start the agent with `vmagent run`")
        return
    if restart:
        proc.run(["systemctl", "enable", "vmagent.service"], timeout=120)
        proc.run(["systemctl", "restart", "vmagent.service"], timeout=120)
        print("vmagent.service enabled and restarted with the new identity")
        return
    proc.run(["systemctl", "enable", "--now", "vmagent.service"], timeout=120)
    print("vmagent.service enabled and started")


def set_dns_capture(config_file: Path, on: bool) -> None:
    """Write ``capture.dns`` into the agent's config file, keeping the rest."""
    cfg = AgentConfig.load(config_file)
    cfg.sections["capture"] = {**cfg.section("capture"), "dns": on}
    cfg.save(config_file)


def dns_capture_line(config_file: Path) -> str:
    """One line saying whether this VM resolves mesh names through the agent, and how to change it."""
    cfg = AgentConfig.load(config_file)
    capture = gateway_capture(
        cfg.sections.get("capture"),
        parse_gateway(cfg.sections.get("gateway"), str(config_file), config_file.parent),
    )
    c = CaptureConfig.from_mapping(capture, str(config_file))
    if c.enabled and c.dns:
        return (
            "DNS capture: on (applications resolve mesh names such as NAME.NS.svc.cluster.local through the "
            f"agent; set capture.dns: false in {config_file} or join with --no-dns-capture to turn it off)"
        )
    why = "capture is off" if not c.enabled else f"capture.dns: false in {config_file}"
    return f"DNS capture: off ({why}); mesh names resolve only if the VM's own resolver knows them"
