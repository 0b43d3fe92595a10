"""The ingress gateway end to end: a VM in gateway mode serves HTTPS for its SNI host and plain HTTP,
routes to the api VM over mutual TLS, and a client outside the mesh (no agent) sees the api's answer.

The gateway VM joins with ``vmagent join --gateway``; its certificate for shop.example.com is a
self-signed one written to the gateway VM's disk (key 0600, root), served to Envoy by the agent's SDS.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool, wait_for
from tests.integration.test_gateway_sds import self_signed
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.netns import Netns

GW_ID = "spiffe://cluster.local/ns/edge/sa/ingress"
HOST = "shop.example.com"

GW_GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ingress
  namespace: edge
spec:
  metadata:
    labels:
      istio: ingressgateway
  template:
    serviceAccount: ingress
"""


def gateway_yaml(cert: Path, key: Path) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: shop
  namespace: edge
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 8443, name: https-shop, protocol: HTTPS}}
    hosts: ["demo/{HOST}"]
    tls:
      mode: SIMPLE
      serverCertificate: {cert}
      privateKey: {key}
  - port: {{number: 8080, name: http-shop, protocol: HTTP}}
    hosts: ["{HOST}"]
  - port: {{number: 80, name: http-priv, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: demo
spec:
  hosts: ["{HOST}"]
  gateways: ["edge/shop"]
  http:
  - route:
    - destination:
        host: api.demo.svc.cluster.local
        port: {{number: 8080}}
"""


@dataclass
class GatewayLab:
    lab: MeshLab
    gw: VmHost
    client: Netns
    cert: Path
    key: Path
    ca_file: Path  # the client's copy of the (self-signed) certificate


def _install_cert(cert_path: Path, key_path: Path, ca_copy: Path) -> None:
    cert, key = self_signed(HOST)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(key)
    cert_path.write_bytes(cert)
    ca_copy.write_bytes(cert)


@pytest.fixture(scope="module")
def gwlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayLab]:
    require_root()
    require_tool("curl")
    work = Path(tmp_path_factory.mktemp("gateway"))
    lab = MeshLab(work, prefix="vmgw", subnet="10.230.40.0/24")
    try:
        cp = lab.add_control_plane({**DEMO_CONFIG, "15-ingress-group.yaml": GW_GROUP})
        lab.add_vm("api", "demo/api")
        gw = lab.add_vm("gw", "edge/ingress", app_port=None, start=False)
        tok = cp.token("edge/ingress")
        r = gw.vmagent(
            "join", cp.join_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"], *gw.dirs(),
            "--no-start", "--gateway",
        )  # fmt: skip
        assert "gateway mode on" in r.stdout
        lab.start_agent(gw)
        client = lab.add_host("client")
        certs = gw.config_dir / "certs"
        cert, key = certs / f"{HOST}.crt", certs / f"{HOST}.key"
        ca_file = work / "client-ca.pem"
        _install_cert(cert, key, ca_file)
        cp.write_config("30-gateway.yaml", gateway_yaml(cert, key))
        yield GatewayLab(lab, gw, client, cert, key, ca_file)
    finally:
        lab.close()


def _curl(g: GatewayLab, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", *args]
    return g.client.run(cmd, check=False, timeout=15)


def _https(g: GatewayLab, sni: str = HOST, *extra: str) -> subprocess.CompletedProcess[str]:
    return _curl(
        g, "--resolve", f"{sni}:8443:{g.gw.address}", "--cacert", str(g.ca_file), *extra,
        f"https://{sni}:8443/hello",
    )  # fmt: skip


def _answer(r: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, object] | None]:
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body)
    except ValueError:
        return int(code or 0), None


def _wait_200(g: GatewayLab, attempt: object, what: str) -> dict[str, object]:
    def ok() -> dict[str, object] | None:
        code, doc = _answer(attempt())  # type: ignore[operator]
        return doc if code == 200 and doc else None

    result: dict[str, object] = wait_for(ok, timeout=30, interval=0.2, what=what)
    return result


def test_gateway_proxy_runs_in_gateway_mode_without_capture(gwlab: GatewayLab) -> None:
    status = gwlab.gw.status()
    assert status["capture"]["enabled"] is False
    # Through `vmagent envoy-admin` (root, the admin socket in the runtime directory): no TCP admin port.
    gw = gwlab.gw
    dump = gw.vmagent(
        "envoy-admin",
        "/server_info",
        "--config-dir",
        str(gw.config_dir),
        "--runtime-dir",
        str(gw.runtime_dir),
    ).stdout
    assert json.loads(dump)["node"]["id"].startswith(f"router~{gwlab.gw.address}~")


def test_https_for_the_sni_host_reaches_api_with_the_gateway_identity(gwlab: GatewayLab) -> None:
    doc = _wait_200(gwlab, lambda: _https(gwlab), f"https://{HOST}:8443 through the gateway")
    assert doc["name"] == "api"
    headers = doc["headers"]
    assert isinstance(headers, dict)
    xfcc = str(headers["x-forwarded-client-cert"])
    assert f"URI={GW_ID}" in xfcc  # the gateway -> api hop is mutual TLS with the gateway's identity
    # the certificate the client verified is the operator's, for the SNI host
    r = _https(gwlab, HOST, "-v")
    assert f"subject: CN={HOST}" in r.stderr


def test_a_wrong_sni_gets_no_answer(gwlab: GatewayLab) -> None:
    _wait_200(gwlab, lambda: _https(gwlab), "the gateway to serve HTTPS")
    r = _https(gwlab, "other.example.com", "-k")
    code, _ = _answer(r)
    assert code == 0 and r.returncode != 0, (r.returncode, r.stdout)
    # No SNI at all (connecting by address) matches no chain either.
    r = _curl(gwlab, "-k", f"https://{gwlab.gw.address}:8443/hello")
    assert _answer(r)[0] == 0 and r.returncode != 0


def test_plain_http_server_routes_by_host(gwlab: GatewayLab) -> None:
    url = f"http://{gwlab.gw.address}:8080/hello"
    doc = _wait_200(gwlab, lambda: _curl(gwlab, "-H", f"Host: {HOST}", url), "plain HTTP through the gateway")
    assert doc["name"] == "api"
    code, _ = _answer(_curl(gwlab, "-H", "Host: nobody.example.com", url))
    assert code == 404


def test_privileged_port_80_is_served_by_the_unprivileged_proxy_user(gwlab: GatewayLab) -> None:
    """Envoy runs as vmagent-proxy; in gateway mode it gets CAP_NET_BIND_SERVICE to listen on port 80."""
    url = f"http://{gwlab.gw.address}:80/hello"
    doc = _wait_200(gwlab, lambda: _curl(gwlab, "-H", f"Host: {HOST}", url), "plain HTTP on port 80")
    assert doc["name"] == "api"
    pid = gwlab.gw.status()["envoy"]["pid"]
    uid_line = next(
        ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:")
    )
    assert uid_line.split()[1] != "0", "Envoy must not run as root"


def test_a_replaced_certificate_is_served_without_a_restart(gwlab: GatewayLab) -> None:
    _wait_200(gwlab, lambda: _https(gwlab), "the gateway to serve HTTPS")
    pid = gwlab.gw.status()["envoy"]["pid"]
    old_ca = gwlab.ca_file.read_bytes()
    _install_cert(gwlab.cert, gwlab.key, gwlab.ca_file)
    assert gwlab.ca_file.read_bytes() != old_ca
    doc = _wait_200(gwlab, lambda: _https(gwlab), "the renewed certificate to be served")
    assert doc["name"] == "api"
    assert gwlab.gw.status()["envoy"]["pid"] == pid
