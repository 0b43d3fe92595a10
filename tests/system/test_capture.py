"""Capture with real iptables inside network namespaces created by the test (needs root).

Topology: a "vm" namespace (10.231.1.1, fd31::1) joined by a veth pair to a "peer" namespace (10.231.1.2,
fd31::2) that runs servers. The outbound "proxy" on 15001 in the vm is a tiny Python relay running as the
throwaway system user ``vmcap-proxy`` (created with ``useradd --system`` when absent and left in place, so
concurrent runs never race on deleting it); it recovers the original destination with SO_ORIGINAL_DST and
prefixes its replies with ``via-proxy``. Clients run as ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.netns import LineLog, Netns, NetnsPool, netns_pool, veth
from vmagent.agent.capture import CaptureManager
from vmagent.agent.capture_config import CaptureConfig
from vmagent.common.errors import VmagentError
from vmagent.common.proc import run

__all__ = ["netns_pool"]

PROXY_USER = "vmcap-proxy"
CLIENT_USER = "nobody"
VM_IP, PEER_IP = "10.231.1.1", "10.231.1.2"
VM_IP6, PEER_IP6 = "fd31::1", "fd31::2"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# A relay: accept, read the original destination (SO_ORIGINAL_DST, 80, at SOL_IP or IPPROTO_IPV6), log it,
# forward the first message there and answer "LABEL <reply>". With a bind address it connects from there
# (the inbound passthrough source 127.0.0.6).
RELAY = r"""
import socket, struct, sys, threading
label, family, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
bind_src = sys.argv[4] if len(sys.argv) > 4 else None
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
lst = socket.socket(fam, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
lst.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
lst.listen(64)
print("READY", flush=True)
def original_dst(c):
    if fam == socket.AF_INET6:
        raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)
        port = struct.unpack("!H", raw[2:4])[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = c.getsockopt(socket.SOL_IP, 80, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(ip), port
def handle(c):
    with c:
        c.settimeout(5)
        dst = original_dst(c)
        print(f"CONN {dst[0]} {dst[1]}", flush=True)
        data = c.recv(1024)
        try:
            up = socket.socket(fam, socket.SOCK_STREAM)
            up.settimeout(5)
            if bind_src:
                up.bind((bind_src, 0))
            up.connect(dst)
            with up:
                up.sendall(data)
                reply = up.recv(1024)
        except OSError as e:
            reply = f"upstream-error {e}".encode()
        c.sendall(label.encode() + b" " + reply)
while True:
    conn, _ = lst.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

# A server answering "NAME saw PEER_IP" to the first message of each connection.
SERVER = r"""
import socket, sys
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(64)
print("READY", flush=True)
while True:
    c, peer = s.accept()
    with c:
        c.settimeout(5)
        c.recv(1024)
        c.sendall(f"{name} saw {peer[0]}".encode())
"""

CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(b"hello")
    print(s.recv(1024).decode())
"""


def ensure_proxy_user() -> pwd.struct_passwd:
    """The throwaway system user the test proxy runs as (created when absent, never deleted)."""
    try:
        return pwd.getpwnam(PROXY_USER)
    except KeyError:
        require_tool("useradd")
        run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROXY_USER],
            check=False,
        )
        return pwd.getpwnam(PROXY_USER)


class NsRunner:
    """A CommandRunner that runs every command inside ``ns`` (``ip netns exec``); ``sabotage`` can
    corrupt the input of chosen commands to make them fail for real."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.sabotage: set[str] = set()

    def __call__(
        self, cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        if cmd[0] in self.sabotage and input:
            input = input.replace("COMMIT", "-A VMAGENT_NO_SUCH_CHAIN -j RETURN\nCOMMIT")
        return run([*self.ns.exec_prefix, *cmd], input=input, check=check, timeout=timeout)


@dataclass
class Hosts:
    vm: Netns
    peer: Netns
    config_dir: Path

    def cli(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        """``vmagent capture ARGS --config-dir DIR`` inside the vm namespace (with ``path`` as PATH)."""
        cmd = [
            sys.executable,
            "-m",
            "vmagent.cli.agent",
            "capture",
            *args,
            "--config-dir",
            str(self.config_dir),
        ]
        env = None if path is None else {**os.environ, "PATH": path}
        return self.vm.run(cmd, check=False, timeout=60, env=env)

    def write_config(self, text: str) -> None:
        (self.config_dir / "config.yaml").write_text(text)

    def manager(self, **data: object) -> tuple[CaptureManager, NsRunner]:
        runner = NsRunner(self.vm)
        config = CaptureConfig.from_mapping({"proxy_user": PROXY_USER, **data}, "test")
        return CaptureManager(config, runner=runner), runner


def saved(ns: Netns, tool: str) -> str:
    """``tool`` output without comments and with counters zeroed, for exact comparisons."""
    out = ns.run([tool]).stdout
    lines = [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in out.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def saves(ns: Netns, backend: str = "nft") -> tuple[str, str]:
    return saved(ns, f"iptables-{backend}-save"), saved(ns, f"ip6tables-{backend}-save")


@pytest.fixture
def hosts(netns_pool: NetnsPool, tmp_path: Path) -> Iterator[Hosts]:
    require_root()
    for tool in ("iptables-nft-restore", "ip6tables-nft-restore", "setpriv", "ss"):
        require_tool(tool)
    ensure_proxy_user()
    vm = netns_pool.netns("vmcap")
    peer = netns_pool.netns("vmcap")
    if_vm, if_peer = veth(vm, peer, f"{VM_IP}/24", f"{PEER_IP}/24")
    vm.add_address(if_vm, f"{VM_IP6}/64")
    peer.add_address(if_peer, f"{PEER_IP6}/64")
    config_dir = tmp_path / "etc-vmagent"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text(f"capture:\n  proxy_user: {PROXY_USER}\n")
    yield Hosts(vm, peer, config_dir)


def start(ns: Netns, script: str, *args: str, user: str | None = None) -> LineLog:
    """Run one of the scripts above in ``ns`` and wait for its READY line."""
    log = LineLog(ns.popen([PY, "-c", script, *args], user=user))
    log.wait_line("READY")
    return log


def connect(ns: Netns, host: str, port: int, user: str = CLIENT_USER) -> str:
    """Connect from ``ns`` as ``user``, send one message, return the reply."""
    return ns.run([PY, "-c", CLIENT, host, str(port)], user=user, timeout=20).stdout.strip()


def test_ordinary_client_goes_through_the_proxy_and_the_proxy_is_not_looped(hosts: Hosts) -> None:
    start(hosts.peer, SERVER, "server", PEER_IP, "80")
    start(hosts.peer, SERVER, "server6", PEER_IP6, "80")
    assert connect(hosts.vm, PEER_IP, 80) == f"server saw {VM_IP}"  # before capture: direct

    applied = hosts.cli("apply")
    assert applied.returncode == 0, applied.stderr
    assert "capture applied (nft backend, ipv4 and ipv6)" in applied.stdout
    proxy = start(hosts.vm, RELAY, "via-proxy", "4", "15001", user=PROXY_USER)
    proxy6 = start(hosts.vm, RELAY, "via-proxy6", "6", "15001", user=PROXY_USER)

    # an unmodified client as an ordinary user: redirected; the proxy sees the original destination and
    # its own upstream connection (as the proxy user) goes straight out, not back into itself
    assert connect(hosts.vm, PEER_IP, 80) == f"via-proxy server saw {VM_IP}"
    assert proxy.matching("CONN") == [f"CONN {PEER_IP} 80"]
    assert connect(hosts.vm, PEER_IP6, 80) == f"via-proxy6 server6 saw {VM_IP6}"
    assert proxy6.matching("CONN") == [f"CONN {PEER_IP6} 80"]

    # the proxy user's own traffic is not redirected
    assert connect(hosts.vm, PEER_IP, 80, user=PROXY_USER) == f"server saw {VM_IP}"
    assert proxy.matching("CONN") == [f"CONN {PEER_IP} 80"]

    # clean: direct again
    cleaned = hosts.cli("clean")
    assert cleaned.returncode == 0 and "capture removed" in cleaned.stdout
    assert connect(hosts.vm, PEER_IP, 80) == f"server saw {VM_IP}"


def test_ssh_metadata_and_local_addresses_are_not_captured(hosts: Hosts) -> None:
    # the metadata address lives on the peer; the vm routes it there
    hosts.peer.add_address("veth0", "169.254.169.254/32")
    hosts.vm.add_route("169.254.169.254/32", PEER_IP)
    start(hosts.peer, SERVER, "metadata", "169.254.169.254", "80")
    start(hosts.vm, SERVER, "sshd", "0.0.0.0", "22")
    start(hosts.vm, SERVER, "app", "0.0.0.0", "8080")
    assert hosts.cli("apply").returncode == 0
    outbound = start(hosts.vm, RELAY, "via-proxy", "4", "15001", user=PROXY_USER)
    inbound = start(hosts.vm, RELAY, "via-inbound", "4", "15006", "127.0.0.6", user=PROXY_USER)

    # outbound to the metadata address: direct
    assert connect(hosts.vm, "169.254.169.254", 80) == f"metadata saw {VM_IP}"
    # inbound SSH: direct; inbound to the app: through the inbound listener, which reaches the app from
    # the passthrough source 127.0.0.6 without being captured again
    assert connect(hosts.peer, VM_IP, 22) == f"sshd saw {PEER_IP}"
    assert connect(hosts.peer, VM_IP, 8080) == "via-inbound app saw 127.0.0.6"
    assert inbound.matching("CONN") == [f"CONN {VM_IP} 8080"]
    # an application calling its own VM address: local, not captured
    assert connect(hosts.vm, VM_IP, 8080) == "app saw " + VM_IP
    # the proxy calling the VM's own address is inbound traffic (the Istio case): to 15006
    assert connect(hosts.vm, VM_IP, 8080, user=PROXY_USER) == "via-inbound app saw 127.0.0.6"
    # loopback: never captured
    assert connect(hosts.vm, "127.0.0.1", 8080) == "app saw 127.0.0.1"
    assert outbound.matching("CONN") == []


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_apply_twice_adds_nothing_and_clean_restores_exactly(hosts: Hosts, backend: str) -> None:
    require_tool(f"iptables-{backend}-restore")
    vm = hosts.vm
    v4, v6 = f"iptables-{backend}", f"ip6tables-{backend}"
    # rules the operator had before: they must survive and stay behind our jumps' position
    vm.run([v4, "-t", "nat", "-A", "OUTPUT", "-d", "10.231.99.0/24", "-j", "RETURN"])
    vm.run(
        [
            v4,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "REDIRECT",
            "--to-ports",
            "22",
        ]
    )
    vm.run([v4, "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"])
    vm.run([v6, "-t", "nat", "-A", "OUTPUT", "-d", "fd99::/64", "-j", "RETURN"])
    hosts.write_config(f"capture:\n  proxy_user: {PROXY_USER}\n  backend: {backend}\n  dns: true\n")
    before = saves(vm, backend)

    assert hosts.cli("apply").returncode == 0
    once = saves(vm, backend)
    assert "VMAGENT_OUTPUT" in once[0] and "VMAGENT_OUTPUT" in once[1]
    nat = once[0].split("*nat", 1)[1].splitlines()
    assert next(line for line in nat if line.startswith("-A PREROUTING")).endswith("-j VMAGENT_INBOUND")
    assert next(line for line in nat if line.startswith("-A OUTPUT")).endswith("-j VMAGENT_OUTPUT")

    assert hosts.cli("apply").returncode == 0
    assert saves(vm, backend) == once

    shown = hosts.cli("show")
    assert shown.returncode == 0
    assert f"backend: {backend}" in shown.stdout and "ipv4: applied" in shown.stdout
    assert "-A VMAGENT_DNS -p udp -j REDIRECT --to-ports 15053" in shown.stdout

    cleaned = hosts.cli("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert saves(vm, backend) == before
    again = hosts.cli("clean")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert saves(vm, backend) == before
    assert "ipv4: not applied" in hosts.cli("show").stdout


@pytest.fixture(scope="session")
def path_without_nft(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH that finds every command of this machine but ``nft``: a host without nftables installed
    (many cloud images), while this one has it (scripts/system-deps.sh)."""
    bindir = tmp_path_factory.mktemp("bin-without-nft")
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bindir / entry.name
            if entry.name != "nft" and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    path = str(bindir)
    assert shutil.which("nft", path=path) is None and shutil.which("iptables-nft-restore", path=path)
    return path


@pytest.mark.parametrize("nft", ["installed", "not installed"])
def test_clean_on_a_host_without_a_nat_table_leaves_no_trace(
    hosts: Hosts, nft: str, path_without_nft: str
) -> None:
    """Exact on both kinds of host: capture never needs the nft binary. nft (always on this machine) is
    the test's inspector: ``nft list ruleset`` shows every table of every family, also ones iptables-save
    does not list."""
    inspector = require_tool("nft")
    path = None if nft == "installed" else path_without_nft

    def ruleset() -> str:
        return hosts.vm.run([inspector, "list", "ruleset"]).stdout

    before = saves(hosts.vm)
    assert "*nat" not in before[0] and "*nat" not in before[1]
    assert ruleset() == ""
    applied = hosts.cli("apply", path=path)
    assert applied.returncode == 0, applied.stderr
    assert "table ip nat" in ruleset() and "table ip6 nat" in ruleset()
    dry = hosts.cli("clean", "--dry-run", path=path)
    assert (
        "# then, when the nat table apply created is empty again, iptables-nft-restore --wait=10"
        in dry.stdout
    )
    cleaned = hosts.cli("clean", path=path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert saves(hosts.vm) == before
    assert ruleset() == ""


def test_dry_run_prints_the_restore_input_and_changes_nothing(hosts: Hosts) -> None:
    before = saves(hosts.vm)
    dry = hosts.cli("apply", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("# ipv4: iptables-nft-restore --noflush --wait=10\n*nat\n")
    assert f"--uid-owner {pwd.getpwnam(PROXY_USER).pw_uid} -j RETURN" in dry.stdout
    assert saves(hosts.vm) == before
    # the printed text is exactly what apply feeds: restored by hand, it gives the rules apply keeps
    hosts.vm.run(["iptables-nft-restore", "--noflush"], input=dry.stdout.split("# ipv6:", 1)[0])
    hosts.vm.run(["ip6tables-nft-restore", "--noflush"], input="#" + dry.stdout.split("# ipv6:", 1)[1])
    by_hand = saves(hosts.vm)
    assert "VMAGENT_OUTPUT" in by_hand[0] and "VMAGENT_OUTPUT" in by_hand[1]
    assert hosts.cli("apply").returncode == 0
    assert saves(hosts.vm) == by_hand
    # clean --dry-run changes nothing either; clean then restores the start exactly
    assert "-X VMAGENT_OUTPUT" in hosts.cli("clean", "--dry-run").stdout
    assert saves(hosts.vm) == by_hand
    assert hosts.cli("clean").returncode == 0
    assert saves(hosts.vm) == before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "capture:\n  exclude_inbound_ports: [22, 80, ab]\n",
            "capture.exclude_inbound_ports[2]: 'ab' is not a port number",
        ),
        (
            "capture:\n  backend: ebpf\n",
            "capture.backend: unknown backend 'ebpf' (expected auto, nft or legacy)",
        ),
        ("capture:\n  proxy_user: vmcap-no-such-user\n", "capture.proxy_user: user 'vmcap-no-such-user'"),
        (
            "capture:\n  exclude_outbound_cidrs: [10.0.0.300/8]\n",
            "'10.0.0.300/8' is not an IP address or CIDR",
        ),
    ],
)
def test_bad_config_is_a_clear_error_and_leaves_nothing(hosts: Hosts, config: str, message: str) -> None:
    before = saves(hosts.vm)
    hosts.write_config(config)
    result = hosts.cli("apply")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"vmagent: error: {hosts.config_dir / 'config.yaml'}: ")
    )
    assert message in result.stderr
    assert saves(hosts.vm) == before
    assert "VMAGENT" not in "".join(before)


def test_ipv6_failure_rolls_ipv4_back(hosts: Hosts) -> None:
    vm = hosts.vm
    vm.run(["iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "10.231.99.0/24", "-j", "RETURN"])
    before = saves(vm)
    manager, runner = hosts.manager()
    runner.sabotage.add("ip6tables-nft-restore")
    with pytest.raises(
        VmagentError, match=r"capture apply failed for ipv6: .* ipv4 rolled back, nothing was changed"
    ):
        manager.apply()
    assert saves(vm) == before
    assert not manager.is_applied()

    # and on a re-apply over an existing capture, the earlier rules come back as they were
    manager2, _ = hosts.manager(dns=True)
    manager2.apply()
    applied = saves(vm)
    manager3, runner3 = hosts.manager(exclude_outbound_ports=[5432])
    runner3.sabotage.add("ip6tables-nft-restore")
    with pytest.raises(VmagentError, match="ipv4 rolled back"):
        manager3.apply()
    assert saves(vm) == applied
    manager2.clean()
    assert saves(vm) == before
