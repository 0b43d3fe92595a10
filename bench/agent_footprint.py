"""The agent's footprint: RSS and CPU while idle with Envoy connected, and the time from start to ready.

Run from the repository root with the project venv: ``python bench/agent_footprint.py`` (``--help``).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).
As root the whole run happens inside a private network namespace (Envoy binds the control plane's
listeners 15001/15006 there); otherwise on the host network.

A real control plane (``vmagent-cp serve``) and a real agent joined with a token (``vmagent join``),
run with ``vmagent run`` (capture and DNS off, Envoy as the agent's own user, loopback ports chosen free)
and the ``Environment=`` of systemd/vmagent.service (``--no-unit-env``: without it):

* ``ready``: wall time from creating the ``vmagent run`` process until its status port's
  ``/healthz/ready`` answers 200 (Envoy live, its first xDS config ACKed, the certificate valid), the
  certificate already on disk; median of ``--starts`` starts, polled every 10 ms;
* ``idle``: after the last start is ready and a settle pause, the agent's and Envoy's RSS (sampled every
  second) and CPU (user + system) over ``--duration`` seconds (default 60), the agent process alone and
  Envoy separately.

Baselines in the same run: ``python -c 'import grpc, cryptography'`` (its RSS once imported) and a
bare Envoy from the same binary with only an admin listener and the agent's concurrency (its RSS once
ready, and its CPU over a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agentproc import BenchAgent
from bench.common import (
    Background,
    cpu_seconds,
    emit,
    free_port,
    in_private_netns,
    machine,
    median,
    mib,
    progress,
    rerun_in_private_netns,
    rounded,
    rss_bytes,
)
from bench.cpserver import BenchControlPlane

UNIT_FILE = Path(__file__).resolve().parent.parent / "systemd" / "vmagent.service"

TARGET_RSS_MIB = 50.0
TARGET_IDLE_MILLICORES = 5.0
TARGET_READY_S = 1.5

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: vm
  namespace: bench
spec:
  metadata:
    labels:
      app: vm
  template:
    serviceAccount: vm
    ports:
      http: 8080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: vm
  namespace: bench
spec:
  hosts:
  - vm.bench.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: vm
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: bench
spec:
  hosts:
  - api.bench.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: api
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: api-1
  namespace: bench
spec:
  address: 10.61.0.1
  serviceAccount: api
  labels:
    app: api
"""


def baseline_python(workdir: Path) -> dict[str, Any]:
    """RSS of ``python -c 'import grpc, cryptography'`` (kept alive until measured)."""
    code = "import grpc, cryptography, sys; print('imported', flush=True); sys.stdin.read()"
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if "imported" not in line:
            raise RuntimeError("baseline python did not import grpc and cryptography")
        import_s = time.perf_counter() - start
        time.sleep(0.3)
        rss = rss_bytes(child.pid)
    finally:
        child.kill()
        child.wait()
    return {
        "python_grpc_cryptography_rss_mib": mib(rss),
        "python_grpc_cryptography_start_s": rounded(import_s),
    }


