"""The WorkloadGroup's readiness probe (Istio's ``ReadinessProbe``), run by the agent.

Handlers: ``httpGet`` (path, port, host, scheme, httpHeaders; success is a status 200-399, redirects are
not followed, HTTPS certificates are not verified, as Kubernetes probes do), ``tcpSocket`` (a connect),
``exec`` (exit status 0) and ``grpc`` (``grpc.health.v1.Health/Check`` answers SERVING).
Timing as in Kubernetes, 0 or absent meaning the default: ``initialDelaySeconds`` 0, ``periodSeconds``
10, ``timeoutSeconds`` 1, ``successThreshold`` 1, ``failureThreshold`` 3. The host defaults to
``localhost`` (every address it resolves to is tried).

The workload starts unhealthy. :class:`Prober` reports the state after the first probe, then every
change: healthy after ``successThreshold`` successes in a row, unhealthy after ``failureThreshold``
failures in a row.

HTTP and TCP probe sockets carry ``SO_MARK`` = ``BYPASS_MARK`` so iptables capture leaves them alone
(without CAP_NET_ADMIN the mark is skipped). gRPC Python offers no hook on its sockets, so gRPC probes
are unmarked; capture does not redirect loopback traffic, which is where probes normally go.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmagent.common import constants
from vmagent.common.errors import CommandError, ConfigError, VmagentError
from vmagent.common.proc import run

log = logging.getLogger(__name__)

_SO_MARK = getattr(socket, "SO_MARK", 36)
DEFAULT_HOST = "localhost"
USER_AGENT = "vmagent-probe/1"

OnTransition = Callable[[bool, str], None]
Check = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class ProbeConfig:
    """A parsed probe: exactly one of the handler fields is set."""

    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    http: dict[str, Any] | None = None
    tcp: dict[str, Any] | None = None
    exec_command: list[str] | None = None
    grpc: dict[str, Any] | None = None
    source: str = "spec.probe"
    handler: str = field(default="", compare=False)


def _num(spec: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = spec.get(key)
    if value is None or value == 0:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}.{key}: expected a non-negative number, got {value!r}")
    return float(value)


def _port(handler: Mapping[str, Any], where: str) -> int:
    port = handler.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}.port: expected a port number 1-65535, got {port!r}")
    return port


def parse_probe(spec: Mapping[str, Any], where: str = "spec.probe") -> ProbeConfig:
    """A :class:`ProbeConfig` from the probe's YAML/JSON; ConfigError names ``where`` and the field."""
    handlers = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if spec.get(k) is not None]
    if len(handlers) != 1:
        raise ConfigError(
            f"{where}: exactly one of httpGet, tcpSocket, exec or grpc is required (got {handlers or 'none'})"
        )
    kind = handlers[0]
    h = spec[kind]
    if not isinstance(h, Mapping):
        raise ConfigError(f"{where}.{kind}: expected a mapping")
    hw = f"{where}.{kind}"
    cfg: dict[str, Any] = {
        "initial_delay": _num(spec, "initialDelaySeconds", 0.0, where),
        "period": _num(spec, "periodSeconds", 10.0, where),
        "timeout": _num(spec, "timeoutSeconds", 1.0, where),
        "success_threshold": int(_num(spec, "successThreshold", 1, where)),
        "failure_threshold": int(_num(spec, "failureThreshold", 3, where)),
        "source": where,
        "handler": kind,
    }
    if kind == "httpGet":
        scheme = str(h.get("scheme") or "HTTP").upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ConfigError(f"{hw}.scheme: expected HTTP or HTTPS, got {h.get('scheme')!r}")
        headers = []
        for i, hd in enumerate(h.get("httpHeaders") or []):
            if not isinstance(hd, Mapping) or not hd.get("name"):
                raise ConfigError(f"{hw}.httpHeaders[{i}].name: required")
            headers.append((str(hd["name"]), str(hd.get("value", ""))))
        path = str(h.get("path") or "/")
        cfg["http"] = {
            "port": _port(h, hw),
            "host": str(h.get("host") or DEFAULT_HOST),
            "path": path if path.startswith("/") else "/" + path,
            "scheme": scheme,
            "headers": headers,
        }
    elif kind == "tcpSocket":
        cfg["tcp"] = {"port": _port(h, hw), "host": str(h.get("host") or DEFAULT_HOST)}
    elif kind == "exec":
        command = h.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise ConfigError(f"{hw}.command: expected a non-empty list of strings")
        cfg["exec_command"] = list(command)
    else:
        cfg["grpc"] = {"port": _port(h, hw), "service": str(h.get("service") or "")}
    return ProbeConfig(**cfg)


# -- checks -------------------------------------------------------------------------------------


def _set_mark(sock: socket.socket, mark: int | None) -> None:
    if mark is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, mark)
    except PermissionError:
        pass  # no CAP_NET_ADMIN: the probe goes unmarked
    except OSError as exc:
        log.debug("probe: cannot set SO_MARK %#x: %s", mark, exc)


