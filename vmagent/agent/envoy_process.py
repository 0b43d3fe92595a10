"""The Envoy supervisor: start Envoy as the proxy user, restart it after a crash, drain it on stop.

* Envoy runs as ``run_as_user`` (default ``vmagent-proxy``; uid and gid looked up by name), or as the
  current user when that is None. It gets ``--use-dynamic-base-id`` so several Envoys on one machine never
  share hot-restart shared memory or domain sockets.
* A crash is followed by a restart after ``restart_initial`` seconds, doubling for each further crash
  in a row up to ``restart_max``; a run that lasted ``stable_after`` seconds resets the sequence.
* Envoy's log lines (stderr) are relayed into the ``vmagent.envoy`` logger at the matching level.
* ``stop()`` drains: ``POST /drain_listeners?graceful`` on the admin API (``admin``: its Unix socket, see
  ``vmagent/agent/envoy_admin.py``), waits up to ``drain_timeout``
  for the listeners' active connections to reach zero, then SIGTERM, then SIGKILL after ``term_timeout``.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from vmagent.agent.envoy_admin import AdminEndpoint, admin_request
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
    ) -> None:
        """``bind_privileged_ports``: give Envoy (running as ``run_as_user``) the ambient capability
        CAP_NET_BIND_SERVICE, through ``setpriv``, so an ingress gateway can listen on 80 and 443."""
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
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
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

    def start(self) -> None:
        """Start Envoy now (raising VmagentError if it cannot be spawned) and supervise it in a thread."""
        if not self.bootstrap_path.is_file():
            raise VmagentError(f"Envoy bootstrap {self.bootstrap_path} does not exist")
        self._stopping.clear()
        self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="envoy-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain Envoy gracefully, then terminate it; returns once it has exited."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._drain(proc)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self._term_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Envoy did not exit %gs after SIGTERM; killing it", self._term_timeout)
                    proc.kill()
                    proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._m_live.set(0)

    # --- state ----------------------------------------------------------------------------------------

    def pid(self) -> int | None:
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

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
        kwargs: dict[str, object] = {}
        cmd = self.command()
        if self._user is not None and self._bind_privileged:
            # setpriv switches user and keeps CAP_NET_BIND_SERVICE as an ambient capability across exec.
            cmd = [
                str(shutil.which("setpriv")),
                f"--reuid={self._user.uid}",
                f"--regid={self._user.gid}",
                "--clear-groups",
                "--inh-caps=+net_bind_service",
                "--ambient-caps=+net_bind_service",
                "--",
                *cmd,
            ]
        elif self._user is not None:
            kwargs = {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(  # a supervised daemon, not a command: proc.run does not apply
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise VmagentError(f"cannot start Envoy {self.binary}: {exc.strerror or exc}") from exc
        with self._lock:
            self._proc = proc
        assert proc.stdout is not None
        threading.Thread(
            target=self._relay, args=(proc.stdout, proc.pid), name="envoy-log", daemon=True
        ).start()
        who = self._user.name if self._user else "the current user"
        log.info("started Envoy pid %d as %s", proc.pid, who)

    @staticmethod
    def _relay(stream: IO[bytes], pid: int) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            level_name, _, rest = line.partition("|")
            level = _LEVELS.get(level_name)
            if level is None:
                envoy_log.info("[%d] %s", pid, line)
                continue
            component, _, msg = rest.partition("|")
            envoy_log.log(level, "[%d][%s] %s", pid, component, msg)
        stream.close()

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
            if self._stopping.is_set():
                log.info("Envoy pid %d exited with %d", proc.pid, code)
                return
            crashes = 1 if time.monotonic() - started >= self._stable_after else crashes + 1
            delay = min(self._restart_max, self._restart_initial * 2 ** (crashes - 1))
            log.warning("Envoy pid %d exited with %d; restarting in %.1fs", proc.pid, code, delay)
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

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            status, _ = admin_request(self.admin, "POST", "/drain_listeners?graceful", timeout=2)
        except OSError as exc:
            log.info("could not ask Envoy to drain (%s); terminating it", exc)
            return
        if status != 200:
            log.info("Envoy refused to drain (HTTP %d); terminating it", status)
            return
        deadline = time.monotonic() + self._drain_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if self.active_connections() == 0:
                    break
            except (OSError, ValueError):
                break
            time.sleep(0.1)
        log.info("Envoy drained; stopping it")
