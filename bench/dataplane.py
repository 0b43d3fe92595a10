"""Data-plane latency at a fixed request rate: client -> server directly, and through both proxies with mTLS.

Run as root from the repository root with the project venv: ``python bench/dataplane.py`` (``--help``).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).
Missing Debian packages (nginx-light, nghttp2-client for h2load, hey) are installed with apt-get first.

The mesh is the lab's (vmagent.lab.mesh.MeshLab, namespaces on one bridged LAN 10.230.50.0/24): a real
control plane with the demo config, a "client" VM joined as demo/web and a "server" VM joined as demo/api,
each running ``vmagent run`` with capture on and Envoy as vmagent-proxy. The server's application is
nginx (one worker, a fixed ``return 200`` body) listening on three ports, run as an ordinary user:

* 8080, the api service's port, captured: the mesh path;
* 8081, excluded from capture on both VMs (client ``exclude_outbound_ports``, server
  ``exclude_inbound_ports``): the direct baseline over exactly the same namespaces, veths, bridge and
  nginx process, with only the proxies left out;
* 8082, excluded from inbound capture on the server only and registered as a MESH_EXTERNAL ServiceEntry
  (``plain-api.bench.test``, TLS off): the client's Envoy alone, plaintext to the application.

Scenarios (each a load-generator run from inside a namespace as user ``nobody``, so capture applies):

* ``app``: server namespace -> 127.0.0.1:8081 (the application alone, loopback);
* ``direct``: client namespace -> SERVER_IP:8081;
* ``bare_envoy``: client namespace -> 127.0.0.1:18080, a bare Envoy (same binary and concurrency as the
  agents', static config: router filter only, bench/bareenvoy.py) -> SERVER_IP:8081: what one Envoy hop
  costs on this machine with no translated config and no capture;
* ``client_proxy``: client namespace -> plain-api.bench.test:8082 (capture -> client Envoy -> nginx);
* ``mesh``: client namespace -> api.demo.svc.cluster.local:8080 (capture -> client Envoy -> mTLS ->
  capture -> server Envoy -> nginx), STRICT PeerAuthentication on the server; Istio's request metrics on
  (the default: both Envoys send gRPC access logs to their agents, which aggregate ``istio_*``);
* ``mesh_no_metrics``: the same path with the request metrics off (MeshConfig
  ``defaultProviders.metrics: []``; the control plane is restarted with it before the run and again
  without it after, and each run waits until both Envoys' listeners have, or lack, the access loggers).
  ``summary.request_metrics`` is the median over rounds of (mesh - mesh_no_metrics) per percentile,
  halved for the per-hop figure, and the agents' CPU per request in both.
* ``mesh_tracing``: the ``mesh`` path with the request metrics on and tracing at 1 % sampling (MeshConfig
  ``extensionProviders`` zipkin to a collector host in the lab, ``vmagent/lab/tracecollector.py``,
  ``defaultProviders.tracing`` and ``defaultConfig.tracing.sampling: 1``; the control plane restarted
  with it around the run like ``mesh_no_metrics``). ``summary.tracing`` is the median over rounds of
  (mesh_tracing - mesh) per percentile, halved per hop, and the spans the collector received.

Every run is ``--warmup`` seconds of load followed by ``--duration`` measured seconds at ``--rate``
requests/s over ``--connections`` keep-alive connections (HTTP/1.1); a round runs every scenario once,
``--repeats`` rounds interleave them so that drifts of a shared machine hit all alike, and the reported
percentiles are medians over the rounds. ``added_ms`` is the median over rounds of (scenario - direct)
measured in the same round. Each run also checks its path on the proxies' counters (a direct run must
not add requests to either agent's Envoy; a mesh run must add them to both, and every connection from
the client's Envoy to the api cluster must have been a TLS one), and records the CPU each Envoy, nginx and the load generator spent per request.

The HTTP filters on the outbound and inbound chains are read from each Envoy's /config_dump.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bareenvoy import BareEnvoy
from bench.common import cpu_seconds, machine, median, progress, rounded, run_in_workdir
from bench.loadgen import DEBIAN_PACKAGES, GENERATORS, LoadGenerator, LoadRun, LoadSpec
from bench.nginxapp import NGINX, NginxApp, ensure_debian_packages
from bench.pathinfo import request_path
from vmagent.lab.demo_config import DEMO_CONFIG, STRICT_API
from vmagent.lab.mesh import MeshLab, VmHost
from vmagent.lab.netns import LineLog, Netns
from vmagent.lab.tracecollector import read_spans
from vmagent.lab.wait import wait_for

LAB_PREFIX = "vmdp"
LAB_SUBNET = "10.230.50.0/24"
MESH_PORT = 8080
DIRECT_PORT = 8081
PLAIN_PORT = 8082
MESH_HOST = "api.demo.svc.cluster.local"
PLAIN_HOST = "plain-api.bench.test"
SCENARIOS = ("app", "direct", "bare_envoy", "client_proxy", "mesh", "mesh_no_metrics", "mesh_tracing")
MESH_SCENARIOS = ("mesh", "mesh_no_metrics", "mesh_tracing")
# MeshConfig of the control plane: Istio's request metrics on (the default) or off for mesh_no_metrics.
METRICS_OFF = "defaultProviders:\n  metrics: []\n"
# ... and for mesh_tracing: metrics on, Zipkin tracing at 1 % (Istio's default sampling) to the collector.
TRACING_SAMPLING = 1.0
TRACING_ON = """\
extensionProviders:
- name: zipkin
  zipkin: {{service: {address}, port: 9411}}
