"""Helpers shared by the benchmarks.

A benchmark prints its progress to stderr and exactly one JSON object as the last line of stdout
(``emit``). Long-running helpers (control planes) are started with ``Background`` and always stopped;
short commands go through ``vmagent.common.proc.run`` like every other external command.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from vmagent.common import proc


def progress(message: str) -> None:
    """One line of progress on stderr (stdout is reserved for the result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(result: Mapping[str, object]) -> None:
    """Print ``result`` as one JSON line on stdout; call it last."""
    print(json.dumps(result, sort_keys=True, separators=(",", ":")), flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def venv_tool(name: str) -> str:
    """The console script ``name`` installed next to this interpreter (the project's venv)."""
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise SystemExit(f"{name} is not installed next to {sys.executable}; run from the project venv")
    return found


def run_timed(cmd: list[str], timeout: float = 60.0) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` to completion (raising CommandError on failure); return (wall seconds, result)."""
    start = time.perf_counter()
    result = proc.run(cmd, timeout=timeout)
    return time.perf_counter() - start, result


def machine() -> dict[str, object]:
    """Facts that make figures from different machines comparable."""
    import cryptography
    import grpc

    load1, _, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "grpcio": grpc.__version__,
        "loadavg_1m_at_start": round(load1, 2),
    }


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Background:
    """A long-running child process with its output in a log file; stopped (TERM, then KILL) on exit."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ports(self, host: str, ports: Sequence[int], timeout: float = 30.0) -> None:
        """Wait until every port accepts connections; fail with the log tail if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.cmd[0]} exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            if all(port_open(host, p) for p in ports):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.cmd[0]} did not listen on {list(ports)} within {timeout:g}s")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Background:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- shared by the xDS, agent and registration benchmarks ---------------------------------------------

NETNS_ENV = "VMAGENT_BENCH_IN_NETNS"


def rerun_in_private_netns(prefix: str, argv: Sequence[str]) -> int | None:
    """Run this benchmark again inside a fresh network namespace of its own and return its exit status.

    Envoy binds the listeners the control plane sends (15001, 15006) and the agent its well-known ports;
    a private namespace (loopback only) keeps them from colliding with anything else on the machine.
    Returns None when the caller should go on in this process: already inside, or not root (then the
    benchmark runs on the host network and says so). The namespace and everything left in it are removed
    at the end, also on Ctrl-C.
    """
    if os.environ.get(NETNS_ENV) == "1":
        return None
    if os.geteuid() != 0:
        progress("not root: running on the host network (ports 15001/15006 must be free)")
        return None
    from vmagent.lab.netns import Netns, cleanup_stale

    cleanup_stale(prefix)
    ns = Netns(prefix).create()
    progress(f"running inside network namespace {ns.name}")
    try:
        child = ns.popen(
            [sys.executable, *argv], env={**os.environ, NETNS_ENV: "1"}, stdout=None, stderr=None
        )
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            child.wait(timeout=30)
            return 130
    finally:
        ns.close()


def in_private_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (not its children)."""
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by one process (not its children)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def mib(n_bytes: float) -> float:
    return round(n_bytes / (1024 * 1024), 2)


def summary_stats(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """count, p50, p90, p99 and max of ``values`` (None when empty)."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "p50": rounded(percentile(values, 50), digits),
        "p90": rounded(percentile(values, 90), digits),
        "p99": rounded(percentile(values, 99), digits),
        "max": rounded(max(values), digits),
    }


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``cond`` until it returns something truthy (returned); RuntimeError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_in_workdir(prefix: str, keep: bool, body: Callable[[Path], dict[str, Any]]) -> int:
    """Run ``body(workdir)`` in a fresh temporary directory, emit its result as the last stdout line,
    and remove the directory afterwards unless ``keep`` (then its path is printed)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vmagent-bench-{prefix}-"))
    try:
        result = body(workdir)
    finally:
        if keep:
            progress(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    emit(result)
    return 0
