"""Registration and health: how fast a failing application leaves EDS, and registrations per second.

Run from the repository root with the project venv: ``python bench/registration.py`` (``--help``).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).
As root the whole run happens inside a private network namespace; otherwise on the host network.

Against one real ``vmagent-cp serve``:

* ``out_of_eds``: a real agent (``vmagent join --address 10.79.0.1`` + ``vmagent run``, capture and DNS
  off, its Envoy running) probes its application -- an HTTP server in this process answering 200 or
  500 on /healthz -- with the WorkloadGroup's ``httpGet`` probe (periodSeconds 1, failureThreshold 1,
  timeoutSeconds 1). ``--observers`` lightweight ADS clients (bench/xdsclient.py, real mTLS streams
  with their own certificates, ACKing) follow the endpoint 10.79.0.1 in EDS. A trial flips the
  application to 500 at a random phase of the probe period and times until every observer has ACKed
  an EDS response without the endpoint (and until the agent's own Envoy no longer lists it on
  /clusters); then the application recovers and the time until the endpoint is back is recorded too.
* ``throughput``: ``--agents`` registration clients (vmagent/agent/registration.py ``RegistrationClient``,
  each with its own workload certificate and address) in ``--processes`` processes. Their mTLS
  channels are connected first (TLS handshakes are what bench/csr.py measures); then all start at
  once and the time until the last one holds a confirmed registration gives registrations per second.
  ``--cold`` connects inside the timed window instead. The control plane's ``/api/v1/workloads`` is
  checked to hold exactly one entry per agent afterwards.
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agentproc import BenchAgent
from bench.common import (
    in_private_netns,
    machine,
    progress,
    rerun_in_private_netns,
    rounded,
    run_in_workdir,
    summary_stats,
    wait_until,
)
from bench.cpserver import BenchControlPlane, Minted
from bench.xdsclient import ClientSpec, WorkerSpec, node_id, worker_main

NS = "bench"
AGENT_ADDRESS = "10.79.0.1"
TARGET_THROUGHPUT = 200.0
PROBE_PERIOD_S = 1
TARGET_OUT_OF_EDS_S = PROBE_PERIOD_S + 1.0

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: app
  namespace: bench
spec:
  metadata:
    labels:
      app: app
  template:
    serviceAccount: app
    ports:
      http: 8080
  probe:
    periodSeconds: {period}
    timeoutSeconds: 1
    failureThreshold: 1
    successThreshold: 1
    httpGet:
      path: /healthz
      port: {app_port}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: app
  namespace: bench
spec:
  hosts:
  - app.bench.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: app
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: observer
  namespace: bench
spec:
  metadata:
    labels:
      app: observer
  template:
    serviceAccount: observer
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: reg
  namespace: bench
spec:
  metadata:
    labels:
      app: reg
  template:
    serviceAccount: reg
    ports:
      http: 8080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reg
  namespace: bench
spec:
  hosts:
  - reg.bench.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: reg
"""


# -- the application ----------------------------------------------------------------------------------


class App:
    """The agent's application: ``GET /healthz`` answers 200 while healthy, 500 otherwise."""

    def __init__(self) -> None:
        self.healthy = True
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = 200 if app.healthy else 500
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- observers ----------------------------------------------------------------------------------------