defaultProviders:
  tracing: [zipkin]
defaultConfig:
  tracing: {{sampling: {sampling}}}
"""
# Istio's request-metrics target: what the metrics may add per hop at p90, in ms (issue 15).
TARGET_METRICS_MS_PER_HOP = 0.1
BARE_PORT = 18080
PERCENTILES = ("p50", "p90", "p99", "p999")
# Istio's published figure for two sidecars on the same Envoy (the target), in ms.
TARGET_ADDED_MS = {"p90": 0.23, "p99": 0.30}
USER = "nobody"

PLAIN_CONFIG = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: plain-api
  namespace: demo
spec:
  hosts:
  - {host}
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  endpoints:
  - address: {address}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: plain-api
  namespace: demo
spec:
  host: {host}
  trafficPolicy:
    tls:
      mode: DISABLE
"""

# Envoy counters that tell which proxies a run went through (each pattern sums the matching names):
# requests through the client's outbound HTTP connection managers and the server's inbound ones; and,
# cumulative, the connections the client's Envoy opened to the api cluster and how many were TLS.
RQ_OUT = r"^http\.outbound_0\.0\.0\.0_\d+\.downstream_rq_total$"
RQ_IN = r"^http\.inbound_0\.0\.0\.0_\d+\.downstream_rq_total$"
API_CLUSTER = f"outbound|{MESH_PORT}||{MESH_HOST}"
API_CX = "^" + re.escape(f"cluster.{API_CLUSTER}.upstream_cx_total") + "$"
API_TLS = "^" + re.escape(f"cluster.{API_CLUSTER}.ssl.handshake") + "$"


def envoy_counters(vm: VmHost, patterns: list[str]) -> dict[str, int]:
    """Per pattern, the sum of ``vm``'s Envoy counters whose names match it."""
    out = vm.envoy_admin("/stats?usedonly")
    found = dict.fromkeys(patterns, 0)
    compiled = [(p, re.compile(p)) for p in patterns]
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if not value.strip().isdigit():
            continue
        for p, rx in compiled:
            if rx.match(key):
                found[p] += int(value)
    return found


def has_metrics_loggers(vm: VmHost) -> bool:
    """Whether ``vm``'s Envoy runs listeners with the request-metrics access logger (its config dump)."""
    return "envoy.access_loggers.http_grpc" in vm.envoy_admin("/config_dump?resource=dynamic_listeners")


def has_tracer(vm: VmHost) -> bool:
    """Whether ``vm``'s Envoy runs listeners with a tracer (its config dump)."""
    return "envoy.tracers.zipkin" in vm.envoy_admin("/config_dump?resource=dynamic_listeners")


def envoy_pid(vm: VmHost) -> int:
    pid = (vm.status().get("envoy") or {}).get("pid")
    if not pid:
        raise RuntimeError(f"no Envoy pid in `vmagent status` of {vm.name}")
    return int(pid)


