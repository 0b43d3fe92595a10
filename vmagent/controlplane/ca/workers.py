"""CA worker processes: more cores for joins (``vmagent-cp serve --ca-workers N``).

One control-plane process signs at most about one core's worth of certificates (the GIL). A CA worker is
a separate process, started and supervised by ``serve``, that serves **only the join port** (``--listen``,
TLS): ``IstioCertificateService/CreateCertificate`` with a join token and ``Bootstrap/Join``. It binds
the same address as the main process (gRPC sets SO_REUSEPORT), so the kernel spreads new join
connections over the main process and its workers.

Why only the join port: the kernel spreads *connections*, not calls, and the mutual-TLS port also
carries the ADS and registration streams, whose state lives in the main process. A worker on that port
would receive agents' ADS connections and could only refuse them, so renewals stay in the main process.
The join port carries nothing but the certificate services, so any process may take any connection.

A worker shares everything that must be shared through the state dir: the CA (it loads the same key),
the SQLite store (token use counts are consumed atomically there, issued certificates are recorded
there) and the config sources (WorkloadGroups, watched like the main process does). It issues its own
TLS server certificate from the CA, for the same names, so clients that pin the root see no difference.

Life cycle: the spec travels as one JSON line on the worker's stdin, which then stays open; the worker
prints ``ready`` when it serves and stops when stdin closes (the main process stopped or died) or on
SIGTERM/SIGINT. The main process restarts a worker that exits on its own, with backoff.
"""

from __future__ import annotations

import json
import logging
import select
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from vmagent.common.errors import VmagentError
from vmagent.controlplane.options import ServeOptions
from vmagent.controlplane.state import StateStore, config_sources

log = logging.getLogger(__name__)

