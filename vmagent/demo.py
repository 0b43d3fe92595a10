"""``make demo``: a whole mesh on this machine, on the embedded defaults.

A control plane and two VMs, "web" and "api" (each a WorkloadGroup with a ServiceEntry selecting it),
live in network namespaces joined by a bridge. Both VMs join with tokens and run the agent with Envoy
and iptables capture; web then calls ``http://api.demo.svc.cluster.local:8080/`` by name, as an
ordinary user with plain curl, and the call crosses the mesh over mutual TLS.

Every way out removes everything the demo started (processes, network namespaces, files): normal end,
Ctrl-C (SIGINT), SIGTERM, SIGHUP (the terminal closed), a cut output (``make demo | head``: the broken
pipe ends the demo quietly), or an error. ``--keep`` leaves the mesh up instead and prints how to reach
it and how to tear it down (the demo then waits until it is stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, exe

API_URL = "http://api.demo.svc.cluster.local:8080/hello"


class Stop(Exception):
    """A signal asked the demo to end (the mesh is torn down on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vmagent.demo",
        description="Build a whole mesh on this machine (a control plane and two VMs, 'web' and 'api', in "
        "network namespaces), call api from web by name over mutual TLS, show the status commands, and "
        "remove everything on exit (also on Ctrl-C, SIGTERM, SIGHUP, a closed output pipe or an error). "
        "Needs root.",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the mesh up after the demo and print how to reach it; it is torn down when the demo "
        "is stopped (Ctrl-C, or `kill PID` as printed)",
    )
    return p.parse_args(argv)


def keep_instructions(lab: MeshLab) -> str:
    """How to reach the kept mesh and how to tear it down."""
    web = lab.vms["web"]
    lines = [
        "the mesh stays up:",
        *("  " + line for line in lab.describe().splitlines()),
        "reach it (every host is a network namespace):",
        f"  ip netns exec {web.ns.name} curl -s {API_URL}",
        f"  ip netns exec {web.ns.name} {exe('vmagent')} status --config-dir {web.config_dir} "
        f"--state-dir {web.state_dir}",
    ]
    if lab.cp is not None:
        lines.append(f"  ip netns exec {lab.cp.ns.name} {exe('vmagent-cp')} workloads")
    lines += [
        "tear it down: press Ctrl-C here, or run",
        f"  kill {os.getpid()}",
    ]
    return "\n".join(lines)


def preflight() -> str | None:
    """What is missing to run the demo, or None."""
    if os.geteuid() != 0:
        return (
            "the demo builds network namespaces, iptables rules and a system user, so it needs root: "
            "run `sudo make demo`"
        )
    missing = [tool for tool in ("ip", "iptables", "curl", "useradd") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (scripts/system-deps.sh installs them)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    # SIGTERM and SIGHUP end the demo like Ctrl-C does: through the finally below.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    work = Path(tempfile.mkdtemp(prefix="vmagent-demo-"))
    lab = MeshLab(work, prefix="vmdemo", subnet="10.230.200.0/24")
    try:
        run_demo(lab)
        if args.keep:
            print("\n" + keep_instructions(lab), flush=True)
            while True:  # until a signal (Ctrl-C, SIGTERM, SIGHUP) raises
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 130
    except Stop as e:
        return 128 + e.signum
    except BrokenPipeError:
        # The output was cut (`make demo | head`): nothing more can be printed; tear down quietly.
        _silence_stdout()
        return 141
    finally:
        # Nothing may interrupt the teardown: further signals are ignored until it is done.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        try:
            step("tearing the mesh down")
        except BrokenPipeError:
            _silence_stdout()
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that later prints (and the exit flush) cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_demo(lab: MeshLab) -> None:
    step("starting the control plane in its own network namespace")
    cp = lab.add_control_plane(DEMO_CONFIG)
    print(f"control plane at {cp.address} (join on :15012, mutual TLS on :15013); config:")
    for name in sorted(DEMO_CONFIG):
        print(f"  {cp.config_dir / name}")

    for name in ("web", "api"):
        step(f"VM {name!r}: token, `vmagent join`, then `vmagent run` (Envoy + capture)")
        started = time.monotonic()
        vm = lab.add_vm(name, f"demo/{name}")
        print(f"{name} at {vm.address} ready in {time.monotonic() - started:.1f}s")
        st = vm.status()
        ident = st.get("identity", {})
        print(f"  identity {ident.get('spiffe_id')}, certificate valid until {ident.get('not_after')}")

    web = lab.vms["web"]
    step(f"on web, as user nobody: curl {API_URL}")
    doc = lab.wait_reachable(web, API_URL, timeout=30)
    print(f"answered by: {doc['name']}")
    print(f"the api app saw x-forwarded-client-cert: {doc['headers'].get('x-forwarded-client-cert')}")

    step("vmagent-cp workloads")
    print(cp.cli("workloads", "--server", cp.http).stdout)
    step("vmagent-cp proxy-status")
    print(cp.cli("proxy-status", "--server", cp.http).stdout)
    step("vmagent status on web")
    print(json.dumps(web.status(), indent=2)[:3000], flush=True)


if __name__ == "__main__":
    sys.exit(main())
