"""``vmagent run``: the long-running agent that wires identity, rotation, Envoy, capture and DNS.

Start order: rotation, SDS and the xDS proxy (Envoy's only links), the DNS proxy, the status server,
then Envoy (or the Envoy an earlier agent left running is adopted: it reconnects to the SDS and xDS
sockets, recreated at the same paths, by itself). Capture is applied only once Envoy is live with its first config ACKed, so traffic is never
redirected to a proxy that cannot take it; then systemd hears READY=1. Stop order: capture removed,
Envoy drained, then the rest.

``vmagent leave`` reaches the daemon over the control socket (``vmagent/agent/control.py``) and runs
:meth:`Agent.leave`: deregister and wait until the control plane confirms the endpoint left EDS on every
proxy, drain Envoy's inbound listener, remove capture, then stop (exit status 0, so systemd's
``Restart=on-failure`` does not bring the agent back).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from vmagent.agent import privileges
from vmagent.agent.als_server import AccessLogServer
from vmagent.agent.capture import CaptureManager
from vmagent.agent.capture_config import CaptureConfig
from vmagent.agent.config import AgentConfig, split_host_port
from vmagent.agent.control import ControlServer, Progress, control_socket, left_marker, systemd_unit
from vmagent.agent.cpchannel import ControlPlaneChannel
from vmagent.agent.dns_config import DnsConfig
from vmagent.agent.dns_table import NameTable
from vmagent.agent.envoy_admin import (
    AdminEndpoint,
    admin_request,
    describe,
    join_proxy_group,
    prepare_admin_dir,
)
from vmagent.agent.envoy_bootstrap import (
    BootstrapParams,
    find_envoy_binary,
    render_bootstrap,
    write_bootstrap,
)
from vmagent.agent.envoy_process import EnvoySupervisor
from vmagent.agent.envoy_runtime import lookup_proxy_user, prepare_runtime_dir
from vmagent.agent.gateway import FileCertificates, gateway_capture, parse_gateway
from vmagent.agent.identity import Identity, IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.probes import Prober
from vmagent.agent.registration import RegisterInfo, RegistrationClient
from vmagent.agent.request_metrics import LocalWorkload, RequestMetrics, mesh_host
from vmagent.agent.rotation import Rotator
from vmagent.agent.sds import SdsServer
from vmagent.agent.sections import parse_envoy, parse_identity, parse_registration, parse_status
from vmagent.agent.status_server import StatusServer, compose_readiness, envoy_metrics_source
from vmagent.agent.xds_proxy import XdsProxy
from vmagent.common import constants
from vmagent.common.errors import VmagentError
from vmagent.common.fsutil import atomic_write
from vmagent.common.metrics import Registry, register_process_metrics
from vmagent.common.sdnotify import Notifier

if TYPE_CHECKING:  # imported by DnsConfig.build only when the DNS proxy is on (dnslib costs RSS)
    from pathlib import Path

    from vmagent.agent.dns import DnsProxy
    from vmagent.agent.pod import PodSettings

log = logging.getLogger(__name__)

READY_POLL = 0.1
DRAIN_TIMEOUT = 5.0  # how long a leave waits for Envoy's inbound connections to close


def detect_address(cp_address: str) -> str:
    """The local address this VM uses to reach the control plane (no packet is sent)."""
    host, port = split_host_port(cp_address, "control_plane.mtls_address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
        except OSError as exc:
            raise VmagentError(
                f"cannot find this VM's address towards {cp_address}: {exc}; set workload.address"
            ) from exc
        return str(s.getsockname()[0])


def exclude_control_plane(capture: CaptureConfig, cp_address: str) -> CaptureConfig:
    """The agent (root) talks to the control plane directly: keep those addresses out of capture."""
    host, port = split_host_port(cp_address, "control_plane.mtls_address")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise VmagentError(f"cannot resolve the control plane address {host!r}: {exc}") from exc
    nets = {ipaddress.ip_network(str(info[4][0])) for info in infos}
    extra = tuple(n for n in sorted(nets, key=str) if n not in capture.exclude_outbound_cidrs)
    return dataclasses.replace(capture, exclude_outbound_cidrs=capture.exclude_outbound_cidrs + extra)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


class LinkTimes:
    """When the registration link last came up and went down, as observed (within about a second)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up: bool | None = None
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None

    def observe(self, connected: bool) -> None:
        with self._lock:
            if connected == self._up:
                return
            if connected:
                self.connected_at = time.time()
            elif self._up is not None:  # never connected yet is not a disconnect
                self.disconnected_at = time.time()
            self._up = connected


