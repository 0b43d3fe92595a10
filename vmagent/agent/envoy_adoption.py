"""Envoy outlives its agent: the record a running Envoy leaves in the runtime directory, and how the next
agent checks that the Envoy it finds there is that one before adopting it (docs/reliability.md).

The record (``envoy.json``, 0600) holds Envoy's pid, when it started (wall clock), the SHA-256 of the
bootstrap it was started with, the bootstrap's path and the binary. A new agent adopts the Envoy only
when all of these hold:

* a pidfd opens for the pid (so the checks below and every later signal reach that very process, never
  a process that reused the pid);
* its admin API answers, and on the admin Unix socket the peer credentials name that pid (with a TCP
  admin port this check is skipped);
* the admin API's ``/server_info`` shows the recorded bootstrap path and an uptime that matches the
  recorded start within ``START_TOLERANCE`` seconds (``/proc/PID/stat`` is not readable under the
  unit's ``ProtectProc=invisible``: Envoy runs under another uid);
* the bootstrap the new agent would write has the recorded hash (otherwise the old Envoy is drained and
  stopped, and a new one started: see :class:`vmagent.agent.envoy_process.EnvoySupervisor`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vmagent.agent.envoy_admin import AdminEndpoint, admin_request
from vmagent.common.fsutil import atomic_write

log = logging.getLogger(__name__)

START_TOLERANCE = 10.0  # seconds between the recorded start and the one Envoy's uptime implies


@dataclass(frozen=True)
class EnvoyRecord:
    pid: int
    started_at: float  # time.time() when the agent spawned it
    bootstrap_sha256: str
    bootstrap_path: str
    binary: str

    @classmethod
    def load(cls, path: Path) -> EnvoyRecord | None:
        """The record at ``path``, or None when there is none or it is unreadable (then nothing is adopted)."""
        try:
            doc = json.loads(path.read_text())
            return cls(
                pid=int(doc["pid"]),
                started_at=float(doc["started_at"]),
                bootstrap_sha256=str(doc["bootstrap_sha256"]),
                bootstrap_path=str(doc["bootstrap_path"]),
                binary=str(doc["binary"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the Envoy record %s: %s", path, exc)
            return None

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), sort_keys=True) + "\n", 0o600)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exit_code(status: int) -> int:
    """A shell's ``$?`` for a child as Popen reports it: 128+N (killed by signal N) becomes -N."""
    return -(status - 128) if status > 128 else status


class EnvoyHandle:
    """A running Envoy, watched through a pidfd (so every signal reaches that very process).

    Envoy is never the agent's child: it asks the kernel for SIGTERM when its parent dies
    (``PR_SET_PDEATHSIG``), so its parent is a small shell, its *keeper* (:data:`KEEPER_SCRIPT`), which
    outlives the agent, waits for Envoy and writes its exit status to ``exit_path``. ``keeper`` is that
    shell when this agent started it (its child), None for an adopted Envoy.
    """

    def __init__(
        self, pid: int, pidfd: int, exit_path: Path, keeper: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._exit_path = exit_path
        self._keeper = keeper
        self.adopted = keeper is None
        self._exited = False
        self._code: int | None = None

    @classmethod
    def open(cls, pid: int, exit_path: Path) -> EnvoyHandle | None:
        """A handle on the running process ``pid``, or None when there is none."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        handle = cls(pid, fd, exit_path)
        if not handle.running():
            handle.close()
            return None
        return handle

    def running(self) -> bool:
        if self._exited or self._pidfd < 0:
            return False
        ready, _, _ = select.select([self._pidfd], [], [], 0)
        self._exited = bool(ready)
        return not self._exited

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit and return its code (as Popen: -N for signal N; None when the keeper did
        not say). TimeoutError when it still runs after ``timeout`` seconds."""
        if not self._exited and self._pidfd >= 0:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"Envoy pid {self.pid} still runs")
            self._exited = True
        if self._code is None:
            self._code = self._keeper_status()
        return self._code

    def _keeper_status(self) -> int | None:
        if self._keeper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return exit_code(self._keeper.wait(5))
            return None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                return exit_code(int(self._exit_path.read_text()))
            except FileNotFoundError:
                time.sleep(0.05)
            except (OSError, ValueError):
                return None
        return None

    def send_signal(self, sig: signal.Signals) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def close(self) -> None:
        """Release the pidfd (once: the number may be reused afterwards)."""
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


