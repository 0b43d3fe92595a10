"""`vmagent-cp proxy-status` against a loopback HTTP API serving the ADS server's real status list."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.rpc import status_pb2

from tests.harness import free_port
from vmagent.cli.common import build_parser, run_cli
from vmagent.controlplane.xds.snapshot import CLUSTER, LISTENER, Snapshot
from vmagent.controlplane.xds.status import StatusRegistry
from vmagent.controlplane.xds.stream import SotwStream


def cli(argv: list[str]) -> int:
    parser = build_parser("vmagent-cp", "test", ["vmagent.cli.cp_proxy_status"])
    return run_cli("vmagent-cp", parser, argv)


def serve_json(get: Callable[[], Any]) -> tuple[str, Callable[[], None]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/api/v1/proxies":
                self.send_error(404)
                return
            body = json.dumps(get()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close() -> None:
        srv.shutdown()
        srv.server_close()

    return f"http://127.0.0.1:{srv.server_address[1]}", close


@pytest.fixture
def api() -> Iterator[tuple[str, StatusRegistry]]:
    """Two proxies: web synced on CDS and LDS; api has CDS NACKed with an Envoy-style message."""
    reg = StatusRegistry()
    counter = itertools.count(1)
    snap = Snapshot.from_messages([cluster_pb2.Cluster(name="outbound|8080||api.demo.svc.cluster.local")])
    for name in ("web", "api"):
        st = reg.open_stream(
            f"demo/{name}-1", f"{name}-1", f"spiffe://cluster.local/ns/demo/sa/{name}", "sotw", "x"
        )
        m = SotwStream(st, lambda: f"n{next(counter)}")
        for t in (CLUSTER, LISTENER):
            (resp,) = m.on_request(d.DiscoveryRequest(type_url=t), snap)
            reply = d.DiscoveryRequest(type_url=t, version_info=resp.version_info, response_nonce=resp.nonce)
            if name == "api" and t == CLUSTER:
                reply.error_detail.CopyFrom(
                    status_pb2.Status(code=13, message="Proto constraint validation failed")
                )
            m.on_request(reply, snap)
    url, close = serve_json(reg.status)
    try:
        yield url, reg
    finally:
        close()


def test_text_table_shows_states_and_envoys_error(
    api: tuple[str, StatusRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = api
    assert cli(["proxy-status", "--server", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PROXY", "IDENTITY", "PROTOCOL", "CONNECTED", "CDS", "LDS", "EDS", "RDS", "SDS"]
    rows = {line.split()[0]: line.split() for line in out[1:3]}
    assert rows["demo/web-1"][1] == "spiffe://cluster.local/ns/demo/sa/web"
    assert rows["demo/web-1"][4:] == ["SYNCED", "SYNCED", "-", "-", "-"]
    assert rows["demo/api-1"][4:] == ["NACKED", "SYNCED", "-", "-", "-"]
    assert out[-2] == "NACKs:"
    assert out[-1].startswith("  demo/api-1 CDS rejected version ")
    assert out[-1].endswith("(running none): Proto constraint validation failed")


def test_json_output_is_the_api_list(
    api: tuple[str, StatusRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    url, reg = api
    assert cli(["proxy-status", "-o", "json", "--server", url]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == reg.status()
    assert got[0]["types"]["CDS"]["state"] == "nacked"
    assert got[0]["types"]["CDS"]["error"] == "Proto constraint validation failed"


def test_unreachable_control_plane_is_one_actionable_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["proxy-status", "--server", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("vmagent-cp: error: cannot reach the control plane at http://127.0.0.1:")
    assert err[0].endswith("is vmagent-cp serve running?")
