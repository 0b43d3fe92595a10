"""MeshConfig access logs in a real Envoy with real traffic: one JSON line per request, with its status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2

from tests.harness import free_port, wait_for
from tests.integration.test_ads_support import (
    AdsHarness,
    Backend,
    Envoy,
    TestCa,
    demo_resources,
    envoy_bootstrap,
    get_via,
    start_ads,
    types_state,
)
from vmagent.controlplane.translate.accesslog import parse_access_log, with_access_logs
from vmagent.controlplane.xds.snapshot import Snapshot

NODE = "web-1.demo"
ALL_SYNCED = {"CDS": "synced", "EDS": "synced", "LDS": "synced", "RDS": "synced"}


class Proxy:
    def __init__(self, tmp: Path) -> None:
        self.ca = TestCa()
        self.ads: AdsHarness = start_ads(self.ca)
        self.backend = Backend("backend-one")
        cert, key = self.ca.workload("demo", "web").write(tmp, "web")
        root = tmp / "root.pem"
        root.write_bytes(self.ca.root_pem)
        self.listen_port = free_port()
        admin = free_port()
        self.envoy = Envoy(tmp, envoy_bootstrap(NODE, self.ads.port, cert, key, root, admin, "GRPC"), admin)

    def close(self) -> None:
        self.envoy.close()
        self.backend.close()
        self.ads.runner.stop()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(tmp_path)
    try:
        yield p
    finally:
        p.close()


def test_json_access_log_has_one_line_per_request(proxy: Proxy, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    settings = parse_access_log(
        {
            "accessLogFile": str(log_path),
            "accessLogEncoding": "JSON",
            "accessLogFormat": '{"code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%"}',
        },
        "test mesh config",
    )
    assert settings is not None
    msgs = demo_resources(proxy.listen_port, proxy.backend.port)
    listeners = {str(i): m for i, m in enumerate(msgs) if isinstance(m, listener_pb2.Listener)}
    logged = with_access_logs(listeners, settings)
    msgs = [logged.get(str(i), m) for i, m in enumerate(msgs)]
    proxy.ads.cache.set(NODE, Snapshot.from_messages(msgs))
    proxy.envoy.wait_ready()
    wait_for(lambda: types_state(proxy.ads.ads, NODE) == ALL_SYNCED, 20, what="all four types ACKed")

    def ok() -> bool:
        try:
            return get_via(proxy.listen_port)[0] == 200
        except OSError:
            return False

    wait_for(ok, 15, what="traffic through Envoy")
    sent = 1 + sum(1 for _ in range(4) if get_via(proxy.listen_port)[0] == 200)
    assert sent == 5

    def lines() -> list[dict[str, object]]:
        if not log_path.exists():
            return []
        return [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]

    # Envoy flushes file access logs about once a second; it writes %RESPONSE_CODE% as a JSON number.
    wait_for(
        lambda: len([e for e in lines() if str(e["code"]) == "200"]) >= sent, 20, what="access log lines"
    )
    ok_lines = [e for e in lines() if str(e["code"]) == "200"]
    assert len(ok_lines) == sent
    assert all(e["method"] == "GET" and str(e["path"]).startswith("/") for e in ok_lines)
