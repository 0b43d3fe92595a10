"""``make demo``: a whole mesh on this machine, on the embedded defaults.

A control plane and two VMs, "web" and "api" (each a WorkloadGroup with a ServiceEntry selecting it),
live in network namespaces joined by a bridge. Both VMs join with tokens and run the agent with Envoy
and iptables capture; web then calls ``http://api.demo.svc.cluster.local:8080/`` by name, as an
ordinary user with plain curl, and the call crosses the mesh over mutual TLS. Everything is removed on
exit or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab

API_URL = "http://api.demo.svc.cluster.local:8080/hello"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


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


def main() -> int:
    problem = preflight()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="vmagent-demo-"))
    lab = MeshLab(work, prefix="vmdemo", subnet="10.230.200.0/24")
    try:
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
        print(json.dumps(web.status(), indent=2)[:3000])
        if sys.stdin.isatty() and os.environ.get("VMAGENT_DEMO_WAIT"):
            input("\nthe mesh is up; press Enter to tear it down ")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        step("tearing the mesh down")
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
