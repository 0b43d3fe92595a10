"""The Envoy supervisor: start Envoy as the proxy user, restart it after a crash, drain it on stop.

* Envoy runs as ``run_as_user`` (default ``vmagent-proxy``; uid and gid looked up by name), or as the
  current user when that is None. It gets ``--use-dynamic-base-id`` so several Envoys on one machine never
  share hot-restart shared memory or domain sockets.
* A crash is followed by a restart after ``restart_initial`` seconds, doubling for each further crash
  in a row up to ``restart_max``; a run that lasted ``stable_after`` seconds resets the sequence.
* Envoy writes its log (stdout and stderr) to a file, ``envoy.log`` next to the record below, never a
  pipe to the agent: a pipe would break when the agent dies and take Envoy with it. The agent tails that
  file and relays each line into the ``vmagent.envoy`` logger at the matching level; the file is
  truncated at each new Envoy and whenever it passes ``LOG_CAP`` bytes.
* Envoy runs in its own session, so it outlives the agent (SIGKILL, crash). Its pid, start time and
  bootstrap hash are recorded (``envoy.json``); ``start()`` adopts the recorded Envoy when it is that very
  process and its bootstrap is unchanged (``vmagent/agent/envoy_adoption.py``), and otherwise drains and
  stops it before starting a new one.
* ``stop()`` drains: ``POST /drain_listeners?graceful`` on the admin API (``admin``: its Unix socket, see
  ``vmagent/agent/envoy_admin.py``), waits up to ``drain_timeout``
  for the listeners' active connections to reach zero, then SIGTERM, then SIGKILL after ``term_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from vmagent.agent.envoy_admin import AdminEndpoint, admin_request
from vmagent.agent.envoy_adoption import KEEPER_SCRIPT, EnvoyHandle, EnvoyRecord, file_sha256, verify
from vmagent.agent.envoy_runtime import lookup_proxy_user
from vmagent.common.errors import VmagentError
from vmagent.common.metrics import Registry

log = logging.getLogger(__name__)
envoy_log = logging.getLogger("vmagent.envoy")

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Envoy's --log-format: level, logger name, message, separated by '|'.
_LOG_FORMAT = "%l|%n|%v"
LOG_CAP = 8 * 1024 * 1024  # bytes of envoy.log before the agent truncates it
_TAIL_POLL = 0.2


class EnvoySupervisor:
    """Keeps one Envoy process running from ``bootstrap_path`` until ``stop()``."""

    def __init__(
        self,
        binary: Path,
        bootstrap_path: Path,
        run_as_user: str | None,
        admin: AdminEndpoint,
        *,
        concurrency: int = 2,
        log_level: str = "info",
        restart_initial: float = 0.1,
        restart_max: float = 30.0,
        stable_after: float = 30.0,
        drain_timeout: float = 5.0,
        term_timeout: float = 5.0,
        extra_args: list[str] | None = None,
        metrics: Registry | None = None,
        bind_privileged_ports: bool = False,
        record_path: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        """``bind_privileged_ports``: give Envoy (running as ``run_as_user``) the ambient capability
        CAP_NET_BIND_SERVICE, through ``setpriv``, so an ingress gateway can listen on 80 and 443.
        ``record_path`` and ``log_path``: Envoy's record and log file (default: next to the bootstrap,
        named after it with ``.pid.json`` and ``.log``)."""
        if not binary.is_file():
            raise VmagentError(f"Envoy binary {binary} does not exist; install Envoy or fix envoy.binary")
        self.binary = binary
        self.bootstrap_path = bootstrap_path
        self.admin = admin
        self._user = lookup_proxy_user(run_as_user) if run_as_user else None
        self._bind_privileged = bind_privileged_ports
        if bind_privileged_ports and self._user is not None and shutil.which("setpriv") is None:
            raise VmagentError("gateway mode on privileged ports needs setpriv (util-linux) on PATH")
        self._concurrency = concurrency
        self._log_level = log_level
        self._restart_initial = restart_initial
        self._restart_max = restart_max
        self._stable_after = stable_after
        self._drain_timeout = drain_timeout
        self._term_timeout = term_timeout
        self._extra_args = list(extra_args or [])
        self.record_path = record_path or bootstrap_path.with_suffix(".pid.json")
        self.log_path = log_path or bootstrap_path.with_suffix(".log")
        self.exit_path = self.record_path.with_suffix(".exit")  # the keeper's report (envoy_adoption.py)
        self._lock = threading.Lock()
        self._proc: EnvoyHandle | None = None
        self._tail: threading.Thread | None = None
        self.adopted_pid: int | None = None  # the Envoy this supervisor adopted at start, if it did
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts = 0
        self._last_exit: int | None = None
        reg = metrics or Registry()
        self._m_restarts = reg.counter("vmagent_envoy_restarts_total", "Envoy restarts after it exited.")
        self._m_live = reg.gauge("vmagent_envoy_live", "1 while Envoy's admin API reports LIVE.")

    # --- lifecycle ------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-c",
            str(self.bootstrap_path),
            "--use-dynamic-base-id",
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
            "--log-format",
            _LOG_FORMAT,
            "--drain-time-s",
            str(max(1, int(self._drain_timeout))),
            "--drain-strategy",
            "immediate",
            *self._extra_args,
        ]

    def start(self, adopt: bool = True) -> None:
        """Adopt the recorded Envoy (``adopt``, see the module docstring) or start a new one now (raising
        VmagentError if it cannot be spawned), and supervise it in a thread."""
        if not self.bootstrap_path.is_file():
            raise VmagentError(f"Envoy bootstrap {self.bootstrap_path} does not exist")
        self._stopping.clear()
        handle = self._adopt() if adopt else None
        if handle is not None:
            with self._lock:
                self._proc = handle
            self.adopted_pid = handle.pid
            self._start_tail(from_end=True)
        else:
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="envoy-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain Envoy gracefully, then terminate it; returns once it has exited."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._terminate(proc)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tail is not None:
            self._tail.join(timeout=5)
            self._tail = None
        self.record_path.unlink(missing_ok=True)
        self._m_live.set(0)

    def _terminate(self, proc: EnvoyHandle) -> None:
        """Drain ``proc``, SIGTERM it, SIGKILL it after ``term_timeout``; returns once it has exited."""
        if proc.running():
            self._drain(proc)
        if proc.running():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self._term_timeout)
            except TimeoutError:
                log.warning("Envoy did not exit %gs after SIGTERM; killing it", self._term_timeout)
                proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    proc.wait(10)
        proc.close()

    def _adopt(self) -> EnvoyHandle | None:
        """The recorded Envoy when it can be adopted; None after stopping one that cannot (or none)."""
        record = EnvoyRecord.load(self.record_path)
        if record is None:
            return None
        handle = EnvoyHandle.open(record.pid, self.exit_path)
        if handle is None:
            log.info("the recorded Envoy pid %d is gone; starting a new one", record.pid)
            self.record_path.unlink(missing_ok=True)
            return None
        problem = verify(record, handle, self.admin)
        if problem:  # maybe not Envoy at all (a reused pid): leave that process alone
            log.warning("not adopting the recorded Envoy pid %d: %s; starting a new one", record.pid, problem)
            handle.close()
            self.record_path.unlink(missing_ok=True)
            return None
        if record.bootstrap_sha256 != file_sha256(self.bootstrap_path) or record.binary != str(self.binary):
            log.info(
                "Envoy pid %d runs an older bootstrap or binary; draining it and starting a new one",
                record.pid,
            )
            self._terminate(handle)
            self.record_path.unlink(missing_ok=True)
            return None
        log.info(
            "adopted the running Envoy pid %d (started %.1f s ago)",
            record.pid,
            time.time() - record.started_at,
        )
        return handle

    # --- state ----------------------------------------------------------------------------------------

    def pid(self) -> int | None:
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.running() else None

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def last_exit_code(self) -> int | None:
        return self._last_exit

    def live(self) -> bool:
        """True when Envoy's admin ``/ready`` answers 200 (state LIVE: initial config loaded)."""
        if self.pid() is None:
            self._m_live.set(0)
            return False
        try:
            status, body = admin_request(self.admin, "GET", "/ready", timeout=0.5)
        except OSError:
            status, body = 0, b""
        ok = status == 200 and body.strip() == b"LIVE"
        self._m_live.set(1 if ok else 0)
        return ok

    def active_connections(self) -> int:
        """Open downstream connections on Envoy's listeners (the admin listener excluded)."""
        status, body = admin_request(
            self.admin, "GET", "/stats?format=json&filter=^listener\\..*downstream_cx_active$"
        )
        if status != 200:
            raise OSError(f"admin /stats answered {status}")
        total = 0
        for stat in json.loads(body).get("stats", []):
            name = str(stat.get("name", ""))
            if name.startswith("listener.admin.") or "value" not in stat:
                continue
            total += int(stat["value"])
        return total

    # --- internals ------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        cmd = self.command()
        if self._user is not None:
            # setpriv switches user (and, for a gateway on ports < 1024, keeps CAP_NET_BIND_SERVICE as an
            # ambient capability across exec).
            caps = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise VmagentError("running Envoy as another user needs setpriv (util-linux) on PATH")
            cmd = [
                setpriv,
                f"--reuid={self._user.uid}",
                f"--regid={self._user.gid}",
                "--clear-groups",
                *(caps if self._bind_privileged else []),
                "--",
                *cmd,
            ]
        for stale in (self.exit_path, self.exit_path.with_name(self.exit_path.name + ".pid")):
            stale.unlink(missing_ok=True)
        try:
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            raise VmagentError(
                f"cannot open Envoy's log file {self.log_path}: {exc.strerror or exc}"
            ) from exc
        try:
            # Its own session, a keeper shell as its parent and no pipe to the agent: Envoy outlives the
            # agent (see the module docstring and EnvoyHandle).
            keeper = subprocess.Popen(  # a supervised daemon, not a command: proc.run does not apply
                ["/bin/sh", "-c", KEEPER_SCRIPT, "vmagent-envoy-keeper", str(self.exit_path), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        except OSError as exc:
            raise VmagentError(f"cannot start Envoy {self.binary}: {exc.strerror or exc}") from exc
        finally:
            os.close(log_fd)
        started = time.time()
        pid = self._keeper_pid(keeper)
        handle = EnvoyHandle(pid, os.pidfd_open(pid), self.exit_path, keeper)
        with self._lock:
            self._proc = handle
        try:
            EnvoyRecord(
                pid, started, file_sha256(self.bootstrap_path), str(self.bootstrap_path), str(self.binary)
            ).save(self.record_path)
        except OSError as exc:
            log.warning(
                "cannot record Envoy in %s (a restarted agent will not adopt it): %s", self.record_path, exc
            )
        self._start_tail(from_end=False)
        who = self._user.name if self._user else "the current user"
        log.info("started Envoy pid %d as %s", pid, who)

    def _keeper_pid(self, keeper: subprocess.Popen[bytes]) -> int:
        """Envoy's pid, as its keeper reports it (within 10 s)."""
        pid_file = self.exit_path.with_name(self.exit_path.name + ".pid")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return int(pid_file.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.01)
        keeper.kill()
        keeper.wait()
        raise VmagentError(f"Envoy's keeper shell did not report Envoy's pid in {pid_file}")

    def _start_tail(self, from_end: bool) -> None:
        if self._tail is not None and self._tail.is_alive():
            return  # the running tail follows the truncated file from its start
        self._tail = threading.Thread(target=self._relay, args=(from_end,), name="envoy-log", daemon=True)
        self._tail.start()

    def _relay(self, from_end: bool) -> None:
        """Follow Envoy's log file until the supervisor stops, relaying each line (see the docstring)."""
        try:
            f = open(self.log_path, "rb")
        except OSError as exc:
            log.warning("cannot read Envoy's log %s: %s", self.log_path, exc)
            return
        with f:
            if from_end:
                f.seek(0, os.SEEK_END)
            partial = b""
            while True:
                chunk = f.readline()
                if chunk.endswith(b"\n"):
                    self._relay_line(partial + chunk)
                    partial = b""
                    continue
                partial += chunk
                stopping = self._stopping.is_set() and self.pid() is None
                if stopping:
                    if partial:
                        self._relay_line(partial)
                    return
                try:
                    size = os.fstat(f.fileno()).st_size
                    if size < f.tell():  # truncated: a new Envoy, or the cap below
                        f.seek(0)
                        partial = b""
                    elif size > LOG_CAP:
                        os.truncate(self.log_path, 0)
                except OSError:
                    pass
                time.sleep(_TAIL_POLL)

    def _relay_line(self, raw: bytes) -> None:
        pid = self.pid() or 0
        line = raw.decode("utf-8", "replace").rstrip("\n")
        level_name, _, rest = line.partition("|")
        level = _LEVELS.get(level_name)
        if level is None:
            envoy_log.info("[%d] %s", pid, line)
            return
        component, _, msg = rest.partition("|")
        envoy_log.log(level, "[%d][%s] %s", pid, component, msg)

    def _supervise(self) -> None:
        crashes = 0
        while not self._stopping.is_set():
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            self._last_exit = code
            how = "an unknown status (adopted)" if code is None else str(code)
            if self._stopping.is_set():
                log.info("Envoy pid %d exited with %s", proc.pid, how)
                return
            self.record_path.unlink(missing_ok=True)
            proc.close()
            crashes = 1 if time.monotonic() - started >= self._stable_after else crashes + 1
            delay = min(self._restart_max, self._restart_initial * 2 ** (crashes - 1))
            log.warning("Envoy pid %d exited with %s; restarting in %.1fs", proc.pid, how, delay)
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
            except VmagentError as exc:
                log.error("%s", exc)
                with self._lock:
                    self._proc = None
                return
            self._restarts += 1
            self._m_restarts.inc()

    def _drain(self, proc: EnvoyHandle) -> None:
        try:
            status, _ = admin_request(self.admin, "POST", "/drain_listeners?graceful", timeout=2)
        except OSError as exc:
            log.info("could not ask Envoy to drain (%s); terminating it", exc)
            return
        if status != 200:
            log.info("Envoy refused to drain (HTTP %d); terminating it", status)
            return
        deadline = time.monotonic() + self._drain_timeout
        while time.monotonic() < deadline and proc.running():
            try:
                if self.active_connections() == 0:
                    break
            except (OSError, ValueError):
                break
            time.sleep(0.1)
        log.info("Envoy drained; stopping it")