# The keeper: run "$@" (Envoy) in the background, write its pid to "$1.pid" and, once it exited, its
# status to "$1"; exit with that status. Both files appear whole (written aside, then renamed).
KEEPER_SCRIPT = """s="$1"; shift
"$@" </dev/null &
p=$!
echo "$p" >"$s.pid.tmp" && mv -f "$s.pid.tmp" "$s.pid"
wait "$p"; c=$?
echo "$c" >"$s.tmp" && mv -f "$s.tmp" "$s"
exit "$c"
"""


def admin_peer_pid(endpoint: AdminEndpoint) -> int | None:
    """The pid of the process listening on the admin Unix socket (SO_PEERCRED); None for a TCP admin."""
    if not isinstance(endpoint, Path):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(str(endpoint))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


def _seconds(duration: object) -> float:
    """Envoy's JSON durations ("12s", "0.5s") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(duration))
    if m is None:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1))


def verify(record: EnvoyRecord, handle: EnvoyHandle, admin: AdminEndpoint) -> str:
    """Why the Envoy behind ``handle`` is not the recorded one (a sentence), or "" when it is."""
    try:
        peer = admin_peer_pid(admin)
        status, body = admin_request(admin, "GET", "/server_info", timeout=2)
    except OSError as exc:
        return f"its admin API does not answer ({exc})"
    if peer is not None and peer != record.pid:
        return f"the admin socket belongs to pid {peer}, not {record.pid}"
    if status != 200:
        return f"its admin API answered HTTP {status}"
    try:
        info = json.loads(body)
        config_path = str((info.get("command_line_options") or {}).get("config_path", ""))
        uptime = _seconds(info.get("uptime_all_epochs", info.get("uptime_current_epoch")))
    except ValueError as exc:
        return f"its /server_info is not understood ({exc})"
    if config_path != record.bootstrap_path:
        return f"it runs {config_path!r}, not the recorded {record.bootstrap_path!r}"
    implied = time.time() - uptime
    if abs(implied - record.started_at) > START_TOLERANCE:
        return f"it started at {implied:.0f}, not at the recorded {record.started_at:.0f}"
    if not handle.running():
        return "it exited while being checked"
    return ""


def recorded_envoy(record_path: Path, admin: AdminEndpoint) -> tuple[EnvoyRecord, EnvoyHandle] | str:
    """The running Envoy a (dead) agent recorded, verified as above; else a sentence saying why not."""
    record = EnvoyRecord.load(record_path)
    if record is None:
        return f"no Envoy is recorded in {record_path}"
    handle = EnvoyHandle.open(record.pid, record_path.with_suffix(".exit"))
    if handle is None:
        return f"the recorded Envoy pid {record.pid} is gone"
    problem = verify(record, handle, admin)
    if problem:
        handle.close()
        return f"the recorded Envoy pid {record.pid} is not checked to be Envoy ({problem}): left alone"
    return record, handle


def stop_recorded_envoy(record_path: Path, admin: AdminEndpoint, term_timeout: float = 10.0) -> str:
    """Stop the Envoy an agent left running (SIGTERM; SIGKILL after ``term_timeout``); say what was done.
    For ``vmagent cleanup``: the agent itself stops its Envoy when it stops, so this finds one only after
    the agent was killed."""
    found = recorded_envoy(record_path, admin)
    if isinstance(found, str):
        if "left alone" not in found:
            record_path.unlink(missing_ok=True)
        return found
    record, handle = found
    handle.send_signal(signal.SIGTERM)
    try:
        handle.wait(term_timeout)
    except TimeoutError:
        handle.send_signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            handle.wait(10)
    handle.close()
    record_path.unlink(missing_ok=True)
    return f"stopped the Envoy pid {record.pid} left by the agent"