def baseline_envoy(workdir: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """A bare Envoy (admin listener only) from the same binary: RSS once ready, CPU over ``seconds``."""
    from vmagent.agent.envoy_bootstrap import find_envoy_binary

    binary = find_envoy_binary(None)
    port = free_port()
    boot = workdir / "bare-envoy.json"
    boot.write_text(
        json.dumps(
            {
                "node": {"id": "bare", "cluster": "bare"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
            }
        )
    )
    cmd = [
        str(binary), "-c", str(boot), "--concurrency", str(concurrency), "--log-level", "warning",
        "--base-id", str(os.getpid() % 60000 + 1000),
    ]  # fmt: skip
    start = time.monotonic()
    with Background(cmd, workdir / "bare-envoy.log") as envoy:
        envoy.wait_ports("127.0.0.1", [port], timeout=30)
        ready_s = time.monotonic() - start
        time.sleep(1.0)
        rss = rss_bytes(envoy.pid)
        cpu0 = cpu_seconds(envoy.pid)
        time.sleep(seconds)
        cpu = cpu_seconds(envoy.pid) - cpu0
    return {
        "bare_envoy_rss_mib": mib(rss),
        "bare_envoy_listening_s": rounded(ready_s),
        "bare_envoy_idle_millicores": rounded(cpu * 1000 / seconds, 2),
    }


def unit_environment(unit: Path) -> dict[str, str]:
    """The ``Environment=`` assignments of a systemd unit (``KEY=VALUE`` words, optionally quoted)."""
    import shlex

    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "Environment":
            for word in shlex.split(value):
                name, eq, val = word.partition("=")
                if eq:
                    env[name] = val
    return env


def time_starts(agent: BenchAgent, starts: int) -> dict[str, Any]:
    """Start the agent ``starts`` times (stopping it in between); the last start is left running."""
    walls: list[float] = []
    for n in range(starts):
        if n:
            agent.stop()
        t0 = agent.start()
        walls.append(agent.wait_ready(timeout=30, interval=0.01) - t0)
        progress(f"start {n + 1}/{starts}: ready after {walls[-1]:.3f}s")
    return {
        "ready_s_median": rounded(median(walls)),
        "ready_s_min": rounded(min(walls)),
        "ready_s_max": rounded(max(walls)),
        "starts": len(walls),
    }


def measure_idle(agent: BenchAgent, duration: float) -> dict[str, Any]:
    envoy_pid = agent.envoy_pid()
    if envoy_pid is None:
        raise RuntimeError(f"the agent runs no Envoy:\n{agent.log_tail()}")
    pids = {"agent": agent.pid, "envoy": envoy_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    samples: dict[str, list[int]] = {k: [] for k in pids}
    start = time.monotonic()
    end = start + duration
    next_sample = start
    while (now := time.monotonic()) < end:
        if now >= next_sample:
            for k, p in pids.items():
                samples[k].append(rss_bytes(p))
            next_sample += 1.0
        time.sleep(min(0.2, max(0.0, end - now)))
    elapsed = time.monotonic() - start
    cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    out: dict[str, Any] = {"duration_s": rounded(elapsed, 1)}
    for k in pids:
        out[f"{k}_rss_mib_mean"] = mib(sum(samples[k]) / len(samples[k]))
        out[f"{k}_rss_mib_max"] = mib(max(samples[k]))
        out[f"{k}_cpu_s"] = rounded(cpu[k], 3)
        out[f"{k}_millicores"] = rounded(cpu[k] * 1000 / elapsed, 2)
    out["agent_threads"] = _threads(agent.pid)
    return out


def _threads(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).num_threads())


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "agent_footprint", "machine": machine()}
    result["machine"]["private_netns"] = in_private_netns()
    progress("baselines: python with grpc + cryptography, bare Envoy")
    result["baseline"] = {**baseline_python(workdir), **baseline_envoy(workdir, 2, args.baseline_seconds)}
    cp = BenchControlPlane(workdir)
    cp.write_config("10-bench.yaml", CONFIG)
    cp.start()
    # The agent runs with the environment systemd gives it (the unit's Environment=, e.g. MALLOC_ARENA_MAX);
    # set only now, so the baselines and the control plane do not get it. Envoy inherits it, as under systemd.
    agent_env = {} if args.no_unit_env else unit_environment(UNIT_FILE)
    os.environ.update(agent_env)
    agent = BenchAgent(workdir, "vm")
    try:
        join_s = agent.join(cp, "bench/vm")
        progress(f"joined in {join_s:.2f}s; timing {args.starts} starts")
        result["ready"] = time_starts(agent, args.starts)
        time.sleep(args.settle)
        progress(f"idle for {args.duration:g}s")
        result["idle"] = measure_idle(agent, args.duration)
        result["ready"]["log_has_agent_ready"] = "agent ready" in agent.log_tail(200)
    finally:
        agent.stop()
        cp.stop()
    idle, ready, base = result["idle"], result["ready"], result["baseline"]
    result["ratios"] = {
        "agent_rss_to_python_baseline": rounded(
            idle["agent_rss_mib_mean"] / base["python_grpc_cryptography_rss_mib"], 2
        ),
        "envoy_rss_to_bare_envoy": rounded(idle["envoy_rss_mib_mean"] / base["bare_envoy_rss_mib"], 2),
    }
    result["summary"] = {
        "agent_rss_mib": idle["agent_rss_mib_mean"],
        "envoy_rss_mib": idle["envoy_rss_mib_mean"],
        "agent_idle_millicores": idle["agent_millicores"],
        "ready_s_median": ready["ready_s_median"],
        "target_rss_mib": TARGET_RSS_MIB,
        "target_idle_millicores": TARGET_IDLE_MILLICORES,
        "target_ready_s": TARGET_READY_S,
        "meets_rss_target": idle["agent_rss_mib_mean"] <= TARGET_RSS_MIB,
        "meets_cpu_target": idle["agent_millicores"] <= TARGET_IDLE_MILLICORES,
        "meets_ready_target": ready["ready_s_median"] <= TARGET_READY_S,
    }
    result["settings"] = {
        "duration_s": args.duration, "starts": args.starts, "settle_s": args.settle, "agent_env": agent_env,
    }  # fmt: skip
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="idle measurement window (60s)")
    p.add_argument("--starts", type=int, default=5, help="agent starts timed for the median (5)")
    p.add_argument("--settle", type=float, default=5.0, help="pause after the last start before idling (5s)")
    p.add_argument("--baseline-seconds", type=float, default=5.0, help="bare Envoy CPU window (5s)")
    p.add_argument(
        "--no-unit-env",
        action="store_true",
        help="run the agent without systemd/vmagent.service's Environment=",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    rc = rerun_in_private_netns("vmbfoot", [str(Path(__file__).resolve()), *raw])
    if rc is not None:
        return rc
    workdir = Path(tempfile.mkdtemp(prefix="vmagent-bench-agent-"))
    try:
        result = run(args, workdir)
    finally:
        if args.keep:
            progress(f"work dir kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
