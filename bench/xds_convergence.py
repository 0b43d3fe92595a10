"""xDS convergence: time from a config change until every connected proxy has ACKed it, and RSS per proxy.

Run from the repository root with the project venv: ``python bench/xds_convergence.py`` (``--help``).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).
As root the whole run happens inside a private network namespace (the real Envoy binds the control
plane's listeners 15001/15006 there); otherwise on the host network.

Per size N (a fresh ``vmagent-cp serve`` each time, same state dir):

1. a real agent (``vmagent join`` + ``vmagent run``, capture and DNS off, Envoy as the agent's user)
   connects its Envoy through the agent's ADS proxy; the control plane's RSS then is the *idle* figure;
2. N lightweight ADS clients (bench/xdsclient.py: real gRPC streams over mutual TLS, each with its own
   workload certificate and node id, SotW, ACKing every response) connect from several processes;
   RSS with them connected minus idle, divided by N, is the RSS per proxy;
3. endpoint changes: a new operator WorkloadEntry (address 10.77.x.y) selected by an existing
   ServiceEntry is written into the watched config dir; route changes: a new ServiceEntry host
   (bmk-r-K.bench.svc.cluster.local) on port 8080, which adds a virtual host to the port's
   RouteConfiguration and a cluster with its endpoints (VirtualService routing is not translated yet).
   Each change is timed from just before the file is written until the last client ACKed the last
   response carrying it, and until the real Envoy shows it on its admin API (polled every 20 ms).

The times include the config dir watcher's polling (every 0.2 s, so 0.1 s on average) and the push
debounce (0.1 s) -- what an operator writing a file sees. ``first_ack`` shows the floor of those.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agentproc import BenchAgent
from bench.common import (
    cpu_seconds,
    in_private_netns,
    machine,
    mib,
    progress,
    rerun_in_private_netns,
    rounded,
    rss_bytes,
    run_in_workdir,
    summary_stats,
)
from bench.cpserver import BenchControlPlane
from bench.xdsclient import ClientSpec, WorkerSpec, node_id, worker_main

NS = "bench"
CLIENT_GROUP = "client"
EDGE_GROUP = "edge"
TARGET_ENDPOINT_P99_S = 1.0
TARGET_ROUTE_P99_S = 2.0
TARGET_RSS_PER_PROXY_MIB = 1.0
MARKER_REGEX = rb"10\.77\.\d+\.\d+|bmk-r-\d+"

GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {name}
  namespace: bench
spec:
  metadata:
    labels:
      app: {name}
  template:
    serviceAccount: {name}
    ports:
      http: 8080
---
"""

SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: bench
spec:
  hosts:
  - {name}.bench.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {name}
---
"""

ENTRY = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: bench
spec:
  address: {address}
  serviceAccount: {app}
  labels:
    app: {app}
---
"""


def base_config(services: int) -> dict[str, str]:
    """WorkloadGroups of the clients and the agent, ``services`` ServiceEntries with two entries each."""
    groups = GROUP.format(name=CLIENT_GROUP) + GROUP.format(name=EDGE_GROUP)
    svcs = "".join(SERVICE.format(name=f"svc-{i}") for i in range(services))
    entries = "".join(
        ENTRY.format(name=f"svc-{i}-{j}", address=f"10.60.{i}.{j + 1}", app=f"svc-{i}")
        for i in range(services)
        for j in range(2)
    )
    return {"10-groups.yaml": groups, "20-services.yaml": svcs, "30-entries.yaml": entries}


def change_address(k: int) -> str:
    return f"10.77.{k // 250}.{k % 250 + 1}"


# -- the parent's view of the clients -------------------------------------------------------------


