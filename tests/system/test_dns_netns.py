"""The DNS proxy between two network namespaces joined by a veth (needs root).

"vm" (10.232.0.2) runs the proxy on 127.0.0.1:15053 with one upstream, the DNS server in "dns"
(10.232.0.1:53, the fake upstream from tests/unit/test_dns_helpers.py). Mesh names come from the proxy's
table; everything else must cross the veth to the other namespace and come back.

The module also runs as a program, the proxy inside the "vm" namespace:

    python -m tests.system.test_dns_netns --upstream 10.232.0.1 --table '{"NAME": ["IP"]}' --namespace demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.netns import Netns, NetnsPool, veth
from vmagent.common import constants

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_IP = "10.232.0.1"
VM_IP = "10.232.0.2"
MESH = {
    "api.demo.svc.cluster.local": ["10.232.9.9", "fd00:232::9"],
    "db.mesh.example": ["10.232.9.10"],
}
PORT = constants.DNS_PROXY_PORT


@dataclass
class DnsPair:
    vm: Netns
    dns: Netns
    upstream_log: Path

    def dig(self, name: str, qtype: str = "A", *, tcp: bool = False, server: str = "127.0.0.1") -> list[str]:
        """``dig +short`` inside the vm namespace; the answer's data lines."""
        cmd = ["dig", "+short", "+time=2", "+tries=1", f"@{server}", name, qtype]
        if server == "127.0.0.1":
            cmd[1:1] = ["-p", str(PORT)]
        if tcp:
            cmd.append("+tcp")
        return self.vm.run(cmd, timeout=15).stdout.split()

    def status(self, name: str, *, server: str = "127.0.0.1", port: int = PORT) -> str:
        out = self.vm.run(["dig", "+time=2", "+tries=1", "-p", str(port), f"@{server}", name], timeout=15)
        for line in out.stdout.splitlines():
            if "status:" in line:
                return line.split("status:")[1].split(",")[0].strip()
        raise AssertionError(f"no status in dig output:\n{out.stdout}")

    def upstream_saw(self) -> list[str]:
        return self.upstream_log.read_text().splitlines() if self.upstream_log.exists() else []


def _start_pair(pool: NetnsPool, tmp_path: Path, mark: int) -> DnsPair:
    require_tool("dig")
    require_tool("ss")
    vm, dns = pool.netns("vmdns"), pool.netns("vmdns")
    veth(vm, dns, f"{VM_IP}/24", f"{UPSTREAM_IP}/24")
    env = {"PYTHONPATH": str(REPO)}
    log = tmp_path / "upstream-queries.log"
    records = ["--record", "outside.example=192.0.2.7,2001:db8::7"]
    with (tmp_path / "upstream.out").open("w") as out:
        dns.popen(
            [sys.executable, "-m", "tests.unit.test_dns_helpers", "--listen", UPSTREAM_IP, "--port", "53",
             *records, "--log", str(log)],
            env=env, stdout=out,
        )  # fmt: skip
    with (tmp_path / "proxy.out").open("w") as out:
        vm.popen(
            [sys.executable, "-m", "tests.system.test_dns_netns", "--upstream", UPSTREAM_IP,
             "--table", json.dumps(MESH), "--namespace", "demo", "--mark", str(mark)],
            env=env, stdout=out,
        )  # fmt: skip
    for ns, port in ((dns, 53), (vm, PORT)):
        ns.wait_listening(port, "udp")
        ns.wait_listening(port, "tcp")
    return DnsPair(vm, dns, log)


@pytest.fixture
def pool() -> Iterator[NetnsPool]:
    """Namespaces for one test; every process in them is killed and they are deleted afterwards."""
    require_root()
    require_tool("ip")
    with NetnsPool() as netns_pool:
        yield netns_pool


@pytest.fixture
def pair(pool: NetnsPool, tmp_path: Path) -> DnsPair:
    return _start_pair(pool, tmp_path, constants.BYPASS_MARK)


@pytest.mark.root
def test_mesh_names_resolve_through_the_proxy_port(pair: DnsPair) -> None:
    for tcp in (False, True):
        assert pair.dig("api.demo.svc.cluster.local", tcp=tcp) == ["10.232.9.9"]
        assert pair.dig("api.demo.svc.cluster.local", "AAAA", tcp=tcp) == ["fd00:232::9"]
        assert pair.dig("api.demo", tcp=tcp) == ["10.232.9.9"]
        assert pair.dig("api", tcp=tcp) == ["10.232.9.9"]
        assert pair.dig("db.mesh.example", "AAAA", tcp=tcp) == []
    assert pair.status("db.mesh.example") == "NOERROR"
    assert not any("mesh" in q or "api" in q for q in pair.upstream_saw()), "mesh names left the VM"


