"""A VM cut from the control plane (issue 13 item 4, docs/reliability.md "Partition").

Two VMs, web (client) and api; the control plane issues short certificates (``--cert-ttl``, 30 s in
``make test``). web is cut from the control plane by iptables DROP rules in its namespace (both
directions, the control plane's address only: the LAN to api stays up), for ``VMAGENT_PARTITION_SECONDS``
(12 s in ``make test``, ``make chaos`` runs the issue's 300 s; the certificate lifetime is twice that,
at least 30 s) and at least until two renewals failed. Promised and asserted:

* while its certificate is valid, web's traffic to api keeps flowing: a 250 req/s loop through the
  partition fails no request;
* renewal fails, is retried with backoff (the failures and the error show in ``vmagent status``) and
  succeeds by itself once the partition heals;
* cut off until its certificate expired, web says so in ``vmagent status`` (EXPIRED, with the command
  that fixes it) and recovers with a new token and ``vmagent join --rejoin`` (the operator's steps in
  docs/reliability.md), after which its traffic flows again.

The figures (requests, failures, renewal attempts, seconds) are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from tests.system.demo_mesh import API_URL as URL
from tests.system.demo_mesh import web_and_api_mesh
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

PARTITION = float(os.environ.get("VMAGENT_PARTITION_SECONDS", "12"))
CERT_TTL = max(30, int(2 * PARTITION))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    require_tool("iptables")
    root = tmp_path_factory.mktemp("partition")
    with web_and_api_mesh(root, "vmpt", "10.230.44.0/24", cp_args=["--cert-ttl", f"{CERT_TTL}s"]) as lab:
        yield lab


def partition(mesh: MeshLab, vm: VmHost, on: bool) -> None:
    """Drop everything between ``vm`` and the control plane's address, in ``vm``'s namespace."""
    assert mesh.cp is not None
    op = "-I" if on else "-D"
    vm.ns.run(["iptables", op, "OUTPUT", "-d", mesh.cp.address, "-j", "DROP"])
    vm.ns.run(["iptables", op, "INPUT", "-s", mesh.cp.address, "-j", "DROP"])


def identity(vm: VmHost) -> dict[str, Any]:
    ident: dict[str, Any] = vm.status()["identity"]
    return ident


def test_traffic_flows_through_a_partition_and_renewal_recovers_after_it(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    # Start the cut with a fresh certificate: wait for a renewal (every ~half lifetime).
    first = identity(web)["serial"]
    wait_for(lambda: identity(web)["serial"] != first, timeout=CERT_TTL + 30, what="a renewal on web")
    before = identity(web)
    figures: dict[str, Any] = {"cert_ttl_s": CERT_TTL}

    def cut_then_heal() -> None:
        partition(mesh, web, True)
        cut = time.monotonic()
        try:
            # Cut for PARTITION seconds (the fault's length) and until two renewals failed.
            time.sleep(PARTITION)
            failed = wait_for(
                lambda: (i := identity(web))["last_rotation_error"] and i["serial"] == before["serial"] and i,
                timeout=CERT_TTL,
                what="a failed renewal on web",
            )
            figures["renewal_error"] = failed["last_rotation_error"]
            retried = failed["next_rotation"]
            wait_for(
                lambda: identity(web)["next_rotation"] != retried, timeout=CERT_TTL, what="a renewal retry"
            )
            figures["partition_s"] = round(time.monotonic() - cut, 1)
        finally:
            partition(mesh, web, False)
        healed = time.monotonic()
        renewed = wait_for(
            lambda: (i := identity(web))["serial"] != before["serial"] and not i["last_rotation_error"] and i,
            timeout=CERT_TTL,
            what="the renewal after the partition",
        )
        figures["renewed_after_heal_s"] = round(time.monotonic() - healed, 1)
        assert not renewed["expired"]

    report = web.run_loop(URL, cut_then_heal, duration=PARTITION + CERT_TTL, label="partition: loop")
    print(
        f"web cut from the control plane for {figures['partition_s']} s (certificates of {CERT_TTL} s): "
        f"{report['sent']} requests, {report['failed']} failed; {json.dumps(figures)}"
    )
    assert report["rate_per_s"] >= 200, report
    assert report["failed"] == 0, report
    assert figures["renewal_error"], figures


def test_a_certificate_expired_during_a_partition_is_reported_and_fixed_by_rejoin(mesh: MeshLab) -> None:
    assert mesh.cp is not None
    web = mesh.vms["web"]
    partition(mesh, web, True)
    try:
        wait_for(lambda: identity(web)["expired"], timeout=CERT_TTL * 1.2 + 30, what="web's cert to expire")
    finally:
        partition(mesh, web, False)
    # Healed, but too late: the control plane refuses to renew an expired certificate.
    doc = web.status()
    assert doc["ready"] is False and doc["ready_reason"].startswith("the workload certificate expired at"), (
        doc
    )
    text = web.vmagent("status", *web.dirs(), check=False)
    assert text.returncode == 1
    assert "(EXPIRED: get a new token and run `vmagent join --rejoin`)" in text.stdout, text.stdout
    print(f"\n`vmagent status` of the expired VM:\n{text.stdout}")
    # (No assertion on traffic here: upstream connections web's Envoy opened before the expiry stay up;
    # only new TLS handshakes with the expired certificate are refused.)

    # The operator's steps (docs/reliability.md): a new token on the control plane, `join --rejoin`
    # on the VM, then the agent restarts (systemd: `join --rejoin` restarts vmagent.service).
    # The lab stops the agent first: with 30 s certificates, the new one must not age during the stop.
    mesh.stop_agent(web)
    tok = mesh.cp.token("demo/web")
    web.vmagent(
        "join", mesh.cp.join_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"],
        "--address", web.address, *web.dirs(), "--rejoin", "--no-start",
    )  # fmt: skip
    # Ready may take up to about a minute: the control plane can still hold the old certificate's ADS
    # stream, half-open since the partition, until its keepalive (30 s + 10 s) drops it; until then the
    # new certificate's stream is refused (one live owner per proxy) and the agent retries with backoff.
    restarted = time.monotonic()
    mesh.start_agent(web, timeout=150)
    print(f"rejoined agent ready {time.monotonic() - restarted:.1f} s after its start")
    doc = web.status()
    assert doc["ready"] is True and doc["identity"]["expired"] is False, doc
    answer = mesh.wait_reachable(web, URL, timeout=60)
    assert answer["name"] == "api"
    workloads = [w for w in mesh.cp.api("/api/v1/workloads") if w["name"] == f"web-{web.address}"]
    assert len(workloads) == 1, workloads