def marked_connect(host: str, port: int, timeout: float, mark: int | None) -> socket.socket:
    """A TCP connection to ``host:port`` (each resolved address in turn) from a socket carrying ``mark``."""
    last: OSError | None = None
    for family, kind, proto, _name, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            _set_mark(sock, mark)
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last if last is not None else OSError(f"{host} resolves to no address")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, mark: int | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self._mark = mark

    def connect(self) -> None:
        self.sock = marked_connect(self.host, self.port, float(self.timeout or 1.0), self._mark)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, timeout: float, mark: int | None) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # as Kubernetes HTTPS probes: no verification
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._mark = mark
        self._ctx = ctx

    def connect(self) -> None:
        sock = marked_connect(self.host, self.port, float(self.timeout or 1.0), self._mark)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def http_check(cfg: Mapping[str, Any], timeout: float, mark: int | None) -> Check:
    host, port, path = cfg["host"], int(cfg["port"]), cfg["path"]
    url = f"{cfg['scheme'].lower()}://{_host_port(host, port)}{path}"
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    headers.update(dict(cfg["headers"]))

    def check() -> tuple[bool, str]:
        cls = _HTTPSConnection if cfg["scheme"] == "HTTPS" else _HTTPConnection
        conn = cls(host, port, timeout, mark)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            return False, f"HTTP GET {url}: {exc or type(exc).__name__}"
        finally:
            conn.close()
        ok = 200 <= resp.status < 400
        return ok, f"HTTP GET {url}: {resp.status} {resp.reason}"

    return check


def tcp_check(cfg: Mapping[str, Any], timeout: float, mark: int | None) -> Check:
    host, port = cfg["host"], int(cfg["port"])
    target = _host_port(host, port)

    def check() -> tuple[bool, str]:
        try:
            marked_connect(host, port, timeout, mark).close()
        except OSError as exc:
            return False, f"TCP connect {target}: {exc.strerror or exc}"
        return True, f"TCP connect {target}: connected"

    return check


def exec_check(command: list[str], timeout: float) -> Check:
    shown = " ".join(command)

    def check() -> tuple[bool, str]:
        try:
            run(command, timeout=timeout)
        except CommandError as exc:
            return False, f"exec {shown!r}: {exc.stderr.strip()[-200:] or f'exit status {exc.returncode}'}"
        except VmagentError as exc:
            return False, f"exec {shown!r}: {exc}"
        return True, f"exec {shown!r}: exit status 0"

    return check


class GrpcCheck:
    """``grpc.health.v1.Health/Check`` over one plaintext channel kept for the prober's life."""

    def __init__(self, cfg: Mapping[str, Any], timeout: float, host: str = DEFAULT_HOST) -> None:
        self._target = _host_port(host, int(cfg["port"]))
        self._service = str(cfg["service"])
        self._timeout = timeout
        self._channel = grpc.insecure_channel(self._target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    def __call__(self) -> tuple[bool, str]:
        what = f"gRPC health {self._target}" + (f" service {self._service!r}" if self._service else "")
        try:
            resp = self._stub.Check(
                health_pb2.HealthCheckRequest(service=self._service), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            return False, f"{what}: {exc.code().name}: {exc.details()}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return resp.status == health_pb2.HealthCheckResponse.SERVING, f"{what}: {status}"

    def close(self) -> None:
        self._channel.close()


def make_check(cfg: ProbeConfig, mark: int | None = constants.BYPASS_MARK) -> Check:
    if cfg.http is not None:
        return http_check(cfg.http, cfg.timeout, mark)
    if cfg.tcp is not None:
        return tcp_check(cfg.tcp, cfg.timeout, mark)
    if cfg.exec_command is not None:
        return exec_check(cfg.exec_command, cfg.timeout)
    assert cfg.grpc is not None
    return GrpcCheck(cfg.grpc, cfg.timeout)


# -- thresholds and the thread ------------------------------------------------------------------


class Thresholds:
    """The probe state machine: starts unhealthy; ``observe`` says whether to report."""

    def __init__(self, success_threshold: int, failure_threshold: int) -> None:
        self._success_threshold = max(1, success_threshold)
        self._failure_threshold = max(1, failure_threshold)
        self.healthy = False
        self._reported = False
        self._successes = 0
        self._failures = 0

    def observe(self, ok: bool) -> bool:
        """Count one result; True when it changed the state or is the first result."""
        changed = False
        if ok:
            self._successes += 1
            self._failures = 0
            if not self.healthy and self._successes >= self._success_threshold:
                self.healthy = changed = True
        else:
            self._failures += 1
            self._successes = 0
            if self.healthy and self._failures >= self._failure_threshold:
                self.healthy = False
                changed = True
        first = not self._reported
        self._reported = True
        return changed or first


class Prober:
    """Runs a probe every period in a thread; ``on_transition(healthy, message)`` on the first result
    and on every change of state (from the prober thread)."""

    def __init__(
        self,
        probe: Mapping[str, Any] | ProbeConfig,
        on_transition: OnTransition,
        mark: int | None = constants.BYPASS_MARK,
        check: Check | None = None,
    ) -> None:
        self.config = probe if isinstance(probe, ProbeConfig) else parse_probe(probe)
        self._on_transition = on_transition
        self._check = check or make_check(self.config, mark)
        self._state = Thresholds(self.config.success_threshold, self.config.failure_threshold)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self.last_message = "not probed yet"
        self.last_result: bool | None = None

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._state.healthy

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.config.timeout + 5)
        close = getattr(self._check, "close", None)
        if callable(close):
            close()

    def probe_once(self) -> bool:
        """Run the check once and report if needed; returns the state after it."""
        try:
            ok, message = self._check()
        except Exception as exc:  # a bug in a check must not kill the prober
            log.exception("probe failed unexpectedly")
            ok, message = False, f"probe error: {exc}"
        with self._lock:
            report = self._state.observe(ok)
            healthy = self._state.healthy
            self.last_message = message
            self.last_result = ok
        if report:
            log.info("probe: %s (%s)", "healthy" if healthy else "unhealthy", message)
            try:
                self._on_transition(healthy, message)
            except Exception:
                log.exception("probe transition callback failed")
        return healthy

    def _run(self) -> None:
        if self._stop.wait(self.config.initial_delay):
            return
        while True:
            started = time.monotonic()
            self.probe_once()
            if self._stop.wait(max(0.0, self.config.period - (time.monotonic() - started))):
                return