class DataplaneBench:
    """The lab, the application and the load generator; ``setup()``, then ``run(scenario)``, ``close()``."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.lab = MeshLab(workdir / "lab", prefix=LAB_PREFIX, subnet=LAB_SUBNET)
        self.scratch = LoadGenerator.make_scratch(USER)
        self.loadgen = LoadGenerator(args.loadgen, self.scratch, user=USER)
        self.app: NginxApp | None = None
        self.bare: BareEnvoy | None = None
        self.client: VmHost | None = None
        self.server: VmHost | None = None
        self._pids: dict[str, list[int]] = {}
        self.mesh_config = workdir / "mesh-config.yaml"
        self.mode = "mesh"  # which of MESH_SCENARIOS the control plane's MeshConfig is set up for
        self.spans_file = workdir / "spans.jsonl"
        self.collector: Netns | None = None

    # -- setting up ----------------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        envoy = {"concurrency": a.envoy_concurrency, "log_level": "warning"}
        self.mesh_config.write_text("{}\n")
        if "mesh_tracing" in a.scenarios:
            self.collector = self.lab.add_host("collector")
            proc = self.collector.popen(
                [
                    sys.executable,
                    "-m",
                    "vmagent.lab.tracecollector",
                    "--port",
                    "9411",
                    "--out",
                    str(self.spans_file),
                ]
            )
            LineLog(proc).wait_line("listening", timeout=20)
        self.lab.add_control_plane(
            {**DEMO_CONFIG, "30-strict-api.yaml": STRICT_API}, ["--mesh-config", str(self.mesh_config)]
        )
        progress("control plane up; joining the server VM (demo/api) and the client VM (demo/web)")
        self.server = self.lab.add_vm(
            "server", "demo/api", app_port=None,
            config={"capture": {"exclude_inbound_ports": [DIRECT_PORT, PLAIN_PORT]}, "envoy": envoy},
        )  # fmt: skip
        self.client = self.lab.add_vm(
            "client", "demo/web", app_port=None,
            config={"capture": {"exclude_outbound_ports": [DIRECT_PORT]}, "envoy": envoy},
        )  # fmt: skip
        assert self.lab.cp is not None
        self.lab.cp.write_config(
            "40-plain-api.yaml",
            PLAIN_CONFIG.format(host=PLAIN_HOST, port=PLAIN_PORT, address=self.server.address),
        )
        self.app = NginxApp(
            self.server.ns, self.scratch / "nginx", [MESH_PORT, DIRECT_PORT, PLAIN_PORT], a.body_bytes, USER
        )
        self.app.start()
        self.bare = BareEnvoy(
            self.client.ns, self.scratch / "bare-envoy", BARE_PORT, self.server.address, DIRECT_PORT,
            a.envoy_concurrency, USER,
        )  # fmt: skip
        self.bare.start()
        progress(
            f"nginx up in the server VM ({self.server.address}); client VM {self.client.address}; "
            "waiting for each path to answer 200"
        )
        for scenario in SCENARIOS:
            ns, url = self.target(scenario)
            self._wait_ok(ns, url)
        self._pids = {
            "client_envoy": [envoy_pid(self.client)],
            "server_envoy": [envoy_pid(self.server)],
            "nginx": self.app.pids(),
            "bare_envoy": [self.bare.pid],
            "client_agent": [int(self.client.status()["pid"])],
            "server_agent": [int(self.server.status()["pid"])],
        }

    def _wait_ok(self, ns: Netns, url: str, timeout: float = 60.0) -> None:
        def ok() -> bool:
            cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "3", "-w", "%{http_code}", url]
            return ns.run(cmd, user=USER, check=False, timeout=10).stdout.strip() == "200"

        wait_for(ok, timeout=timeout, interval=0.2, what=f"200 from {url} in {ns.name}")

    def target(self, scenario: str) -> tuple[Netns, str]:
        """The namespace the load comes from and the URL it asks, per scenario."""
        assert self.client is not None and self.server is not None
        if scenario == "app":
            return self.server.ns, f"http://127.0.0.1:{DIRECT_PORT}/"
        if scenario == "direct":
            return self.client.ns, f"http://{self.server.address}:{DIRECT_PORT}/"
        if scenario == "bare_envoy":
            return self.client.ns, f"http://127.0.0.1:{BARE_PORT}/"
        if scenario == "client_proxy":
            return self.client.ns, f"http://{PLAIN_HOST}:{PLAIN_PORT}/"
        if scenario in MESH_SCENARIOS:
            return self.client.ns, f"http://{MESH_HOST}:{MESH_PORT}/"
        raise ValueError(f"unknown scenario {scenario!r}")

    # -- measuring -----------------------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        assert self.client is not None and self.server is not None
        client = envoy_counters(self.client, [RQ_OUT, API_CX, API_TLS])
        server = envoy_counters(self.server, [RQ_IN])
        return {
            "client_rq": client[RQ_OUT],
            "server_rq": server[RQ_IN],
            "api_cx": client[API_CX],
            "api_tls": client[API_TLS],
        }

    def _cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self._pids.items()}

    def set_mode(self, mode: str) -> None:
        """Restart the control plane with the MeshConfig of ``mode`` (one of MESH_SCENARIOS: metrics on,
        off, or on with tracing); wait until both Envoys run it."""
        if mode == self.mode:
            return
        assert self.client is not None and self.server is not None
        metrics, tracing = mode != "mesh_no_metrics", mode == "mesh_tracing"
        if tracing:
            assert self.collector is not None
            text = TRACING_ON.format(address=self.collector.address, sampling=TRACING_SAMPLING)
        else:
            text = "{}\n" if metrics else METRICS_OFF
        self.mesh_config.write_text(text)
        self.lab.restart_control_plane()
        for vm in (self.client, self.server):

            def applied(vm: VmHost = vm) -> bool:
                return has_metrics_loggers(vm) == metrics and has_tracer(vm) == tracing

            wait_for(applied, timeout=60, interval=0.5, what=f"{mode} config in {vm.name}'s Envoy")
        ns, url = self.target("mesh")
        self._wait_ok(ns, url)
        self.mode = mode

    def run(self, scenario: str) -> dict[str, Any]:
        """One warmed-up, measured run of ``scenario``: latency, pacing, CPU per request, path check."""
        a = self.args
        self.set_mode(scenario if scenario in MESH_SCENARIOS else "mesh")
        ns, url = self.target(scenario)
        spans0 = len(read_spans(self.spans_file))
        spec = LoadSpec(url, a.rate, a.connections, a.duration, a.warmup)
        before, cpu0 = self._counters(), self._cpu()
        load: LoadRun = self.loadgen.run(ns, spec)
        cpu1, after = self._cpu(), self._counters()
        out = load.summary()
        offered = a.rate * (a.warmup + a.duration)
        out["cpu_ms_per_request"] = {k: rounded((cpu1[k] - cpu0[k]) * 1000 / offered, 4) for k in cpu0}
        out["path"] = {
            "client_envoy_requests": after["client_rq"] - before["client_rq"],
            "server_envoy_requests": after["server_rq"] - before["server_rq"],
            "api_upstream_connections_total": after["api_cx"],
            "api_upstream_tls_handshakes_total": after["api_tls"],
        }
        out["path"]["as_expected"] = self._path_ok(scenario, out["path"])
        if scenario == "mesh_tracing":
            # spans reported so far for this run (Envoy flushes every few seconds: a lower bound)
            out["spans_received"] = len(read_spans(self.spans_file)) - spans0
        return out

    @staticmethod
    def _path_ok(scenario: str, path: dict[str, int]) -> bool:
        """Direct runs touch neither agent's Envoy; client_proxy only the client's; mesh runs pass both,
        and every connection the client's Envoy ever opened to the api cluster was TLS."""
        through_client = path["client_envoy_requests"] > 0
        through_server = path["server_envoy_requests"] > 0
        if scenario in ("app", "direct", "bare_envoy"):
            return not through_client and not through_server
        if scenario == "client_proxy":
            return through_client and not through_server
        cx, tls = path["api_upstream_connections_total"], path["api_upstream_tls_handshakes_total"]
        return through_client and through_server and cx > 0 and tls == cx

    def request_path(self) -> dict[str, Any]:
        assert self.client is not None and self.server is not None
        return request_path(self.client, self.server, MESH_PORT, MESH_HOST)

    def close(self) -> None:
        if self.bare is not None:
            self.bare.stop()
        if self.app is not None:
            self.app.stop()
        try:
            self.lab.close()
        finally:
            self.loadgen.close()