class Agent:
    def __init__(
        self,
        paths: AgentPaths,
        notifier: Notifier | None = None,
        reissue: Callable[[], Identity] | None = None,
    ) -> None:
        """``reissue``: pod mode's certificate from the ServiceAccount token (vmagent/agent/pod.py)."""
        self.paths = paths
        self.pod_mode = reissue is not None
        self.config = cfg = AgentConfig.load(paths.config_file)
        src = cfg.source
        self.gateway_cfg = parse_gateway(cfg.sections.get("gateway"), src, paths.config_dir)
        self.capture_cfg = exclude_control_plane(
            CaptureConfig.from_mapping(gateway_capture(cfg.sections.get("capture"), self.gateway_cfg), src),
            cfg.cp_mtls_address,
        )
        self.dns_cfg = DnsConfig.from_mapping(cfg.sections.get("dns"), src)
        self.envoy_cfg = parse_envoy(cfg.sections.get("envoy"), src)
        self.status_cfg = parse_status(cfg.sections.get("status"), src)
        self.identities = IdentityStore(paths)
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._leave_lock = threading.Lock()
        self.leave_state: dict[str, Any] | None = None  # set by leave(); shown in status
        self.link = LinkTimes()
        self.started_at = datetime.datetime.now(datetime.UTC)
        ident = self.identities.load()
        if ident.expired():
            raise VmagentError(
                f"the workload certificate expired at {ident.not_after.isoformat()}; "
                "get a new token and run `vmagent join --rejoin`"
            )
        self.address = cfg.address or detect_address(cfg.cp_mtls_address)
        self.metrics = Registry()
        register_process_metrics(self.metrics)
        self.channel = ControlPlaneChannel(cfg.cp_mtls_address, cfg.server_name, self.identities)
        ident_cfg = parse_identity(cfg.sections.get("identity"), src)
        self.rotator = Rotator(
            self.identities,
            self.channel.get,
            key_algorithm=ident_cfg.key_algorithm,
            ttl_seconds=ident_cfg.cert_ttl_seconds,
            reissue=reissue,
        )
        self.names = NameTable(namespace=cfg.namespace)
        self.group = _read_group(paths)
        reg_cfg = self.registration_cfg = parse_registration(cfg.sections.get("registration"), src)
        self.registration: RegistrationClient | None = None
        if reg_cfg.enabled:
            template = (self.group.get("spec") or {}).get("template") or {}
            info = RegisterInfo(
                group=cfg.group,
                namespace=cfg.namespace,
                address=self.address,
                labels=dict(reg_cfg.labels),
                ports={str(k): int(v) for k, v in (template.get("ports") or {}).items()},
                hostname=socket.gethostname(),
            )
            self.registration = RegistrationClient(self.channel.get, info, on_name_table=self._on_name_table)
        probe = (self.group.get("spec") or {}).get("probe")
        self.prober: Prober | None = None
        if probe and self.registration is not None:
            self.prober = Prober(probe, self.registration.set_health)
        self.capture = CaptureManager(self.capture_cfg) if self.capture_cfg.enabled else None
        self.capture_applied = False
        self.capture_error = ""
        self.ready = False
        self.sds: SdsServer | None = None
        self.als: AccessLogServer | None = None
        self.xds: XdsProxy | None = None
        self.envoy: EnvoySupervisor | None = None
        self.dns: list[DnsProxy] = []
        self.status_server: StatusServer | None = None
        self.control: ControlServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def _on_name_table(self, table: dict[str, list[str]]) -> None:
        try:
            self.names.replace(table)
        except VmagentError as exc:
            log.error("name table from the control plane refused, keeping the previous one: %s", exc)

    def start(self) -> None:
        left_marker(self.paths.state_dir).unlink(missing_ok=True)  # running again: a new registration
        self.rotator.start()
        if self.registration is not None:
            self.registration.start()
        if self.prober is not None:
            self.prober.start()
        e = self.envoy_cfg
        if e.enabled:
            user = lookup_proxy_user(e.run_as) if e.run_as else None
            gid = user.gid if user else None
            if gid is not None:  # reach Envoy's 0660 admin socket; give our sockets its group (no CAP_CHOWN)
                join_proxy_group(gid)
            prepare_runtime_dir(self.paths.runtime_dir, gid)
            admin: AdminEndpoint = e.admin_tcp() or prepare_admin_dir(self.paths.runtime_dir, gid)
            binary = find_envoy_binary(e.binary)
            g = self.gateway_cfg
            files = FileCertificates(g, forbidden_dirs=[self.paths.state_dir]) if g.enabled else None
            self.sds = SdsServer(
                self.identities, self.paths.sds_socket, peer_gid=gid, metrics=self.metrics,
                files=files, file_poll_interval=g.poll_interval_seconds,
            )  # fmt: skip
            self.sds.start()
            self.xds = XdsProxy(self.paths.xds_socket, self.channel.get, peer_gid=gid, metrics=self.metrics)
            self.xds.start()
            self.als = self._access_log_server(gid)
            self.als.start()
            bootstrap = self.paths.runtime_dir / "envoy-bootstrap.json"
            params = dataclasses.replace(
                self._bootstrap_params(), admin=admin, admin_shared_with_group=bool(user)
            )
            write_bootstrap(bootstrap, render_bootstrap(params))
            self.envoy = EnvoySupervisor(
                binary, bootstrap, user.name if user else None, admin,
                concurrency=e.concurrency, log_level=e.log_level, metrics=self.metrics,
                bind_privileged_ports=self.gateway_cfg.enabled,
                record_path=self.paths.runtime_dir / "envoy.json", log_path=self.paths.runtime_dir / "envoy.log",
            )  # fmt: skip
        if self.dns_cfg.enabled:
            self.dns = self.dns_cfg.build(self.names)
            for proxy in self.dns:
                proxy.start()
        sources = [self.metrics.render]
        if self.envoy is not None:
            sources.append(envoy_metrics_source(self.envoy.admin))
        self.status_server = StatusServer(
            self.status_cfg.host, self.status_cfg.port, self.readiness, sources, status_fn=self.status,
            metrics=self.metrics,
        )  # fmt: skip
        self.status_server.start()
        if not self.paths.runtime_dir.is_dir():
            prepare_runtime_dir(self.paths.runtime_dir, None)
        self.control = ControlServer(control_socket(self.paths.runtime_dir), {"leave": self.leave})
        self.control.start()
        if self.envoy is not None:
            self.envoy.start()
        log.info("agent started as %s at %s", self.identities.current().spiffe_id, self.address)

    def _access_log_server(self, gid: int | None) -> AccessLogServer:
        """Istio's request metrics (istio_*), aggregated from Envoy's access logs, on the status port."""
        labels = self._bootstrap_params().labels
        ns = self.config.namespace

        def local() -> LocalWorkload:
            principal = str(self.identities.current().spiffe_id)
            return LocalWorkload(
                self.config.group, ns, principal, labels.get("app", ""), labels.get("version", "")
            )

        metrics = RequestMetrics(local, lambda host: mesh_host(host, self.names.__contains__, ns))
        self.metrics.collectors.register(metrics)
        return AccessLogServer(metrics, self.paths.als_socket, peer_gid=gid, registry=self.metrics)

    def _bootstrap_params(self) -> BootstrapParams:
        c, e = self.config, self.envoy_cfg
        group = self.group
        labels = {**((group.get("spec") or {}).get("metadata") or {}).get("labels", {})}
        labels.update(self.registration_cfg.labels)
        return BootstrapParams(
            node_ip=self.address,
            name=f"{c.group}-{self.address.replace(':', '-').replace('.', '-')}",
            namespace=c.namespace,
            workload_name=c.group,
            labels={str(k): str(v) for k, v in labels.items()},
            service_account=c.service_account,
            xds_socket=self.paths.xds_socket,
            sds_socket=self.paths.sds_socket,
            als_socket=self.paths.als_socket,
            prometheus_port=e.prometheus_port,
            readiness_port=e.readiness_port,
            status_port=self.status_cfg.port,
            delta_xds=e.delta_xds,
            mesh_id=c.trust_domain,
            proxy_type="router" if self.gateway_cfg.enabled else "sidecar",
        )

    def readiness(self) -> tuple[bool, str]:
        if self.envoy is None or self.xds is None:
            ident = self.identities.current()
            return (not ident.expired(), "ok" if not ident.expired() else "certificate expired")
        check = compose_readiness(
            self.envoy.live, self.xds.acked, lambda: self.identities.current().not_after
        )
        return check()

    def run_forever(self) -> None:
        """Wait for readiness, apply capture, tell systemd; then pet the watchdog until stopped."""
        interval = self.notifier.watchdog_interval or 5.0
        next_pet = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_pet:
                self.notifier.watchdog()
                next_pet = now + interval
            if self.registration is not None:
                self.link.observe(self.registration.connected)
            leaving = self.leave_state is not None and self.leave_state["state"] != "failed"
            if not self.ready and not leaving:  # a leave removes capture: never apply it again
                ok, reason = self.readiness()
                if ok:
                    self._became_ready()
                else:
                    self.notifier.status(f"waiting: {reason}")
            self._stop.wait(READY_POLL if not self.ready else min(interval, 1.0))

    def _became_ready(self) -> None:
        if self.capture is not None and not self.capture_applied:
            try:
                self.capture.apply()
                self.capture_applied = True
            except VmagentError as exc:
                self.capture_error = str(exc)
                log.error("traffic capture failed: %s", exc)
                raise
        self.ready = True
        self.notifier.ready("ready")
        log.info("agent ready")

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        self.notifier.stopping()
        if self.control is not None:
            self.control.stop()
        if self.capture is not None and self.capture_applied:
            try:
                self.capture.clean()
                self.capture_applied = False
            except VmagentError as exc:
                log.error("removing capture failed: %s", exc)
        if self.envoy is not None:
            self.envoy.stop()
        if self.status_server is not None:
            self.status_server.stop()
        for proxy in self.dns:
            proxy.stop()
        if self.xds is not None:
            self.xds.stop()
        if self.als is not None:
            self.als.stop()
        if self.sds is not None:
            self.sds.stop()
        if self.prober is not None:
            self.prober.stop()
        if self.registration is not None:
            self.registration.stop()
        self.rotator.stop()
        self.channel.close()

    # -- leave ----------------------------------------------------------------------------------

    def leave(self, request: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        """Leave the mesh (the control socket's ``leave``): deregister, drain, remove capture, stop.

        ``request``: ``timeout`` (seconds to wait for the control plane's confirmation) and ``force``
        (go on when it did not confirm). Raises VmagentError, leaving the agent running, when the
        control plane neither confirmed nor removed the entry and ``force`` is false. A second call
        while the first runs waits for it and returns the same result.
        """
        timeout = float(request.get("timeout", 30.0))
        force = bool(request.get("force", False))
        with self._leave_lock:
            if self.leave_state is not None and self.leave_state["state"] == "done":
                return dict(self.leave_state["result"])
            started = _now()
            self.leave_state = {"state": "deregistering", "started_at": started, "message": ""}
            warnings: list[str] = []
            reg = self.registration
            entry = reg.entry_name if reg is not None else ""
            confirmed = False
            if reg is None:
                if not force:
                    self.leave_state = None
                    raise VmagentError(
                        "this agent does not register itself (registration.enabled is false): its "
                        "WorkloadEntry is the operator's; delete it on the control plane, then run "
                        "`vmagent leave --force`"
                    )
                warnings.append("registration is off: the operator's WorkloadEntry was not touched")
            else:
                progress(f"deregistering {entry or 'this workload'} and waiting for every proxy")
                confirmed = reg.leave(timeout)
                removed = bool(reg.status().get("left"))
                if not confirmed and removed:
                    warnings.append(f"the control plane removed the entry but: {reg.last_error}")
                elif not confirmed and not force:
                    self.leave_state = {
                        "state": "failed", "started_at": started, "message": str(reg.last_error or ""),
                    }  # fmt: skip
                    raise VmagentError(
                        f"the control plane did not confirm the leave within {timeout:g}s "
                        f"({reg.last_error or 'no answer'}); the agent keeps running and leaves as soon as "
                        "the control plane answers: run `vmagent leave` again, or `vmagent leave --force` "
                        "to stop now (proxies then keep the endpoint until the heartbeat timeout)"
                    )
                elif not confirmed:
                    warnings.append(f"not confirmed by the control plane: {reg.last_error or 'no answer'}")
            if self.prober is not None:
                self.prober.stop()
            self.leave_state["state"] = "draining"
            if self.envoy is not None:
                progress("draining Envoy's inbound connections")
                left_open = self._drain_inbound(DRAIN_TIMEOUT)
                if left_open:
                    warnings.append(f"{left_open} inbound connections still open after {DRAIN_TIMEOUT:g}s")
            if self.capture is not None and self.capture_applied:
                progress("removing traffic capture")
                try:
                    self.capture.clean()
                    self.capture_applied = False
                except VmagentError as exc:
                    warnings.append(f"removing capture failed: {exc}")
            result = {
                "entry": entry,
                "confirmed": confirmed,
                "left_at": _now(),
                "warnings": warnings,
                "pid": os.getpid(),
                "systemd_unit": systemd_unit() if os.environ.get("INVOCATION_ID") else None,
            }
            try:
                doc = {k: result[k] for k in ("entry", "confirmed", "left_at")}
                atomic_write(left_marker(self.paths.state_dir), json.dumps(doc) + "\n", 0o644)
            except OSError as exc:
                log.warning("cannot record the leave in %s: %s", self.paths.state_dir, exc)
            self.leave_state = {"state": "done", "started_at": started, "message": "", "result": result}
            log.info("left the mesh (entry %s, confirmed %s); stopping", entry or "-", confirmed)
            self._stop.set()  # run_forever returns and run_agent stops everything else
            return result

    def _drain_inbound(self, timeout: float) -> int:
        """Ask Envoy to drain its inbound listener and wait until its connections closed; returns how
        many were still open at the deadline (0 when Envoy does not answer: nothing to wait for)."""
        assert self.envoy is not None
        port = self.envoy.admin
        try:
            status, _ = admin_request(port, "POST", "/drain_listeners?graceful&inboundonly", timeout=2)
        except OSError as exc:
            log.info("cannot ask Envoy to drain: %s", exc)
            return 0
        if status != 200:
            log.info("Envoy refused to drain (HTTP %d)", status)
            return 0
        stat = f"^listener\\..*_{constants.INBOUND_PORT}\\.downstream_cx_active$"
        deadline = time.monotonic() + timeout
        active = 0
        while True:
            try:
                code, body = admin_request(port, "GET", f"/stats?format=json&filter={stat}", timeout=1)
                stats = json.loads(body).get("stats", []) if code == 200 else []
                active = sum(int(s.get("value", 0)) for s in stats)
            except (OSError, ValueError):
                return 0
            if active == 0 or time.monotonic() >= deadline:
                return active
            time.sleep(0.1)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document of ``GET /status`` and ``vmagent status -o json`` (documented in docs/status.md)."""
        ident = self.identities.current()
        r = self.rotator
        ok, reason = self.readiness()
        leave = self.leave_state
        if leave is not None and leave["state"] != "failed":
            state = "left" if leave["state"] == "done" else "leaving"
        else:
            state = "ready" if self.ready else "starting"
        doc: dict[str, Any] = {
            "state": state,
            "mode": "pod" if self.pod_mode else "vm",
            "pid": os.getpid(),
            "ready": ok,
            "ready_reason": reason,
            "started_at": self.started_at.isoformat(),
            "identity": {
                "spiffe_id": ident.spiffe_id.uri,
                "serial": f"{ident.serial:x}",
                "not_before": ident.not_before.isoformat(),
                "not_after": ident.not_after.isoformat(),
                "expired": ident.expired(),
                "next_rotation": r.next_rotation.isoformat() if r.next_rotation else None,
                "last_rotation_error": r.last_error,
            },
            "workload": {
                "namespace": self.config.namespace,
                "group": self.config.group,
                "address": self.address,
            },
            "control_plane": {
                "address": self.config.cp_mtls_address,
                "connected": bool(self.xds and self.xds.connected),
                "registered": bool(self.registration and self.registration.connected),
                "last_error": self._link_error(),
            },
            "capture": {
                "enabled": self.capture is not None,
                "applied": self.capture_applied,
                "error": self.capture_error or None,
            },
            "dns": {
                "enabled": bool(self.dns),
                "names": len(self.names),
                **({"queries": self.dns[0].metrics.snapshot()} if self.dns else {}),
            },
            "registration": self._registration_status(),
            "health": self._health_status(),
            "leave": None if leave is None else {k: leave[k] for k in ("state", "started_at", "message")},
        }
        if self.xds is not None:
            doc["xds"] = self.xds.sync_state()
        if self.envoy is not None:
            doc["envoy"] = {
                "pid": self.envoy.pid(),
                "live": self.envoy.live(),
                "admin": describe(self.envoy.admin),
                "restarts": self.envoy.restarts,
                "last_exit_code": self.envoy.last_exit_code,
                "adopted_pid": self.envoy.adopted_pid,
            }
        return doc

    def _link_error(self) -> str | None:
        """Why a link to the control plane is down; None while both are up (an old error is history)."""
        xds, reg = self.xds, self.registration
        if (xds is None or xds.connected) and (reg is None or reg.connected):
            return None
        return (
            (xds.last_error if xds else None)
            or (reg.last_error if reg else None)
            or self.rotator.last_error
            or None
        )

    def _registration_status(self) -> dict[str, Any]:
        reg = self.registration
        if reg is None:
            return {"enabled": False}
        st = reg.status()
        self.link.observe(bool(st["connected"]))
        since = st.get("connected_since")
        return {
            "enabled": True,
            "connected": st["connected"],
            "entry_name": st["entry_name"] or None,
            "connected_at": _iso(since) if since else None,
            "disconnected_at": None if st["connected"] else _iso(self.link.disconnected_at),
            "registrations": reg.registrations,
            "last_error": st["last_error"],
            "left": st["left"],
        }

    def _health_status(self) -> dict[str, Any]:
        reg = self.registration.status() if self.registration is not None else {}
        acked = (reg.get("health") or {}).get("acked")
        if self.prober is None:
            return {
                "probe": False,
                "healthy": True,
                "message": "no probe in the WorkloadGroup",
                "acked": None,
            }
        return {
            "probe": True,
            "healthy": self.prober.healthy,
            "message": self.prober.last_message,
            "acked": acked,
        }


def _read_group(paths: AgentPaths) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(paths.workload_group_file.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def run_agent(paths: AgentPaths, pod: PodSettings | None = None, pod_base_config: Path | None = None) -> int:
    """Run the agent until stopped; ``pod``: pod mode (``pod_base_config``: the image's config file)."""
    reissue = None
    if pod is not None:
        from vmagent.agent import pod as pod_mode

        pod_mode.prepare(pod, paths, base_config=pod_base_config)
        reissue = pod_mode.TokenIssuer(pod).issue
    agent = Agent(paths, reissue=reissue)
    e = agent.envoy_cfg
    # Before any thread starts (capabilities are per thread): keep only what this configuration needs.
    keep = privileges.needed(
        envoy_as_other_user=e.enabled and e.run_as is not None, gateway=agent.gateway_cfg.enabled
    )
    if pod is not None:  # capture was applied by the init step: no NET_ADMIN in the sidecar
        keep -= {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    dropped = privileges.drop_all_but(keep)
    log.info(
        "capabilities kept: %s; %d dropped from the bounding set",
        " ".join(sorted(keep)),
        len(dropped),
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
        agent.run_forever()
    finally:
        agent.stop()
    return 0