@pytest.mark.root
def test_outside_names_are_answered_by_the_server_in_the_other_namespace(pair: DnsPair) -> None:
    assert pair.dig("outside.example") == ["192.0.2.7"]
    assert pair.dig("outside.example", "AAAA", tcp=True) == ["2001:db8::7"]
    assert pair.status("nowhere.example") == "NXDOMAIN"
    assert pair.upstream_saw() == [
        f"udp outside.example A {VM_IP}",
        f"tcp outside.example AAAA {VM_IP}",
        f"udp nowhere.example A {VM_IP}",
    ]


@pytest.fixture
def captured_pair(pool: NetnsPool, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DnsPair]:
    """A pair whose vm namespace redirects port 53 to the proxy, sparing the bypass mark (as capture
    does), and whose /etc/resolv.conf (seen through ``ip netns exec``) names the upstream."""
    require_tool("iptables")
    require_tool("getent")
    mark = int(request.param)
    pair = _start_pair(pool, tmp_path, mark)
    for proto in ("udp", "tcp"):
        pair.vm.run(
            ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", proto, "--dport", "53",
             "-m", "mark", "!", "--mark", hex(constants.BYPASS_MARK), "-j", "REDIRECT", "--to-ports", str(PORT)]
        )  # fmt: skip
    etc = Path("/etc/netns") / pair.vm.name
    etc.mkdir(parents=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {UPSTREAM_IP}\noptions timeout:2 attempts:1\n")
        yield pair
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when empty: other tests may be using /etc/netns too
            os.rmdir("/etc/netns")


@pytest.mark.root
@pytest.mark.parametrize("captured_pair", [constants.BYPASS_MARK], indirect=True)
def test_an_unmodified_client_resolves_through_capture_without_a_loop(captured_pair: DnsPair) -> None:
    pair = captured_pair
    # an ordinary user's getent uses /etc/resolv.conf -> 10.232.0.1:53, which capture sends to the proxy
    mesh = pair.vm.run(["getent", "ahostsv4", "api.demo.svc.cluster.local"], user="nobody", timeout=15)
    assert mesh.stdout.split()[0] == "10.232.9.9"
    outside = pair.vm.run(["getent", "ahostsv4", "outside.example"], user="nobody", timeout=15)
    assert outside.stdout.split()[0] == "192.0.2.7"
    # the proxy's own query carried the mark, so it reached the real server once instead of looping
    assert pair.upstream_saw() == [f"udp outside.example A {VM_IP}"]
    assert pair.status("outside.example", server=UPSTREAM_IP, port=53) == "NOERROR"


@pytest.mark.root
@pytest.mark.parametrize("captured_pair", [0], indirect=True)
def test_without_the_mark_the_proxy_would_capture_its_own_queries(captured_pair: DnsPair) -> None:
    """The control experiment: the same set-up with marking off never reaches the real server."""
    pair = captured_pair
    assert pair.dig("api.demo.svc.cluster.local", server=UPSTREAM_IP) == ["10.232.9.9"]
    result = pair.vm.run(["getent", "ahostsv4", "outside.example"], check=False, timeout=30)
    assert result.returncode != 0
    assert pair.upstream_saw() == []


def main() -> None:
    from vmagent.agent.dns import DnsProxy
    from vmagent.agent.dns_table import NameTable

    parser = argparse.ArgumentParser(description="run the DNS proxy for the system test")
    parser.add_argument("--upstream", action="append", default=[])
    parser.add_argument("--table", default="{}", help="JSON {hostname: [address, ...]}")
    parser.add_argument("--namespace")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--mark", type=int, default=constants.BYPASS_MARK)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
    table = NameTable(namespace=args.namespace)
    table.replace(json.loads(args.table))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DnsProxy(table=table, upstreams=args.upstream, port=args.port, mark=args.mark or None) as proxy:
        stop.wait()
        print(json.dumps(proxy.metrics.snapshot()), flush=True)


if __name__ == "__main__":
    main()
