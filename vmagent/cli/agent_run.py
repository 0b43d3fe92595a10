"""`vmagent run`: the daemon (systemd's ExecStart)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, AgentPaths


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run the agent daemon",
        description="Run the agent: rotate the certificate, run Envoy, capture traffic, probe health. "
        "Notifies systemd when ready (Type=notify) and pets its watchdog.",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help=f"default: {DEFAULT_CONFIG_DIR} (pod mode: STATE_DIR/config, {DEFAULT_CONFIG_DIR}/config.yaml "
        "read as the base)",
    )
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=DEFAULT_RUNTIME_DIR,
        help="Unix sockets of SDS and xDS; default: %(default)s",
    )
    pod = p.add_argument_group(
        "pod mode",
        "--pod runs the agent as a pod's sidecar (never guessed from the environment): the certificate "
        "comes from the pod's ServiceAccount token, no join, no registration, capture applied by the init "
        "step (`vmagent capture apply --pod`). Each setting defaults to the variable named, as the "
        "injection webhook sets them. See docs/kubernetes.md.",
    )
    pod.add_argument("--pod", action="store_true", help="run in pod mode")
    pod.add_argument("--cp-address", help="control plane TLS port HOST:PORT ($CA_ADDR)")
    pod.add_argument(
        "--cp-mtls-address", help="control plane mutual-TLS port ($XDS_ADDR; default HOST:15013)"
    )
    pod.add_argument("--trust-domain", help="$TRUST_DOMAIN; default cluster.local")
    pod.add_argument("--pod-name", help="$POD_NAME")
    pod.add_argument("--pod-namespace", help="$POD_NAMESPACE")
    pod.add_argument("--pod-ip", help="$INSTANCE_IP")
    pod.add_argument("--service-account", help="$SERVICE_ACCOUNT; default: default")
    pod.add_argument(
        "--token-file",
        type=Path,
        help="projected ServiceAccount token, audience istio-ca (re-read at each use); "
        "default /var/run/secrets/tokens/istio-token",
    )
    pod.add_argument(
        "--ca-file", type=Path, help="the mesh root certificate; default /var/run/secrets/istio/root-cert.pem"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmagent.agent.daemon import run_agent

    if not args.pod:
        return run_agent(AgentPaths(args.config_dir or DEFAULT_CONFIG_DIR, args.state_dir, args.runtime_dir))
    from vmagent.agent.pod import settings_from

    # The sidecar's root file system is read only: the generated config lives in the state volume.
    config_dir = args.config_dir or args.state_dir / "config"
    base = None if args.config_dir else DEFAULT_CONFIG_DIR / "config.yaml"
    return run_agent(
        AgentPaths(config_dir, args.state_dir, args.runtime_dir), settings_from(vars(args)), base
    )
