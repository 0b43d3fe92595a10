"""`vmagent-cp workloads` against the control plane's HTTP API serving a real WorkloadStore, filled by
real agents registering over mutual TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port, wait_for
from tests.integration.test_registration import FAST, Agents, ControlPlane
from vmagent.cli.common import build_parser, run_cli
from vmagent.controlplane.web import HttpApi


def cli(argv: list[str]) -> int:
    parser = build_parser("vmagent-cp", "test", ["vmagent.cli.cp_workloads"])
    return run_cli("vmagent-cp", parser, argv)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[str, ControlPlane]]:
    """Two api workloads: 10.0.0.1 healthy and connected, 2001:db8::2 unhealthy and disconnected."""
    cp = ControlPlane(tmp_path, FAST)
    api = HttpApi(f"127.0.0.1:{free_port()}")
    api.add_json("/api/v1/workloads", cp.store.workloads_json)
    api.start()
    agents = Agents(cp)
    try:
        one = agents.start("10.0.0.1")
        two = agents.start("2001:db8::2")
        wait_for(lambda: one.connected and two.connected, 10, what="registrations")
        one.set_health(True, "HTTP GET http://localhost:8080/: 200 OK")
        two.set_health(False, "HTTP GET http://localhost:8080/: 503 Service Unavailable")
        wait_for(lambda: one.health_acked and two.health_acked, 10, what="health acks")
        two.stop()
        wait_for(lambda: cp.servicer.stream_count == 1, 10, what="the second agent to disconnect")
        yield f"http://127.0.0.1:{api.port}", cp
    finally:
        agents.close()
        api.stop()
        cp.stop()


def test_text_table_shows_health_connection_and_why(
    mesh: tuple[str, ControlPlane], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _cp = mesh
    assert cli(["workloads", "--server", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["WORKLOAD", "GROUP", "ADDRESS", "HEALTH", "EDS", "CONNECTED", "CERT", "EXPIRY"]
    rows = {line.split()[0]: line.split() for line in out[1:3]}
    assert rows["demo/api-10.0.0.1"][1:6] == ["demo/api", "10.0.0.1", "healthy", "in", "yes"]
    assert rows["demo/api-2001-db8--2"][1:6] == ["demo/api", "2001:db8::2", "unhealthy", "in", "no"]
    assert "demo/api-2001-db8--2: HTTP GET http://localhost:8080/: 503 Service Unavailable" in out
    assert any(line.startswith("demo/api-2001-db8--2: deleted at ") for line in out)


def test_json_output_is_the_api_list(
    mesh: tuple[str, ControlPlane], capsys: pytest.CaptureFixture[str]
) -> None:
    url, cp = mesh
    assert cli(["workloads", "-o", "json", "--server", url]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [w["name"] for w in got] == ["api-10.0.0.1", "api-2001-db8--2"]
    first, second = got
    assert (first["health"], first["connected"], first["in_eds"], first["delete_at"]) == (
        "healthy",
        True,
        True,
        None,
    )
    assert (second["health"], second["connected"]) == ("unhealthy", False)
    assert second["disconnected_at"] is not None and second["delete_at"] is not None
    assert first["spiffe_id"] == "spiffe://cluster.local/ns/demo/sa/api-sa"
    assert len(first["cert_serial"]) > 8 and first["cert_expiry"].endswith("+00:00")
    # Same content as the store, except for fields that move with time (heartbeats).
    live = cp.store.workloads_json()
    for w in (*got, *live):
        w.pop("last_heartbeat_at")
    assert got == live


def test_unreachable_control_plane_is_one_actionable_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["workloads", "--server", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("is vmagent-cp serve running?")