READY = "ready"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to serve joins exactly like the main process (no secrets: it reads the CA
    key from the state dir or ``ca_key`` itself)."""

    listen: str
    state_dir: str
    config_dir: str | None
    trust_domain: str
    ca_cert: str | None
    ca_key: str | None
    cert_ttl_s: float
    max_cert_ttl_s: float
    mtls_port: int
    server_names: list[str] = field(default_factory=list)
    mesh_config: dict[str, Any] = field(default_factory=dict)
    log_level: str = "INFO"
    # The cluster whose TokenReview checks pods' ServiceAccount tokens (a path, no secret), if any.
    kubeconfig: str | None = None
    in_cluster: bool = False

    @classmethod
    def for_options(cls, opts: ServeOptions, tls_port: int, mtls_port: int) -> WorkerSpec:
        """The spec for ``serve``'s options, with the ports the main process actually bound."""
        host = opts.listen.rsplit(":", 1)[0]
        return cls(
            listen=f"{host}:{tls_port}",
            state_dir=str(opts.state_dir),
            config_dir=str(opts.config_dir) if opts.config_dir is not None else None,
            trust_domain=opts.trust_domain,
            ca_cert=str(opts.ca_cert) if opts.ca_cert is not None else None,
            ca_key=str(opts.ca_key) if opts.ca_key is not None else None,
            cert_ttl_s=opts.cert_ttl.total_seconds(),
            max_cert_ttl_s=opts.max_cert_ttl.total_seconds(),
            mtls_port=mtls_port,
            server_names=list(opts.server_names),
            mesh_config=dict(opts.mesh_config),
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            kubeconfig=str(opts.kubeconfig) if opts.kubeconfig is not None else None,
            in_cluster=opts.in_cluster,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> WorkerSpec:
        return cls(**json.loads(line))


class _Worker:
    """One worker process, as the main process sees it."""

    def __init__(self, index: int, spec: WorkerSpec) -> None:
        self.index = index
        self._spec = spec
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        # A supervised daemon, not a command that runs to completion: proc.run does not apply.
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmagent.controlplane.ca.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            close_fds=True,
        )
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(self._spec.to_json() + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; reported below
        line = _read_line(proc.stdout, START_TIMEOUT)
        if line.strip() != READY:
            self.stop()
            raise VmagentError(
                f"CA worker {self.index} did not start on {self._spec.listen} "
                f"(exit status {proc.poll()}); its error is in the log above"
            )
        log.info("CA worker %d (pid %d) serves joins on %s", self.index, proc.pid, self._spec.listen)

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()  # the worker stops when its stdin closes
            except BrokenPipeError:
                pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("CA worker %d (pid %d) did not stop in time; killing it", self.index, proc.pid)
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


class CaWorkers:
    """``count`` CA worker processes serving the join port beside the main process; restarted with
    backoff when one exits on its own."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        if count < 1:
            raise VmagentError("--ca-workers must be at least 1 (0 means no workers)")
        self._workers = [_Worker(i + 1, spec) for i in range(count)]
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._supervise, name="ca-workers", daemon=True)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None]

    def start(self) -> None:
        """Start every worker and wait until each serves; raise VmagentError (after stopping those
        started) if one cannot."""
        try:
            for w in self._workers:
                w.start()
        except BaseException:
            self.stop()
            raise
        self._monitor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._monitor.is_alive():
            self._monitor.join(STOP_TIMEOUT)
        for w in self._workers:
            w.stop()

    def _supervise(self) -> None:
        backoff = {w.index: 1.0 for w in self._workers}
        while not self._stopping.wait(0.5):
            for w in self._workers:
                status = w.exited()
                if status is None or self._stopping.is_set():
                    continue
                log.error("CA worker %d exited with status %s; restarting it", w.index, status)
                w.stop()
                if self._stopping.wait(backoff[w.index]):
                    return
                backoff[w.index] = min(backoff[w.index] * 2, MAX_BACKOFF)
                try:
                    w.start()
                    backoff[w.index] = 1.0
                except VmagentError as exc:
                    log.error("%s", exc)


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from ``stream`` (a pipe), or "" at EOF or when ``timeout`` runs out."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


# -- the worker process -----------------------------------------------------------------------------


def serve_worker(spec: WorkerSpec, stop: threading.Event, ready: IO[str]) -> None:
    """Serve the join services on ``spec.listen`` until ``stop`` is set; write READY to ``ready``."""
    import datetime

    import grpc

    from vmagent.controlplane.ca.authority import CaSettings
    from vmagent.controlplane.ca.certservice import CertificateIssuer, MeshInfo, add_join_services
    from vmagent.controlplane.config import ConfigSet
    from vmagent.controlplane.grpc_server import ThreadedServer, server_credentials
    from vmagent.controlplane.registry.services import workload_group_document

    settings = CaSettings(
        spec.trust_domain,
        datetime.timedelta(seconds=spec.cert_ttl_s),
        datetime.timedelta(seconds=spec.max_cert_ttl_s),
    )
    store = StateStore(
        Path(spec.state_dir),
        settings,
        Path(spec.ca_cert) if spec.ca_cert else None,
        Path(spec.ca_key) if spec.ca_key else None,
    )
    configs = ConfigSet(config_sources(Path(spec.config_dir) if spec.config_dir else None, store.state_dir))

    def group_lookup(namespace: str, name: str) -> dict[str, Any] | None:
        return workload_group_document(configs, namespace, name)

    kube = None
    if spec.kubeconfig is not None or spec.in_cluster:
        from vmagent.controlplane.ca.sa_tokens import ServiceAccountTokens
        from vmagent.controlplane.kube.client import KubeClient

        kube = KubeClient.from_config(Path(spec.kubeconfig) if spec.kubeconfig else None, spec.in_cluster)
    issuer = CertificateIssuer(
        store.ca,
        store.tokens,
        store.records,
        group_lookup,
        MeshInfo(spec.trust_domain, spec.mtls_port, spec.mesh_config),
        sa_tokens=ServiceAccountTokens(kube, spec.trust_domain) if kube is not None else None,
    )
    tls_creds, _ = server_credentials(store.ca, spec.server_names)

    def configure(server: grpc.Server) -> None:
        add_join_services(server, issuer)

    from vmagent.controlplane.grpc_limits import join_port_options
    from vmagent.controlplane.xds.runner import DEFAULT_OPTIONS

    server = ThreadedServer(spec.listen, tls_creds, configure, options=join_port_options(DEFAULT_OPTIONS))
    configs.start()
    try:
        server.start()
        ready.write(READY + "\n")
        ready.flush()
        stop.wait()
    finally:
        server.stop()
        configs.stop()
        store.close()
        if kube is not None:
            kube.close()


def main() -> int:
    """Entry point of a worker process (``python -m vmagent.controlplane.ca.workers``)."""
    from vmagent.common.logsetup import setup_logging

    line = sys.stdin.readline()
    if not line:
        return 1
    spec = WorkerSpec.from_json(line)
    setup_logging("vmagent-cp", spec.log_level)
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the main process closed the pipe or is gone
        stop.set()

    threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready, sys.stdout = sys.stdout, sys.stderr  # nobody reads the pipe after "ready": keep it quiet
    try:
        serve_worker(spec, stop, ready)
    except VmagentError as exc:
        logging.getLogger(__name__).error("CA worker cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