# -- putting the figures together -------------------------------------------------------------------


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per scenario: medians over rounds of each percentile, CPU per request, and, against the direct run
    of the same round, the added milliseconds (median of the paired differences) and the ratios."""
    out: dict[str, Any] = {}
    direct = runs.get("direct", [])
    for scenario, rs in runs.items():
        lat = [r["latency_ms"] for r in rs if r["latency_ms"].get("count")]
        entry: dict[str, Any] = {
            "median_ms": {p: rounded(median([x[p] for x in lat])) for p in PERCENTILES} if lat else {},
            "achieved_rps": [r["pacing"].get("achieved_rps") for r in rs],
            "non_2xx_or_failed": sum(
                r["failed"] + sum(v for k, v in r["statuses"].items() if not k.startswith("2")) for r in rs
            ),
            "path_as_expected": all(r["path"]["as_expected"] for r in rs),
            "cpu_ms_per_request": {
                k: rounded(median([r["cpu_ms_per_request"][k] for r in rs]), 4)
                for k in rs[0]["cpu_ms_per_request"]
            },
        }
        if direct and scenario != "direct" and len(direct) == len(rs):
            pairs = list(zip(rs, direct, strict=True))
            entry["added_ms_vs_direct"] = {
                p: rounded(median([s["latency_ms"][p] - d["latency_ms"][p] for s, d in pairs]))
                for p in PERCENTILES
            }
            entry["ratio_to_direct"] = {
                p: rounded(median([s["latency_ms"][p] / d["latency_ms"][p] for s, d in pairs]), 2)
                for p in PERCENTILES
            }
        out[scenario] = entry
    on, traced = runs.get("mesh", []), runs.get("mesh_tracing", [])
    if on and len(on) == len(traced):
        out["mesh_tracing"]["tracing_cost_ms"] = {
            p: rounded(
                median([a["latency_ms"][p] - b["latency_ms"][p] for a, b in zip(traced, on, strict=True)])
            )
            for p in PERCENTILES
        }
        out["mesh_tracing"]["spans_received"] = [r.get("spans_received", 0) for r in traced]
    off = runs.get("mesh_no_metrics", [])
    if on and len(on) == len(off):
        out["mesh"]["metrics_cost_ms"] = {
            p: rounded(
                median([a["latency_ms"][p] - b["latency_ms"][p] for a, b in zip(on, off, strict=True)])
            )
            for p in PERCENTILES
        }
    return out


def summarize(agg: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {"target_added_ms": TARGET_ADDED_MS}
    if "direct" in agg:
        s["direct_ms"] = agg["direct"]["median_ms"]
    if "app" in agg:
        s["app_alone_ms"] = agg["app"]["median_ms"]
    if "mesh" in agg:
        s["mesh_ms"] = agg["mesh"]["median_ms"]
    mesh = agg.get("mesh", {})
    if "added_ms_vs_direct" in mesh:
        added = mesh["added_ms_vs_direct"]
        s["added_ms"] = added
        s["ratio_to_direct"] = mesh["ratio_to_direct"]
        s["meets_p90_target"] = added["p90"] <= TARGET_ADDED_MS["p90"]
        s["meets_p99_target"] = added["p99"] <= TARGET_ADDED_MS["p99"]
        s["meets_target"] = s["meets_p90_target"] and s["meets_p99_target"]
        if "added_ms_vs_direct" in agg.get("client_proxy", {}):
            one = agg["client_proxy"]["added_ms_vs_direct"]
            s["split_ms"] = {
                "client_envoy": {p: one[p] for p in ("p50", "p90", "p99")},
                "server_envoy_and_mtls": {p: rounded(added[p] - one[p]) for p in ("p50", "p90", "p99")},
            }
        if "added_ms_vs_direct" in agg.get("bare_envoy", {}):
            bare = agg["bare_envoy"]["added_ms_vs_direct"]
            s.setdefault("split_ms", {})["bare_envoy_hop"] = {p: bare[p] for p in ("p50", "p90", "p99")}
        s["proxy_cpu_ms_per_request"] = {
            k: v for k, v in mesh["cpu_ms_per_request"].items() if k in ("client_envoy", "server_envoy")
        }
        if "bare_envoy" in agg:
            s["proxy_cpu_ms_per_request"]["bare_envoy"] = agg["bare_envoy"]["cpu_ms_per_request"][
                "bare_envoy"
            ]
    if "metrics_cost_ms" in agg.get("mesh", {}):
        cost = agg["mesh"]["metrics_cost_ms"]
        per_hop = {p: rounded(cost[p] / 2) for p in PERCENTILES}
        s["request_metrics"] = {
            "added_ms_two_hops": cost,
            "added_ms_per_hop": per_hop,
            "target_ms_per_hop_p90": TARGET_METRICS_MS_PER_HOP,
            "meets_target": per_hop["p90"] <= TARGET_METRICS_MS_PER_HOP,
            "agent_cpu_ms_per_request": {
                "on": {k: v for k, v in agg["mesh"]["cpu_ms_per_request"].items() if k.endswith("_agent")},
                "off": {
                    k: v
                    for k, v in agg["mesh_no_metrics"]["cpu_ms_per_request"].items()
                    if k.endswith("_agent")
                },
            },
        }
    if "tracing_cost_ms" in agg.get("mesh_tracing", {}):
        cost = agg["mesh_tracing"]["tracing_cost_ms"]
        s["tracing"] = {
            "sampling_percent": TRACING_SAMPLING,
            "added_ms_two_hops_vs_mesh": cost,
            "added_ms_per_hop_vs_mesh": {p: rounded(cost[p] / 2) for p in PERCENTILES},
            "mesh_tracing_added_ms_vs_direct": agg["mesh_tracing"].get("added_ms_vs_direct", {}),
            "spans_received_per_run": agg["mesh_tracing"]["spans_received"],
            "envoy_cpu_ms_per_request": {
                k: v for k, v in agg["mesh_tracing"]["cpu_ms_per_request"].items() if k.endswith("_envoy")
            },
        }
    s["paths_as_expected"] = all(v["path_as_expected"] for v in agg.values())
    return s


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "dataplane", "machine": machine()}
    bench = DataplaneBench(args, workdir)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.scenarios}
    try:
        bench.setup()
        result["request_path"] = bench.request_path()
        progress(
            "request path: outbound http filters "
            f"{result['request_path']['outbound'].get('http_filters')}, inbound "
            f"{result['request_path']['inbound'].get('http_filters')}"
        )
        for rnd in range(args.repeats):
            for scenario in args.scenarios:
                r = bench.run(scenario)
                runs[scenario].append(r)
                lat = r["latency_ms"]
                progress(
                    f"round {rnd + 1}/{args.repeats} {scenario:12} p50 {lat.get('p50')} p90 {lat.get('p90')} "
                    f"p99 {lat.get('p99')} ms, {r['pacing'].get('achieved_rps')} req/s, "
                    f"path {'ok' if r['path']['as_expected'] else 'UNEXPECTED ' + json.dumps(r['path'])}"
                )
    finally:
        bench.close()
    agg = aggregate(runs)
    result["summary"] = summarize(agg)
    result["scenarios"] = agg
    result["runs"] = runs
    result["settings"] = {
        "rate_rps": args.rate,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "loadgen": args.loadgen,
        "protocol": "HTTP/1.1 keep-alive, GET /",
        "response_body_bytes": args.body_bytes,
        "envoy_concurrency": args.envoy_concurrency,
        "app": "nginx, 1 worker, return 200",
        "load_user": USER,
    }
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=1000, help="requests per second in total (1000)")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections (4)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run (20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement (3)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all scenarios (3)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--loadgen", default="h2load", choices=GENERATORS, help="load generator (h2load)")
    p.add_argument("--body-bytes", type=int, default=1024, help="response body size (1024, as Istio's)")
    p.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy worker threads per VM (2)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = p.parse_args(argv)
    if "direct" not in args.scenarios:
        p.error("--scenarios must include direct (the baseline)")
    if args.rate % args.connections:
        p.error("--rate must be a multiple of --connections")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        progress(
            "needs root: the lab builds network namespaces, iptables capture and runs Envoy as vmagent-proxy"
        )
        return 2
    tool = "h2load" if args.loadgen == "h2load" else "hey"
    ensure_debian_packages({NGINX: "nginx-light", "curl": "curl", tool: DEBIAN_PACKAGES[tool]}, progress)
    return run_in_workdir("dp", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
