"""The network-namespace harness itself (tests/netns.py): LANs, users, and cleanup even when a test fails."""

from __future__ import annotations

import os
import sys

import pytest

from tests.harness import require_root
from tests.netns import LineLog, Netns, NetnsPool, netns_pool, veth
from vmagent.common.proc import run

__all__ = ["netns_pool"]

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SERVE = "import socket,sys;s=socket.create_server((sys.argv[1],8080));print('READY',flush=True);c,a=s.accept();c.sendall(a[0].encode())"
FETCH = "import socket,sys;print(socket.create_connection((sys.argv[1],8080),timeout=5).recv(100).decode())"


def namespaces() -> set[str]:
    out = run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lan_hosts_reach_each_other(netns_pool: NetnsPool) -> None:
    lan = netns_pool.lan("vmcap", "10.231.200.0/24")
    a, b, c = lan.add_host(), lan.add_host(), lan.add_host(address="10.231.200.50")
    assert (a.address, b.address, c.address) == ("10.231.200.1", "10.231.200.2", "10.231.200.50")
    LineLog(c.popen([PY, "-c", SERVE, c.address])).wait_line("READY")
    assert a.run([PY, "-c", FETCH, c.address], user="nobody").stdout.strip() == a.address


def test_cleanup_runs_when_the_test_body_fails() -> None:
    require_root()
    with pytest.raises(RuntimeError), NetnsPool() as pool:
        a, b = pool.netns("vmcap"), pool.netns("vmcap")
        veth(a, b, "10.231.201.1/30", "10.231.201.2/30")
        proc = b.popen(["sleep", "300"], user="nobody")
        created = {a.name, b.name}
        assert created <= namespaces()
        raise RuntimeError("the test failed")
    assert proc.poll() is not None  # killed
    assert not created & namespaces()


def test_netns_context_manager_and_run_as_user() -> None:
    require_root()
    with Netns("vmcap") as ns:
        assert ns.run(["id", "-un"], user="nobody").stdout.strip() == "nobody"
        assert "lo" in ns.run(["ip", "-br", "link"]).stdout
        name = ns.name
        assert name.startswith(f"vmcap-{os.getpid()}-")
    assert name not in namespaces()
