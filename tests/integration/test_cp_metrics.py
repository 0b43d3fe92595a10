"""``GET /metrics`` of a real ``vmagent-cp serve``: joins and refused tokens show up, promtool accepts it."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.cp_harness import ControlPlaneProcess, VmDirs, join
from tests.promtool import promtool_check, sample


def _metrics(cp: ControlPlaneProcess) -> str:
    r = requests.get(f"http://{cp.host}:{cp.http_port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_joins_and_refusals_are_counted(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web", uses=1)
    assert join(control_plane, VmDirs.under(tmp_path, "a"), tok["token"], tok["ca_hash"]).returncode == 0
    used = join(control_plane, VmDirs.under(tmp_path, "b"), tok["token"], tok["ca_hash"])
    assert used.returncode == 1
    forged = join(control_plane, VmDirs.under(tmp_path, "c"), tok["token"][:-4] + "AAAA", tok["ca_hash"])
    assert forged.returncode == 1

    text = _metrics(control_plane)
    assert sample(text, "citadel_server_csr_count_total", via="join") == 3
    assert sample(text, "citadel_server_success_cert_issuance_count_total", via="join") == 1
    assert sample(text, "vmagent_cp_cert_issuance_errors_total", via="join", code="unauthenticated") == 2
    assert sample(text, "vmagent_cp_join_token_refusals_total", reason="used_up") == 1
    assert sample(text, "vmagent_cp_join_token_refusals_total", reason="bad_signature") == 1
    assert sample(text, "pilot_xds") == 0
    assert sample(text, "vmagent_cp_config_objects") == 1  # the WorkloadGroup
    assert tok["token"] not in text
    promtool_check(text)