class Observers:
    """ADS clients in one worker process following ``address`` in EDS; presence flips with their times."""

    def __init__(self, cp: BenchControlPlane, certs: list[Minted], address: str) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.stop_event = ctx.Event()
        self.n = len(certs)
        clients = [
            ClientSpec(
                node_id(f"10.89.0.{i + 1}", f"observer-{i}", NS), f"observer-{i}", c.key_pem, c.chain_pem
            )
            for i, c in enumerate(certs)
        ]
        spec = WorkerSpec(
            cp.mtls_address, cp.root_pem(), NS, "observer", clients, 0, rb"(?!)", watch={"EDS": [address]}
        )
        self.proc = ctx.Process(target=worker_main, args=(spec, self.events, self.stop_event), daemon=True)
        self.proc.start()
        self._lock = threading.Lock()
        self.ready: set[int] = set()
        self.flips: dict[int, list[tuple[bool, float]]] = defaultdict(list)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                kind, _pid, data = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                if kind == "ready":
                    self.ready.add(int(data))
                elif kind == "flips":
                    for index, _marker, _short, present, t in data:
                        self.flips[index].append((present, t))
                elif kind == "error":
                    self.errors.append(str(data))

    def state(self, present: bool, since: float) -> list[float] | None:
        """Per observer the time of its latest flip to ``present`` after ``since``, if all have one and
        none flipped back since; else None."""
        with self._lock:
            if self.errors:
                raise RuntimeError(f"observer worker failed: {self.errors[0]}")
            out: list[float] = []
            for i in range(self.n):
                flips = self.flips.get(i, [])
                if not flips or flips[-1][0] != present:
                    return None
                if flips[-1][1] < since:
                    out.append(since)  # already in that state before ``since``
                else:
                    out.append(flips[-1][1])
            return out

    def all_ready(self) -> bool:
        with self._lock:
            return len(self.ready) >= self.n

    def close(self) -> None:
        self.stop_event.set()
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.kill()
        self._stop.set()
        self._thread.join(5)


