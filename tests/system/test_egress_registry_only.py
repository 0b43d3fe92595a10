"""Egress under ``outboundTrafficPolicy: REGISTRY_ONLY``, proven by what reaches servers outside the mesh.

One lab for the module (prefix ``vmsec``, its own subnet): a control plane started with a mesh config
that sets REGISTRY_ONLY, the VM ``web``, and three plain hosts outside the mesh: ``ext`` (an echo server
registered as the MESH_EXTERNAL ServiceEntry ``ext.example.com`` with DNS resolution), ``blocked`` (an
echo server nobody registered) and ``dns``, the LAN's resolver: a fake DNS server on the address every
VM's resolv.conf names, answering both outside names. Applications' queries reach it through the
agent's DNS proxy (``dns.upstreams``), Envoy's own queries (for the STRICT_DNS cluster) directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.netns import LineLog, Netns
from vmagent.lab.wait import wait_for

EXTERNAL = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: demo}
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
"""


def _echo(host: Netns, name: str, port: int) -> None:
    app = host.popen([sys.executable, "-m", "vmagent.lab.echo", "--port", str(port), "--name", name])
    LineLog(app).wait_line("listening", timeout=10)


def _device_of(host: Netns) -> str:
    out = host.run(["ip", "-o", "-4", "addr", "show"]).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == host.address:
            return fields[1]
    raise AssertionError(f"no device with {host.address} in {host.name}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    workdir = Path(tmp_path_factory.mktemp("vmsec-egress"))
    mesh_config = workdir / "mesh.yaml"
    mesh_config.write_text("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
    lab = MeshLab(workdir, prefix="vmsec", subnet="10.230.21.0/24")
    try:
        lab.add_control_plane(
            {**DEMO_CONFIG, "15-ext.yaml": EXTERNAL}, extra_args=["--mesh-config", str(mesh_config)]
        )
        ext, blocked, dns = lab.add_host("ext"), lab.add_host("blocked"), lab.add_host("dns")
        _echo(ext, "ext", 80)
        _echo(blocked, "blocked", 80)
        _echo(blocked, "blocked-tcp", 9000)
        resolver = lab.lan_gateway()
        dns.add_address(_device_of(dns), f"{resolver}/{lab.lan.network.prefixlen}")
        records = [f"ext.example.com={ext.address}", f"blocked.example.com={blocked.address}"]
        cmd = [sys.executable, "-m", "tests.unit.test_dns_helpers", "--listen", resolver, "--port", "53"]
        cmd += [arg for r in records for arg in ("--record", r)]
        server = dns.popen(cmd, env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        LineLog(server).wait_line("fake upstream DNS", timeout=10)
        lab.add_host("probe")
        lab.add_vm("web", "demo/web", config={"dns": {"upstreams": [resolver]}})
        yield lab
    finally:
        lab.close()


def _curl(vm: VmHost, url: str) -> tuple[int, dict[str, object] | None]:
    r = vm.curl(url, timeout=5)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body)
    except ValueError:
        return int(code or 0), None


def _probe_count(mesh: MeshLab, url: str) -> int:
    """The request number the outside server gives a direct request from ``probe`` (outside the mesh)."""
    r = mesh.hosts["probe"].run(["curl", "-s", "--max-time", "3", url], check=False)
    return int(json.loads(r.stdout)["n"])


def _stat(vm: VmHost, name: str) -> int:
    for line in vm.envoy_admin("/stats?filter=" + name).splitlines():
        key, _, value = line.partition(": ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def test_mesh_external_service_entry_reaches_the_outside_server(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    stat = "cluster.outbound|80||ext.example.com.upstream_rq_completed"
    before = _stat(web, stat)
    doc = mesh.wait_reachable(web, "http://ext.example.com/hello")
    assert doc["name"] == "ext" and doc["path"] == "/hello"
    assert doc["headers"]["host"] == "ext.example.com"
    assert "x-forwarded-client-cert" not in doc["headers"], "no mesh TLS towards a MESH_EXTERNAL host"
    wait_for(lambda: _stat(web, stat) > before, timeout=5, what="web's Envoy to count the request to ext")


def test_registry_only_blocks_an_unregistered_host(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    blocked = mesh.hosts["blocked"]
    mesh.wait_reachable(web, "http://ext.example.com/ready")  # the VM is up and resolving outside names
    http_url, tcp_url = f"http://{blocked.address}/", f"http://{blocked.address}:9000/"
    first_http, first_tcp = _probe_count(mesh, http_url), _probe_count(mesh, tcp_url)

    code, _ = _curl(web, "http://blocked.example.com/")
    assert code == 502, "an HTTP request to a host outside the registry must be refused by the sidecar"
    code, _ = _curl(web, f"http://{blocked.address}/direct-ip")
    assert code == 502
    code, _ = _curl(web, "http://blocked.example.com:9000/")
    assert code == 0, "a connection on a port nobody registered must be closed (BlackHoleCluster)"
    assert _stat(web, "cluster.BlackHoleCluster.upstream_cx_none_healthy") >= 1

    # The servers are up and saw none of it: the next direct request from outside is the next number.
    assert _probe_count(mesh, http_url) == first_http + 1
    assert _probe_count(mesh, tcp_url) == first_tcp + 1
