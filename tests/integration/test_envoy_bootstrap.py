"""The rendered bootstrap, checked by Envoy itself, and the errors a user sees for a broken set-up."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port, wait_for
from vmagent.agent.envoy_admin import admin_request, prepare_admin_dir
from vmagent.agent.envoy_bootstrap import (
    BootstrapParams,
    find_envoy_binary,
    render_bootstrap,
    validate_bootstrap,
    write_bootstrap,
)
from vmagent.agent.envoy_process import EnvoySupervisor
from vmagent.agent.envoy_runtime import lookup_proxy_user, prepare_runtime_dir
from vmagent.common.errors import CommandError, VmagentError


def _params(runtime: Path, **kw: object) -> BootstrapParams:
    base: dict[str, object] = {
        "node_ip": "10.1.2.3",
        "name": "vm-7",
        "namespace": "shop",
        "xds_socket": runtime / "xds.sock",
        "sds_socket": runtime / "sds.sock",
        "labels": {"app": "cart", "version": "v1"},
        "network": "vpc-1",
        "workload_name": "cart",
    }
    base.update(kw)
    return BootstrapParams(**base)  # type: ignore[arg-type]


@pytest.fixture
def runtime() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vma-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rendered_bootstrap_passes_envoy_validate(runtime: Path) -> None:
    path = runtime / "envoy.json"
    write_bootstrap(path, render_bootstrap(_params(runtime)))
    validate_bootstrap(find_envoy_binary(), path)
    doc = json.loads(path.read_text())
    assert doc["node"]["id"] == "sidecar~10.1.2.3~vm-7.shop~shop.svc.cluster.local"
    md = doc["node"]["metadata"]
    assert (md["NAMESPACE"], md["WORKLOAD_NAME"], md["NETWORK"], md["LABELS"]) == (
        "shop",
        "cart",
        "vpc-1",
        {"app": "cart", "version": "v1"},
    )
    ads = doc["dynamic_resources"]["ads_config"]
    assert (ads["api_type"], ads["transport_api_version"], ads["set_node_on_first_message_only"]) == (
        "GRPC",
        "V3",
        True,
    )
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    pipe = clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert pipe == {"pipe": {"path": str(runtime / "sds.sock")}}
    # The admin API is a Unix socket (0660: root and the proxy user), never a TCP port; the Prometheus
    # listener reaches it over the same socket.
    admin_sock = str(runtime / "envoy" / "admin.sock")
    assert doc["admin"]["address"] == {"pipe": {"path": admin_sock, "mode": 0o660}}
    stats = clusters["prometheus_stats"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert stats["endpoint"]["address"] == {"pipe": {"path": admin_sock}}
    ports = {
        lst["name"]: lst["address"]["socket_address"]["port_value"]
        for lst in doc["static_resources"]["listeners"]
    }
    assert ports == {"prometheus": 15090, "readiness": 15021}


def test_delta_bootstrap_passes_envoy_validate(runtime: Path) -> None:
    path = runtime / "envoy.json"
    write_bootstrap(path, render_bootstrap(_params(runtime, delta_xds=True, locality={"region": "eu"})))
    validate_bootstrap(find_envoy_binary(), path)


def test_envoy_rejects_a_broken_bootstrap(runtime: Path) -> None:
    doc = render_bootstrap(_params(runtime))
    doc["static_resources"]["clusters"][0]["type"] = "NO_SUCH_TYPE"
    path = runtime / "envoy.json"
    write_bootstrap(path, doc)
    with pytest.raises(CommandError, match="status"):
        validate_bootstrap(find_envoy_binary(), path)


def test_missing_envoy_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "envoy"
    with pytest.raises(VmagentError, match=f"Envoy binary {missing} does not exist"):
        find_envoy_binary(missing)
    with pytest.raises(VmagentError, match=f"Envoy binary {missing} does not exist"):
        EnvoySupervisor(missing, tmp_path / "b.json", None, tmp_path / "admin.sock")


def test_uncreatable_runtime_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(VmagentError, match=f"cannot create runtime directory {blocker}/run: .*--runtime-dir"):
        prepare_runtime_dir(blocker / "run", None)


def test_unknown_proxy_user_is_a_clear_error() -> None:
    with pytest.raises(VmagentError, match="system user 'no-such-proxy-user' does not exist"):
        lookup_proxy_user("no-such-proxy-user")


def test_runtime_dir_is_private_without_a_proxy_group(tmp_path: Path) -> None:
    d = prepare_runtime_dir(tmp_path / "run", None)
    assert d.stat().st_mode & 0o777 == 0o700


def test_several_envoys_run_side_by_side_and_stop_cleanly(runtime: Path) -> None:
    """Two supervised Envoys on one machine (dynamic base ids); stop drains and ends each one."""
    sups: list[EnvoySupervisor] = []
    try:
        for i in range(2):
            admin = prepare_admin_dir(prepare_runtime_dir(runtime / f"run{i}", None), None)
            p = _params(
                runtime,
                prometheus_port=free_port(),
                readiness_port=free_port(),
                admin=admin,
                admin_shared_with_group=False,
                listen_host="127.0.0.1",
            )
            doc = render_bootstrap(p)
            del doc["dynamic_resources"]  # no control plane here: static listeners only
            path = runtime / f"envoy{i}.json"
            write_bootstrap(path, doc)
            sup = EnvoySupervisor(find_envoy_binary(), path, None, admin, drain_timeout=1)
            sup.start()
            sups.append(sup)
        for sup in sups:
            wait_for(sup.live, 10, what="Envoy live")
        pids = [s.pid() for s in sups]
        assert len(set(pids)) == 2
        code, body = admin_request(sups[0].admin, "GET", "/server_info")
        assert code == 200 and json.loads(body)["state"] == "LIVE"
        sups[0].stop()
        assert sups[0].pid() is None and not sups[0].live()
        assert sups[1].live()
        assert sups[0].restarts == 0
    finally:
        for s in sups:
            s.stop()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
