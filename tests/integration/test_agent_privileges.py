"""The agent's capability drop (vmagent/agent/privileges.py), in a fresh root process: what it drops is
gone from every set, also for a child it runs as root afterwards (iptables' case), which must not get a
dropped capability back on exec."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import require_root
from vmagent.agent.privileges import CAPS, needed

_SCRIPT = """
import subprocess, sys
from vmagent.agent.privileges import drop_all_but
drop_all_but(sys.argv[1:])
print(open("/proc/self/status").read())
print("---child---")
print(subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout)
"""


def _sets(status: str) -> dict[str, set[str]]:
    names = {v: k for k, v in CAPS.items()}
    out: dict[str, set[str]] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            mask = int(value.strip(), 16)
            out[key] = {names.get(n, str(n)) for n in range(64) if mask >> n & 1}
    return out


def test_needed_capabilities_follow_the_configuration() -> None:
    assert needed(envoy_as_other_user=False, gateway=False) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert needed(envoy_as_other_user=True, gateway=False) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL",
    }  # fmt: skip
    assert "CAP_NET_BIND_SERVICE" in needed(envoy_as_other_user=True, gateway=True)


def test_dropped_capabilities_are_gone_for_the_agent_and_its_root_children() -> None:
    require_root()
    keep = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_KILL"]
    r = subprocess.run([sys.executable, "-c", _SCRIPT, *keep], capture_output=True, text=True, check=True)
    own, _, child = r.stdout.partition("---child---")
    mine, theirs = _sets(own), _sets(child)
    print(f"agent: {mine}\nchild run as root: {theirs}")
    for sets in (mine, theirs):
        assert sets["CapEff"] == sets["CapPrm"] == sets["CapBnd"] == set(keep)
        assert sets["CapAmb"] == set() and sets["CapInh"] <= set(keep)
