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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

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
