"""`vmagent status`: what the running agent reports, or what is on disk when it is not running."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vmagent.agent.config import AgentConfig
from vmagent.agent.control import read_left_marker
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import DEFAULT_CONFIG_DIR, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, AgentPaths
from vmagent.cli.common import add_output_flag, print_json
from vmagent.common.constants import AGENT_STATUS_PORT
from vmagent.common.errors import VmagentError


def add_subcommand(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="show identity, certificate, control-plane link, xDS sync, Envoy, capture and health",
        description="Ask the running agent (its status port, 15020) for its state; when it is not running, "
        "show what is on disk. Exit 0 when the agent is ready, 1 otherwise.",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help=f"default: {DEFAULT_CONFIG_DIR}, else STATE_DIR/config (where `vmagent run --pod` writes it)",
    )
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    add_output_flag(p)
    p.set_defaults(func=run)


def config_dir(args: argparse.Namespace) -> Path:
    """``--config-dir``, else /etc/vmagent, else the pod mode's STATE_DIR/config when only that exists."""
    if args.config_dir is not None:
        return Path(args.config_dir)
    pod = Path(args.state_dir) / "config"
    if not (DEFAULT_CONFIG_DIR / "config.yaml").exists() and (pod / "config.yaml").exists():
        return pod
    return DEFAULT_CONFIG_DIR


def collect(paths: AgentPaths) -> dict[str, Any]:
    """The status document: the daemon's own when it answers, else one built from the files."""
    store = IdentityStore(paths)
    if not store.exists():
        raise VmagentError(
            f"this VM has not joined the mesh (no identity in {paths.state_dir}); run `vmagent join`"
        )
    config = AgentConfig.load(paths.config_file)
    port = int(config.section("status").get("port", AGENT_STATUS_PORT))
    doc = local_status(port, timeout=3)
    if doc is not None:
        doc["running"] = True
        return doc
    ident = store.load()
    left = read_left_marker(paths.state_dir)
    return {
        "running": False,
        "state": "left" if left else "stopped",
        "left": left,
        "ready": False,
        "ready_reason": "the agent is not running"
        + (f" (it left the mesh at {left.get('left_at')})" if left else ""),
        "identity": {
            "spiffe_id": ident.spiffe_id.uri,
            "serial": f"{ident.serial:x}",
            "not_before": ident.not_before.isoformat(),
            "not_after": ident.not_after.isoformat(),
            "expired": ident.expired(),
            "next_rotation": None,
        },
        "workload": {"namespace": config.namespace, "group": config.group},
        "control_plane": {"address": config.cp_mtls_address, "connected": False},
    }


def local_status(port: int, timeout: float) -> dict[str, Any] | None:
    """The running agent's ``/status`` document on 127.0.0.1:PORT, or None when it does not answer.

    Uses http.client, which the daemon loads anyway: the CLI modules are imported by `vmagent run` too.
    """
    import http.client
    import json as _json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        doc = _json.loads(resp.read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    return doc if isinstance(doc, dict) else None


def run(args: argparse.Namespace) -> int:
    doc = collect(AgentPaths(config_dir(args), args.state_dir, DEFAULT_RUNTIME_DIR))
    if args.output == "json":
        print_json(doc)
    else:
        print(render_text(doc))
    return 0 if doc.get("ready") else 1


def render_text(doc: dict[str, Any]) -> str:
    ident = doc.get("identity", {})
    state = doc.get("state") or ("running" if doc.get("running") else "stopped")
    lines = [
        f"agent:          {'running' if doc.get('running') else 'not running'} ({state})",
        f"ready:          {'yes' if doc.get('ready') else 'no'}"
        + ("" if doc.get("ready") else f" ({doc.get('ready_reason', '')})"),
        f"identity:       {ident.get('spiffe_id')}",
        f"certificate:    serial {ident.get('serial')}, valid until {ident.get('not_after')}"
        + (" (EXPIRED: get a new token and run `vmagent join --rejoin`)" if ident.get("expired") else ""),
        f"next rotation:  {ident.get('next_rotation') or '-'}",
    ]
    if ident.get("last_rotation_error"):
        lines.append(f"rotation error: {ident['last_rotation_error']}")
    reg = doc.get("registration")
    if isinstance(reg, dict) and reg.get("enabled"):
        if reg.get("connected"):
            link = f"connected since {reg.get('connected_at')}"
        else:
            link = f"DISCONNECTED since {reg.get('disconnected_at') or '-'}"
            link += f" ({reg['last_error']})" if reg.get("last_error") else ""
        lines.append(f"registration:   {reg.get('entry_name') or '-'}, {link}")
    health = doc.get("health")
    if isinstance(health, dict):
        word = "healthy" if health.get("healthy") else "UNHEALTHY"
        acked = "" if health.get("acked") in (True, None) else ", not yet acknowledged by the control plane"
        lines.append(f"health:         {word} ({health.get('message')}{acked})")
    if doc.get("leave"):
        leave = doc["leave"]
        lines.append(f"leave:          {leave.get('state')} since {leave.get('started_at')}")
    if isinstance(doc.get("left"), dict):
        lines.append(f"left the mesh:  {doc['left'].get('left_at')} (entry {doc['left'].get('entry')})")
    lines += _link_lines(doc)
    return "\n".join(lines)


def _link_lines(doc: dict[str, Any]) -> list[str]:
    """Control-plane link, xDS sync, Envoy, capture and DNS as one human line each."""
    lines: list[str] = []
    cp = doc.get("control_plane")
    if isinstance(cp, dict):
        if cp.get("connected"):
            link = "connected" + (", registered" if cp.get("registered") else "")
        else:
            link = "NOT CONNECTED" + (f" ({cp['last_error']})" if cp.get("last_error") else "")
        lines.append(f"control plane:  {cp.get('address')}, {link}")
    xds = doc.get("xds")
    if isinstance(xds, dict):
        parts = []
        for kind, st in sorted(xds.items()):
            st = st if isinstance(st, dict) else {}
            text = f"{kind} {st.get('acked_version') or 'not acked'}"
            if st.get("nack"):
                text += f" (NACK: {st['nack']})"
            parts.append(text)
        lines.append(f"xds:            {', '.join(parts) or 'nothing received yet'}")
    envoy = doc.get("envoy")
    if isinstance(envoy, dict):
        text = f"pid {envoy.get('pid') or '-'}, {'live' if envoy.get('live') else 'NOT LIVE'}"
        text += f", {envoy.get('restarts') or 0} restarts"
        if envoy.get("last_exit_code") is not None:
            text += f" (last exit code {envoy['last_exit_code']})"
        lines.append(f"envoy:          {text}")
    capture = doc.get("capture")
    if isinstance(capture, dict):
        if not capture.get("enabled"):
            text = "off"
        else:
            text = "applied" if capture.get("applied") else "NOT APPLIED"
        if capture.get("error"):
            text += f" ({capture['error']})"
        lines.append(f"capture:        {text}")
    dns = doc.get("dns")
    if isinstance(dns, dict):
        text = f"on, {dns.get('names', 0)} mesh names" if dns.get("enabled") else "off"
        queries = dns.get("queries")
        if isinstance(queries, dict) and queries:
            text += ", queries " + ", ".join(f"{k} {v}" for k, v in sorted(queries.items()))
        lines.append(f"dns:            {text}")
    return lines
