"""The demo mesh end to end: namespaces joined by a bridge, a real control plane, two VMs with agents,
Envoy and iptables capture, an unmodified client running as an ordinary user."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import require_root, require_tool
from tests.promtool import promtool_check, sample
from vmagent.lab.demo_config import DEMO_CONFIG, STRICT_API
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API_URL = "http://api.demo.svc.cluster.local:8080/hello"
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    lab = MeshLab(Path(tmp_path_factory.mktemp("mesh")), prefix="vme2e", subnet="10.230.1.0/24")
    try:
        lab.add_control_plane(DEMO_CONFIG)
        lab.add_vm("web", "demo/web")
        lab.add_vm("api", "demo/api")
        lab.add_host("outside")
        yield lab
    finally:
        lab.close()


def _get(vm: VmHost, url: str) -> tuple[int, dict[str, object] | None]:
    r = vm.curl(url)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body)
    except ValueError:
        return int(code or 0), None


def _envoy_stat(vm: VmHost, name: str) -> int:
    out = vm.envoy_admin("/stats?filter=" + name)
    total = 0
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if key == name and value.strip().isdigit():
            total += int(value)
    return total


def test_mesh_name_resolves_through_the_agent(mesh: MeshLab) -> None:
    web, api = mesh.vms["web"], mesh.vms["api"]
    r = wait_for(
        lambda: (
            (
                out := web.ns.run(
                    ["getent", "hosts", "api.demo.svc.cluster.local"], user="nobody", check=False
                )
            ).returncode
            == 0
            and out
        ),
        timeout=20,
        what="api.demo.svc.cluster.local to resolve on web",
    )
    assert r.stdout.split()[0] == api.address


def test_unmodified_client_reaches_api_by_name_with_web_identity(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    cluster_stat = "cluster.outbound|8080||api.demo.svc.cluster.local.upstream_rq_completed"
    before = _envoy_stat(web, cluster_stat)
    doc = mesh.wait_reachable(web, API_URL)
    assert doc["name"] == "api"
    xfcc = str(doc["headers"]["x-forwarded-client-cert"])  # type: ignore[index]
    assert f"URI={WEB_ID}" in xfcc
    assert "By=spiffe://cluster.local/ns/demo/sa/api" in xfcc
    wait_for(
        lambda: _envoy_stat(web, cluster_stat) > before, timeout=5, what="web's Envoy to count the request"
    )


def test_peer_authentication_strict_refuses_plaintext_from_outside(mesh: MeshLab) -> None:
    assert mesh.cp is not None
    api, web = mesh.vms["api"], mesh.vms["web"]
    outside = mesh.hosts["outside"]
    direct = f"http://{api.address}:8080/plain"

    def outside_status() -> int:
        r = outside.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", direct], check=False
        )
        return int(r.stdout or 0)

    # PERMISSIVE (the default): a plaintext client outside the mesh gets through.
    wait_for(
        lambda: outside_status() == 200, timeout=20, what="plaintext from outside to pass under PERMISSIVE"
    )
    path = mesh.cp.write_config("30-strict-api.yaml", STRICT_API)
    try:
        wait_for(lambda: outside_status() == 0, timeout=20, what="STRICT to refuse plaintext from outside")
        code, doc = _get(web, API_URL)
        assert code == 200 and doc is not None, "mesh traffic must still pass under STRICT"
    finally:
        path.unlink()
    wait_for(lambda: outside_status() == 200, timeout=20, what="PERMISSIVE again after removing STRICT")


def test_proxy_status_shows_both_proxies_synced(mesh: MeshLab) -> None:
    assert mesh.cp is not None

    def synced() -> list[dict[str, object]] | None:
        r = mesh.cp.cli("proxy-status", "-o", "json", "--server", mesh.cp.http, check=False)
        doc = json.loads(r.stdout or "[]")
        ok = [p for p in doc if p.get("state") == "synced"]
        return ok if len(ok) >= 2 else None

    proxies = wait_for(synced, timeout=20, what="two synced proxies")
    identities = sorted(str(p["identity"]) for p in proxies)
    assert identities == ["spiffe://cluster.local/ns/demo/sa/api", WEB_ID]


def _cp_metric(mesh: MeshLab, name: str) -> float | None:
    assert mesh.cp is not None
    text = mesh.cp.ns.run(["curl", "-sf", mesh.cp.http + "/metrics"], check=False).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_invalid_edit_keeps_the_last_good_config_and_is_reported(mesh: MeshLab) -> None:
    assert mesh.cp is not None
    web = mesh.vms["web"]
    services = mesh.cp.config_dir / "20-services.yaml"
    good = services.read_text()
    assert _cp_metric(mesh, "pilot_xds") == 2
    services.write_text(good.replace("protocol: HTTP", "protocol: HTTQ", 1))
    try:
        wait_for(
            lambda: _cp_metric(mesh, "vmagent_cp_config_errors") == 1,
            timeout=10,
            what="the error in /metrics",
        )
        errors = mesh.cp.api("/api/v1/config/errors")
        assert any("20-services.yaml" in e and "HTTQ" in e for e in errors), errors
        assert any("20-services.yaml" in ln and "HTTQ" in ln for ln in mesh.cp.log.lines)  # type: ignore[union-attr]
        code, doc = _get(web, API_URL)
        assert code == 200 and doc is not None and doc["name"] == "api", (
            "the last good version must stay in force"
        )
    finally:
        services.write_text(good)
    wait_for(lambda: _cp_metric(mesh, "vmagent_cp_config_errors") == 0, timeout=10, what="the error to clear")


def test_control_plane_metrics_reflect_the_two_vms(mesh: MeshLab) -> None:
    """Two joined, registered VMs in sync: the CP's /metrics says so, and promtool accepts it."""
    assert mesh.cp is not None
    cp = mesh.cp

    def scrape() -> str:
        return cp.ns.run(["curl", "-sf", cp.http + "/metrics"], check=False).stdout

    def both_in_sync(text: str) -> bool:
        return (
            sample(text, "pilot_xds") == 2
            and sample(text, "vmagent_cp_workloads", health="healthy", connected="true") == 2
        )

    # a config edit just before may still be settling: wait for both in sync
    text = wait_for(
        lambda: (t := scrape()) and both_in_sync(t) and t, timeout=60, what="both VMs in /metrics"
    )
    assert isinstance(text, str)
    for xds_type in ("CDS", "EDS", "LDS", "RDS"):
        assert (sample(text, "pilot_xds_pushes_total", type=xds_type) or 0) >= 2, xds_type
        assert (sample(text, "pilot_proxy_convergence_time_count", type=xds_type) or 0) >= 2, xds_type
    assert (sample(text, "citadel_server_success_cert_issuance_count_total", via="join") or 0) >= 2
    assert (sample(text, "vmagent_cp_registrations_total", result="accepted") or 0) >= 2
    # the lab's control plane issues with the default 24 h lifetime: both certificates count
    assert sample(text, "vmagent_cp_workload_certs_expiring_24h") == 2
    expiries = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vmagent_cp_workload_cert_expiry_timestamp_seconds"
    ]
    assert len(expiries) == 2 and all(time.time() + 3600 < v <= time.time() + 86400 for v in expiries)
    promtool_check(text)


def test_revoked_workload_loses_its_xds_stream(mesh: MeshLab) -> None:
    """Runs last in this module: it leaves api unable to reach the control plane."""
    assert mesh.cp is not None
    api_id = "spiffe://cluster.local/ns/demo/sa/api"
    mesh.cp.cli("revoke", "--identity", api_id, "--state-dir", str(mesh.cp.state_dir))

    def api_gone() -> bool:
        r = mesh.cp.cli("proxy-status", "-o", "json", "--server", mesh.cp.http, check=False)
        return api_id not in [p.get("identity") for p in json.loads(r.stdout or "[]")]

    wait_for(api_gone, timeout=15, what="the revoked api proxy to be disconnected")
    # Its reconnects are refused, and the agent says why.
    api = mesh.vms["api"]

    def reason() -> str | None:
        err = str(api.status().get("control_plane", {}).get("last_error") or "")
        return err if "revoked" in err else None

    assert "revoked" in wait_for(reason, timeout=20, what="api's status to show the revocation")
    assert api_gone()