class Collector:
    """Drains the workers' event queue in a thread: who is ready, and when each client ACKed each marker."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self._lock = threading.Lock()
        self.ready: set[int] = set()
        self.marks: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        self.errors: list[str] = []
        self.done: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, _pid, data = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                if kind == "ready":
                    self.ready.add(int(data))
                elif kind == "marks":
                    for index, marker, short, t in data:
                        self.marks[marker][short].setdefault(index, t)
                elif kind == "error":
                    self.errors.append(str(data))
                elif kind == "done":
                    self.done.append(dict(data))

    def ready_count(self) -> int:
        with self._lock:
            return len(self.ready)

    def marker(self, marker: str) -> dict[str, dict[int, float]]:
        with self._lock:
            return {short: dict(by_client) for short, by_client in self.marks.get(marker, {}).items()}

    def check(self) -> None:
        with self._lock:
            if self.errors:
                raise RuntimeError(f"ADS client worker failed: {self.errors[0]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Clients:
    """N lightweight ADS clients in ``processes`` spawned worker processes."""

    def __init__(self, cp: BenchControlPlane, n: int, processes: int, certs: list[Any]) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.stop_event = ctx.Event()
        self.collector = Collector(self.events)
        root_pem = cp.root_pem()
        specs = [
            ClientSpec(
                node_id(f"10.88.{i // 250}.{i % 250 + 1}", f"client-{i}", NS),
                f"client-{i}",
                certs[i].key_pem,
                certs[i].chain_pem,
            )
            for i in range(n)
        ]
        per = -(-n // processes)
        self.procs = []
        for w in range(processes):
            chunk = specs[w * per : (w + 1) * per]
            if not chunk:
                continue
            spec = WorkerSpec(
                cp.mtls_address, root_pem, NS, CLIENT_GROUP, chunk, w * per, MARKER_REGEX,
                connect_concurrency=8,
            )  # fmt: skip
            p = ctx.Process(target=worker_main, args=(spec, self.events, self.stop_event), daemon=True)
            p.start()
            self.procs.append(p)
        self.n = n

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        deadline = start + timeout
        last = -1
        while (count := self.collector.ready_count()) < self.n:
            self.collector.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count}/{self.n} ADS clients got their config within {timeout:g}s")
            if count // 100 != last // 100:
                progress(f"  {count}/{self.n} clients synced")
                last = count
            time.sleep(0.05)
        return time.monotonic() - start

    def close(self) -> list[dict[str, Any]]:
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        time.sleep(0.2)
        self.collector.close()
        return self.collector.done


# -- the real Envoy -----------------------------------------------------------------------------


class EnvoyWatch:
    """Polls the agent's Envoy admin API every 20 ms for one marker; ``seen_at`` is when it appeared."""

    def __init__(self, agent: BenchAgent, marker: str, path: str) -> None:
        self.seen_at: float | None = None
        self._agent, self._marker, self._path = agent, marker, path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = self._agent.admin(self._path, timeout=2.0)
            except OSError:
                body = ""
            if self._marker in body:
                self.seen_at = time.monotonic()
                return
            self._stop.wait(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


# -- one size -----------------------------------------------------------------------------------------


def run_changes(
    cp: BenchControlPlane, agent: BenchAgent, clients: Clients, scenario: str, changes: int, offset: int,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Apply ``changes`` changes of one kind, one at a time; each is timed until all clients ACKed it."""
    full: list[float] = []
    per_client: list[float] = []
    first: list[float] = []
    envoy: list[float] = []
    types_seen: set[str] = set()
    cpu0 = cpu_seconds(cp.pid)
    for c in range(changes):
        k = offset + c
        time.sleep(random.uniform(0.3, 0.5))  # quiet between changes, at a random phase of the 0.2 s poll
        if scenario == "endpoint":
            marker = change_address(k)
            text = ENTRY.format(name=f"backend-{k}", address=marker, app="svc-0")
            name, wait_types, envoy_path = f"50-entry-{k}.yaml", {"EDS"}, "/clusters"
        else:
            marker = f"bmk-r-{k}"
            text = SERVICE.format(name=marker)
            name, wait_types, envoy_path = (
                f"60-service-{k}.yaml",
                {"CDS", "EDS", "RDS"},
                ("/config_dump?resource=dynamic_route_configs"),
            )
        t0 = time.monotonic()
        watch = EnvoyWatch(agent, marker, envoy_path)
        cp.write_config(name, text)
        deadline = t0 + timeout
        try:
            while True:
                clients.collector.check()
                got = clients.collector.marker(marker)
                if all(len(got.get(t, {})) >= clients.n for t in wait_types) and watch.seen_at is not None:
                    break
                if time.monotonic() > deadline:
                    counts = {t: len(v) for t, v in got.items()}
                    raise RuntimeError(
                        f"{scenario} change {marker}: after {timeout:g}s ACKed by {counts} of {clients.n} "
                        f"clients, Envoy {'has' if watch.seen_at else 'lacks'} it\n{cp.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            watch.close()
        time.sleep(0.2)  # late types of the same change (e.g. a CDS resend) land in the record too
        got = clients.collector.marker(marker)
        types_seen.update(got)
        lat = [max(got[t][i] for t in got if i in got[t]) - t0 for i in range(clients.n)]
        per_client.extend(lat)
        full.append(max(lat))
        first.append(min(min(v.values()) for v in got.values()) - t0)
        assert watch.seen_at is not None
        envoy.append(watch.seen_at - t0)
        progress(
            f"  {scenario} change {c + 1}/{changes}: all {clients.n} ACKed in {full[-1]:.3f}s "
            f"(first {first[-1]:.3f}s), Envoy {envoy[-1]:.3f}s"
        )
    cpu = cpu_seconds(cp.pid) - cpu0
    return {
        "all_acked_s": summary_stats(full),
        "per_client_ack_s": summary_stats(per_client),
        "first_ack_s": summary_stats(first),
        "envoy_s": summary_stats(envoy),
        "types": sorted(types_seen),
        "cp_cpu_s_per_change": rounded(cpu / changes, 3),
    }


def run_size(
    args: argparse.Namespace, cp: BenchControlPlane, agent: BenchAgent, n: int, certs: list[Any], offset: int
) -> dict[str, Any]:
    for stale in list(cp.config_dir.glob("5*.yaml")) + list(cp.config_dir.glob("6*.yaml")):
        stale.unlink()
    cp.start()
    clients: Clients | None = None
    try:
        agent.start()
        agent.wait_ready(timeout=60)
        time.sleep(args.settle)
        idle = rss_bytes(cp.pid)
        cpu_idle0 = cpu_seconds(cp.pid)
        progress(
            f"N={n}: control plane idle RSS {mib(idle)} MiB (with the agent's Envoy); connecting clients"
        )
        clients = Clients(cp, n, min(args.processes, n), certs)
        connect_s = clients.wait_ready(timeout=args.connect_timeout)
        time.sleep(args.settle)
        connected = rss_bytes(cp.pid)
        per_proxy = (connected - idle) / n
        progress(
            f"N={n}: all synced in {connect_s:.1f}s; RSS {mib(connected)} MiB, {per_proxy / 1024:.1f} KiB per proxy"
        )
        proxies = len(cp.api("/api/v1/proxies"))
        cpu_c0 = cpu_seconds(cp.pid)
        out: dict[str, Any] = {
            "clients": n,
            "client_processes": len(clients.procs),
            "proxies_seen_by_cp": proxies,
            "connect_and_sync_s": rounded(connect_s, 2),
            "cp_cpu_s_connect": rounded(cpu_c0 - cpu_idle0, 2),
            "rss_idle_mib": mib(idle),
            "rss_connected_mib": mib(connected),
            "rss_per_proxy_mib": rounded(per_proxy / (1024 * 1024), 4),
        }
        client_cpu0 = sum(cpu_seconds(p) for p in clients.pids())
        for scenario in args.scenarios:
            progress(f"N={n}: {args.changes} {scenario} changes")
            out[scenario] = run_changes(
                cp, agent, clients, scenario, args.changes, offset, args.change_timeout
            )
            offset += args.changes
        out["client_cpu_s_during_changes"] = rounded(
            sum(cpu_seconds(p) for p in clients.pids()) - client_cpu0, 2
        )
        out["rss_after_changes_mib"] = mib(rss_bytes(cp.pid))
        return out
    finally:
        if clients is not None:
            stats = clients.close()
            errors = [e for s in stats for e in s.get("errors", [])]
            if errors:
                progress(f"client errors: {errors[:3]}")
        agent.stop()
        cp.stop()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "xds_convergence", "machine": machine()}
    result["machine"]["private_netns"] = in_private_netns()
    cp = BenchControlPlane(workdir)
    for name, text in base_config(args.services).items():
        cp.write_config(name, text)
    cp.start()
    agent = BenchAgent(workdir, "edge")
    try:
        agent.join(cp, f"{NS}/{EDGE_GROUP}")
        certs = cp.mint(NS, CLIENT_GROUP, max(args.sizes))
    finally:
        cp.stop()
    sizes: dict[str, Any] = {}
    offset = 0
    for n in args.sizes:
        sizes[str(n)] = run_size(args, cp, agent, n, certs, offset)
        offset += args.changes * len(args.scenarios)
    result["sizes"] = sizes
    biggest = sizes[str(max(args.sizes))]
    summary: dict[str, Any] = {
        "largest_n": max(args.sizes),
        "target_endpoint_p99_s": TARGET_ENDPOINT_P99_S,
        "target_route_p99_s": TARGET_ROUTE_P99_S,
        "target_rss_per_proxy_mib": TARGET_RSS_PER_PROXY_MIB,
        "rss_per_proxy_mib": biggest["rss_per_proxy_mib"],
        "meets_rss_target": biggest["rss_per_proxy_mib"] <= TARGET_RSS_PER_PROXY_MIB,
    }
    for scenario, target in (("endpoint", TARGET_ENDPOINT_P99_S), ("route", TARGET_ROUTE_P99_S)):
        if scenario in biggest:
            p99 = biggest[scenario]["all_acked_s"]["p99"]
            summary[f"{scenario}_all_acked_p99_s"] = p99
            summary[f"meets_{scenario}_target"] = p99 <= target
    summary["targets_apply_at_n"] = 1000
    result["summary"] = summary
    result["settings"] = {
        "sizes": args.sizes,
        "changes_per_scenario": args.changes,
        "services": args.services,
        "client_processes": args.processes,
        "config_source": "watched config dir (polled every 0.2 s) + push debounce 0.1 s",
    }
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 300, 1000], help="client counts (100 300 1000)"
    )
    p.add_argument("--changes", type=int, default=5, help="changes per scenario and size (5)")
    p.add_argument("--scenarios", nargs="+", default=["endpoint", "route"], choices=["endpoint", "route"])
    p.add_argument("--services", type=int, default=10, help="ServiceEntries in the base config (10)")
    p.add_argument("--processes", type=int, default=4, help="client worker processes (4)")
    p.add_argument("--settle", type=float, default=1.0, help="pause before RSS readings (1s)")
    p.add_argument("--connect-timeout", type=float, default=180.0, help="for all clients to sync (180s)")
    p.add_argument("--change-timeout", type=float, default=60.0, help="per change (60s)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    rc = rerun_in_private_netns("vmbxds", [str(Path(__file__).resolve()), *raw])
    if rc is not None:
        return rc
    return run_in_workdir("xds", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