class EnvoyEndpoint:
    """Follows whether the agent's Envoy lists ``address`` on /clusters (polled every 20 ms)."""

    def __init__(self, agent: BenchAgent, address: str) -> None:
        self.agent, self.address = agent, address
        self.flips: list[tuple[bool, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                present = self.address + ":" in self.agent.admin("/clusters", timeout=2.0)
            except OSError:
                present = None
            t = time.monotonic()
            if present is not None and (not self.flips or self.flips[-1][0] != present):
                self.flips.append((present, t))
            self._stop.wait(0.02)

    def since(self, present: bool, t0: float) -> float | None:
        flips = list(self.flips)
        if flips and flips[-1][0] == present:
            return max(flips[-1][1], t0)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


def out_of_eds(args: argparse.Namespace, cp: BenchControlPlane, workdir: Path, app: App) -> dict[str, Any]:
    agent = BenchAgent(workdir, "app")
    agent.join(cp, f"{NS}/app", address=AGENT_ADDRESS)
    observers = Observers(cp, cp.mint(NS, "observer", args.observers), AGENT_ADDRESS)
    envoy: EnvoyEndpoint | None = None
    try:
        wait_until(observers.all_ready, 60, "observers to sync")
        agent.start()
        agent.wait_ready(timeout=60)
        envoy = EnvoyEndpoint(agent, AGENT_ADDRESS)
        wait_until(lambda: observers.state(True, 0.0), 30, f"{AGENT_ADDRESS} in every observer's EDS")
        out_s: list[float] = []
        per_observer: list[float] = []
        envoy_out: list[float] = []
        back_s: list[float] = []
        for trial in range(args.trials):
            time.sleep(random.uniform(0.5, 0.5 + PROBE_PERIOD_S))  # a random phase of the probe period
            t0 = time.monotonic()
            app.healthy = False
            gone = wait_until(partial(observers.state, False, t0), 30, "the endpoint to leave EDS", 0.005)
            e_gone = wait_until(partial(envoy.since, False, t0), 10, "Envoy to drop the endpoint")
            assert isinstance(gone, list) and isinstance(e_gone, float)
            lat = [t - t0 for t in gone]
            per_observer.extend(lat)
            out_s.append(max(lat))
            envoy_out.append(e_gone - t0)
            time.sleep(0.3)
            t1 = time.monotonic()
            app.healthy = True
            back = wait_until(partial(observers.state, True, t1), 30, "the endpoint to return", 0.005)
            assert isinstance(back, list)
            back_s.append(max(back) - t1)
            wait_until(partial(envoy.since, True, t1), 10, "Envoy to list the endpoint again")
            progress(
                f"  trial {trial + 1}/{args.trials}: out of all {observers.n} observers' EDS after "
                f"{out_s[-1]:.3f}s (Envoy {envoy_out[-1]:.3f}s), back after {back_s[-1]:.3f}s"
            )
        return {
            "out_of_all_eds_s": summary_stats(out_s),
            "per_observer_s": summary_stats(per_observer),
            "agent_envoy_s": summary_stats(envoy_out),
            "back_in_all_eds_s": summary_stats(back_s),
            "observers": observers.n,
            "probe": {"periodSeconds": PROBE_PERIOD_S, "failureThreshold": 1, "timeoutSeconds": 1},
        }
    finally:
        if envoy is not None:
            envoy.close()
        observers.close()
        agent.stop()


# -- registration throughput -------------------------------------------------------------------------


@dataclass(frozen=True)
class RegWorker:
    address: str
    root_pem: bytes
    certs: list[Minted]
    addresses: list[str]
    cold: bool


def reg_worker_main(spec: RegWorker, ready: Any, go: Any, t_go: Any, results: Any, stop: Any) -> None:
    """Connect (unless cold), report ready, start every client at ``go``; report registration times."""
    try:
        results.put(_reg_worker(spec, ready, go, t_go, stop))
    except BaseException as exc:
        ready.put(os.getpid())
        results.put({"fatal": f"{type(exc).__name__}: {exc}"})


def _reg_worker(spec: RegWorker, ready: Any, go: Any, t_go: Any, stop: Any) -> dict[str, Any]:
    import grpc

    from vmagent.agent.join import secure_channel
    from vmagent.agent.registration import RegisterInfo, RegistrationClient
    from vmagent.common.constants import CP_SERVER_NAME

    def channel(c: Minted) -> grpc.Channel:
        return secure_channel(spec.address, spec.root_pem, CP_SERVER_NAME, (c.key_pem, c.chain_pem))

    channels: list[grpc.Channel | None] = [None] * len(spec.certs)
    if not spec.cold:
        for i, c in enumerate(spec.certs):
            channels[i] = ch = channel(c)
            grpc.channel_ready_future(ch).result(timeout=60)

    def factory(i: int) -> Any:
        def make() -> grpc.Channel:
            if channels[i] is None:
                channels[i] = channel(spec.certs[i])
            ch = channels[i]
            assert ch is not None
            return ch

        return make

    clients = [
        RegistrationClient(
            factory(i), RegisterInfo(group="reg", namespace=NS, address=a, hostname=f"reg-{i}")
        )
        for i, a in enumerate(spec.addresses)
    ]
    ready.put(os.getpid())
    go.wait()
    while time.monotonic() < t_go.value:
        time.sleep(0.0005)
    for client in clients:
        client.start()
    done: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while len(done) < len(clients) and time.monotonic() < deadline:
        now = time.monotonic()
        for i, client in enumerate(clients):
            if i not in done and client.registrations >= 1:
                done[i] = now
        time.sleep(0.002)
    errors = [client.last_error for client in clients if client.last_error]
    stop.wait(120)  # stay registered until the parent has checked the control plane
    for client in clients:
        client.stop()
    for ch in channels:
        if ch is not None:
            ch.close()
    return {"times": list(done.values()), "missing": len(clients) - len(done), "errors": errors[:3]}


def throughput(args: argparse.Namespace, cp: BenchControlPlane) -> dict[str, Any]:
    certs = cp.mint(NS, "reg", args.agents)
    addresses = [f"10.80.{i // 250}.{i % 250 + 1}" for i in range(args.agents)]
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    t_go = ctx.Value("d", 0.0)
    per = -(-args.agents // args.processes)
    procs = []
    for w in range(args.processes):
        chunk = slice(w * per, (w + 1) * per)
        if not certs[chunk]:
            continue
        spec = RegWorker(cp.mtls_address, cp.root_pem(), certs[chunk], addresses[chunk], args.cold)
        p = ctx.Process(target=reg_worker_main, args=(spec, ready, go, t_go, results, stop), daemon=True)
        p.start()
        procs.append(p)
    try:
        for _ in procs:
            ready.get(timeout=180)
        before = len(cp.api("/api/v1/workloads"))
        t_go.value = time.monotonic() + 0.2
        go.set()
        progress(f"  {args.agents} registration clients in {len(procs)} processes: go")
        outs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 180
        while len(outs) < len(procs):
            # results arrive only after ``stop``; poll the workloads API meanwhile
            entries = [w for w in cp.api("/api/v1/workloads") if w.get("group") == "reg"]
            if len(entries) >= args.agents or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        workloads = cp.api("/api/v1/workloads")
        stop.set()
        for _ in procs:
            outs.append(results.get(timeout=150))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        raise RuntimeError(f"registration workers failed: {fatal[0]}")
    times = sorted(t for o in outs for t in o["times"])
    missing = sum(o["missing"] for o in outs)
    lat = [t - t_go.value for t in times]
    wall = (times[-1] - t_go.value) if times else float("inf")
    reg_entries = [w for w in workloads if w.get("group") == "reg"]
    names = {str(w.get("name")) for w in reg_entries}
    return {
        "agents": args.agents,
        "processes": len(procs),
        "cold_connect_in_window": args.cold,
        "registered": len(times),
        "missing": missing,
        "errors": [e for o in outs for e in o["errors"]][:3],
        "wall_s": rounded(wall, 3),
        "registrations_per_s": rounded(len(times) / wall, 1) if times else 0.0,
        "latency_s": summary_stats(lat),
        "entries_in_cp": len(reg_entries),
        "distinct_entry_names": len(names),
        "workloads_before": before,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "registration", "machine": machine()}
    result["machine"]["private_netns"] = in_private_netns()
    app = App()
    cp = BenchControlPlane(workdir)
    cp.write_config("10-bench.yaml", CONFIG.format(period=PROBE_PERIOD_S, app_port=app.port))
    cp.start()
    try:
        if args.trials:
            progress(f"out of EDS: {args.trials} trials, {args.observers} observers")
            result["out_of_eds"] = out_of_eds(args, cp, workdir, app)
        if args.agents:
            progress(f"throughput: {args.agents} agents")
            result["throughput"] = throughput(args, cp)
    finally:
        cp.stop()
        app.close()
    summary: dict[str, Any] = {
        "target_out_of_eds_s": TARGET_OUT_OF_EDS_S,
        "target_registrations_per_s": TARGET_THROUGHPUT,
    }
    if "out_of_eds" in result:
        p99 = result["out_of_eds"]["out_of_all_eds_s"]["p99"]
        summary["out_of_all_eds_p99_s"] = p99
        summary["out_of_all_eds_max_s"] = result["out_of_eds"]["out_of_all_eds_s"]["max"]
        summary["meets_out_of_eds_target"] = (
            result["out_of_eds"]["out_of_all_eds_s"]["max"] <= TARGET_OUT_OF_EDS_S
        )
    if "throughput" in result:
        rate = result["throughput"]["registrations_per_s"]
        summary["registrations_per_s"] = rate
        summary["meets_throughput_target"] = rate >= TARGET_THROUGHPUT
    result["summary"] = summary
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="probe failures timed (8; 0 skips)")
    p.add_argument("--observers", type=int, default=50, help="ADS clients following the endpoint (50)")
    p.add_argument("--agents", type=int, default=500, help="registration clients (500; 0 skips)")
    p.add_argument("--processes", type=int, default=4, help="registration client processes (4)")
    p.add_argument("--cold", action="store_true", help="connect (TLS) inside the timed window")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    rc = rerun_in_private_netns("vmbreg", [str(Path(__file__).resolve()), *raw])
    if rc is not None:
        return rc
    return run_in_workdir("reg", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
