"""Istio's request metrics on the agents' merged ``:15020/stats/prometheus``, proven by real traffic.

One lab for the module (prefix ``vmmet``): a control plane with the demo config, the ``web`` (client) and
``api`` (server) VMs with real agents and Envoys, and a plain host ``outside`` without an agent or a
mesh certificate (api's port is PERMISSIVE, the demo's default, so its plaintext is accepted); api
also runs the echo app on 9000, a port no service declares, reached as plain TCP. A
VirtualService aborts requests to api that carry ``x-fault: abort`` with 503 (on web's Envoy, where
Istio applies faults). Each test reads the counters before and after its own requests, so the tests do
not depend on each other's traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.promtool import promtool_check
from vmagent.lab.demo_config import DEMO_CONFIG
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.wait import wait_for

API_HOST = "api.demo.svc.cluster.local"
API = f"http://{API_HOST}:8080"
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"
API_ID = "spiffe://cluster.local/ns/demo/sa/api"

FAULT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-fault, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  http:
  - name: abort-marked
    match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: api.demo.svc.cluster.local}}]
  - name: default
    route: [{destination: {host: api.demo.svc.cluster.local}}]
"""

# Headers a client could send to pretend to be web: none of them may change a peer label.
FORGED = (
    "x-forwarded-client-cert: By=spiffe://cluster.local/ns/demo/sa/api;URI=" + WEB_ID,
    "x-istio-attributes: source.principal=" + WEB_ID,
    "x-envoy-peer-metadata-id: sidecar~10.0.0.1~web.demo~demo.svc.cluster.local",
    "baggage: k8s.deployment.name=web,k8s.namespace.name=demo",
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    require_root()
    require_tool("curl")
    workdir = Path(tmp_path_factory.mktemp("vmmet"))
    lab = MeshLab(workdir, prefix="vmmet", subnet="10.230.60.0/24")
    try:
        lab.add_control_plane(DEMO_CONFIG)
        lab.add_vm("web", "demo/web")
        api = lab.add_vm("api", "demo/api")
        api.start_app(9000)  # a port no service declares: plain TCP through the inbound passthrough
        lab.add_host("outside")
        assert lab.cp is not None
        lab.cp.write_config("30-fault.yaml", FAULT)
        lab.wait_reachable(lab.vms["web"], API + "/ready")
        wait_for(
            lambda: code(lab.vms["web"], "x-fault: abort") == 503, timeout=60, interval=0.5, what="the fault"
        )
        yield lab
    finally:
        lab.close()


def metrics(vm: VmHost) -> str:
    """The agent's merged exposition (its own families, the istio_* families, then Envoy's)."""
    r = vm.ns.run(["curl", "-sf", "--max-time", "10", "http://127.0.0.1:15020/stats/prometheus"], check=False)
    assert r.returncode == 0, f"{vm.name}: /stats/prometheus failed: {r.stderr}"
    return r.stdout


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when there are none)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found += float(s.value)
    return found


def code(vm: VmHost, *headers: str, path: str = "/hello") -> int:
    args: list[str] = []
    for h in headers:
        args += ["-H", h]
    r = vm.curl(API + path, *args, "-o", "/dev/null")
    return int(r.stdout.strip().rpartition("\n")[2] or 0)


def outside_code(mesh: MeshLab, *headers: str) -> int:
    api = mesh.vms["api"]
    args = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "-H",
        f"Host: {API_HOST}",
    ]
    for h in headers:
        args += ["-H", h]
    r = mesh.hosts["outside"].run([*args, f"http://{api.address}:8080/hello"], check=False)
    return int(r.stdout or 0)


def quiet(vm: VmHost, reporter: str) -> str:
    """A scrape of ``vm`` in which every HTTP request its Envoy completed on that side's listeners
    (``inbound_*`` for the destination, ``outbound_*`` for the source) is in ``istio_requests_total``:
    counts read from it are a baseline that traffic still in Envoy's log buffer cannot move."""
    prefix = "inbound" if reporter == "destination" else "outbound"
    found: list[str] = []

    def caught_up() -> bool:
        from prometheus_client.parser import text_string_to_metric_families

        text = metrics(vm)
        done = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                # Envoy's tag extraction cuts the prefix at its first dot: envoy_http_0_0_0_8080_... {"inbound_0"}
                name, conn = s.name, s.labels.get("envoy_http_conn_manager_prefix", "")
                if (
                    name.startswith("envoy_http_")
                    and name.endswith(("_downstream_rq_completed", "_downstream_rq_completed_total"))
                    and conn.startswith(prefix)
                ):
                    done += float(s.value)
        found[:] = [text]
        return total(text, "istio_requests_total", reporter=reporter) == done

    wait_for(caught_up, timeout=30, interval=0.3, what=f"{vm.name}'s {reporter} metrics to catch up")
    return found[0]


def settled(vm: VmHost, name: str, expected: float, **labels: str) -> None:
    """Wait until ``vm``'s sample reaches ``expected`` (Envoy sends its access logs about once a second),
    then check it did not go past it."""
    wait_for(
        lambda: total(metrics(vm), name, **labels) >= expected,
        timeout=30,
        interval=0.3,
        what=f"{name}{labels} on {vm.name} to reach {expected:g}",
    )
    assert total(metrics(vm), name, **labels) == expected


MS_LINT = 'istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"'

WEB_TO_API = {
    "reporter": "destination",
    "source_workload": "web",
    "destination_workload": "api",
    "response_code": "200",
}


def test_destination_counts_exactly_the_requests_sent(mesh: MeshLab) -> None:
    web, api = mesh.vms["web"], mesh.vms["api"]
    before = total(quiet(api, "destination"), "istio_requests_total", **WEB_TO_API)
    sent = 7
    assert [code(web) for _ in range(sent)] == [200] * sent
    settled(api, "istio_requests_total", before + sent, **WEB_TO_API)
    text = metrics(api)
    full = {
        **WEB_TO_API,
        "source_workload_namespace": "demo",
        "source_principal": WEB_ID,
        "source_app": "web",
        "destination_workload_namespace": "demo",
        "destination_principal": API_ID,
        "destination_app": "api",
        "destination_service": API_HOST,
        "destination_service_name": "api",
        "destination_service_namespace": "demo",
        "request_protocol": "http",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    assert total(text, "istio_requests_total", **full) == before + sent, "every label as Istio names it"
    count = total(text, "istio_request_duration_milliseconds_count", **WEB_TO_API)
    assert count == before + sent
    assert total(text, "istio_request_bytes_count", **WEB_TO_API) == before + sent
    assert total(text, "istio_response_bytes_sum", **WEB_TO_API) > 0
    # The client's agent reports the same requests as the source.
    src = {
        "reporter": "source",
        "source_workload": "web",
        "destination_service": API_HOST,
        "response_code": "200",
    }
    assert total(metrics(web), "istio_requests_total", **src) >= sent


def test_fault_injected_503_is_reported(mesh: MeshLab) -> None:
    web = mesh.vms["web"]
    labels = {
        "reporter": "source",
        "source_workload": "web",
        "destination_service": API_HOST,
        "response_code": "503",
        "response_flags": "FI",
    }
    before = total(quiet(web, "source"), "istio_requests_total", **labels)
    assert [code(web, "x-fault: abort") for _ in range(3)] == [503] * 3
    settled(web, "istio_requests_total", before + 3, **labels)


def test_plaintext_client_is_unknown_and_headers_cannot_forge_it(mesh: MeshLab) -> None:
    api = mesh.vms["api"]
    unknown = {"reporter": "destination", "source_principal": "unknown", "source_workload": "unknown",
               "destination_workload": "api", "response_code": "200",
               "connection_security_policy": "none"}  # fmt: skip
    text = quiet(api, "destination")
    before_unknown = total(text, "istio_requests_total", **unknown)
    before_web = total(text, "istio_requests_total", reporter="destination", source_principal=WEB_ID)
    assert outside_code(mesh) == 200
    assert [outside_code(mesh, *FORGED) for _ in range(2)] == [200, 200]
    settled(api, "istio_requests_total", before_unknown + 3, **unknown)
    text = metrics(api)
    assert total(text, "istio_requests_total", reporter="destination", source_principal=WEB_ID) == before_web
    assert total(text, "istio_requests_total", reporter="destination", source_workload="web") == before_web


def test_tcp_connections_are_counted(mesh: MeshLab) -> None:
    api = mesh.vms["api"]
    labels = {"reporter": "destination", "destination_workload": "api", "source_principal": "unknown",
              "request_protocol": "tcp", "connection_security_policy": "none"}  # fmt: skip
    text = metrics(api)
    before = total(text, "istio_tcp_connections_closed_total", **labels)
    received = total(text, "istio_tcp_received_bytes_total", **labels)
    for _ in range(2):
        r = mesh.hosts["outside"].run(
            ["curl", "-sf", "--max-time", "5", f"http://{api.address}:9000/hello"], check=False
        )
        assert r.returncode == 0
    settled(api, "istio_tcp_connections_closed_total", before + 2, **labels)
    text = metrics(api)
    assert total(text, "istio_tcp_connections_opened_total", **labels) == before + 2
    assert total(text, "istio_tcp_received_bytes_total", **labels) > received
    assert total(text, "istio_tcp_sent_bytes_total", **labels) > 0


def test_merged_exposition_passes_promtool(mesh: MeshLab) -> None:
    for vm in mesh.vms.values():
        text = metrics(vm)
        assert "# TYPE istio_requests_total counter" in text
        assert "# TYPE istio_request_duration_milliseconds histogram" in text
        assert "envoy_" in text, "Envoy's own families pass through"
        own = "".join(
            block for block in _families(text) if block.startswith(("# HELP istio_", "# HELP vmagent_"))
        )
        assert "istio_requests_total{" in own and "vmagent_process_" in own
        # Istio's own name for the duration histogram breaks promtool's base-unit naming lint, and only that.
        promtool_check(own, allowed_lint=(MS_LINT,))


def _families(text: str) -> list[str]:
    """The exposition cut into one block per family (each from its first ``# HELP``/``# TYPE`` line)."""
    blocks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        if line.startswith(("# HELP ", "# TYPE ")):
            name = line.split()[2]
            if name != current or not blocks:
                current = name
                blocks.append("")
        blocks[-1] += line
    return blocks
