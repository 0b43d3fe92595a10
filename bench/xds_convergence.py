"""xDS convergence: time from a config change until every connected proxy has ACKed it, and RSS per proxy.

Run from the repository root with the project venv: ``python bench/xds_convergence.py`` (``--help``).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).
As root the whole run happens inside a private network namespace (the real Envoy binds the control
plane's listeners 15001/15006 there); otherwise on the host network.

Per size N (a fresh ``vmagent-cp serve`` each time, same state dir):

1. a real agent (``vmagent join`` + ``vmagent run``, capture and DNS off, Envoy as the agent's user)
   connects its Envoy through the agent's ADS proxy; the control plane's RSS then is the *idle* figure;
2. N lightweight ADS clients (bench/xdsclient.py: real gRPC streams over mutual TLS, each with its own
   workload certificate and node id, SotW, ACKing every response) connect from several processes;
   RSS with them connected minus idle, divided by N, is the RSS per proxy;
3. endpoint changes: a new operator WorkloadEntry (address 10.77.x.y) selected by an existing
   ServiceEntry is written into the watched config dir; route changes: a new ServiceEntry host
   (bmk-r-K.bench.svc.cluster.local) on port 8080, which adds a virtual host to the port's
   RouteConfiguration and a cluster with its endpoints (VirtualService routing is not translated yet).
   Each change is timed from just before the file is written until the last client ACKed the last
   response carrying it, and until the real Envoy shows it on its admin API (polled every 20 ms, only
   the resources concerned: the one load assignment; the new cluster and a new route config version).

With ``--namespaces K`` the services (``svc-i``) and clients (``client-i``) go to namespace
``bench-{i mod K}``, two more services to istio-system, the agent to bench-0; the changes above are made
in bench-0, and a third scenario ``system_endpoint`` adds a WorkloadEntry to a service of istio-system.
With ``--sidecar`` every size runs twice, first without and then with a Sidecar in each namespace
(``egress.hosts: ["./*", "istio-system/*"]``): then a bench-0 change must reach bench-0's clients only
(the run fails if another client gets it), an istio-system change still every client, and each client's
CDS (and the real Envoy's) must hold exactly the outbound clusters of its namespace and istio-system
(counted per namespace, checked for every client). The JSON then also has ``sizes_with_sidecar`` and
``sidecar`` (per size both figures and with/without ratios).

The times include the config dir watcher's polling (every 0.2 s, so 0.1 s on average) and the push
debounce (0.1 s) -- what an operator writing a file sees. ``first_ack`` shows the floor of those.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agentproc import BenchAgent
from bench.common import (
    cpu_seconds,
    in_private_netns,
    machine,
    mib,
    progress,
    rerun_in_private_netns,
    rounded,
    rss_bytes,
    run_in_workdir,
    summary_stats,
    wait_until,
)
from bench.cpserver import BenchControlPlane
from bench.xdsclient import ClientSpec, WorkerSpec, node_id, worker_main

NS = "bench"
CLIENT_GROUP = "client"
EDGE_GROUP = "edge"
TARGET_ENDPOINT_P99_S = 1.0
TARGET_ROUTE_P99_S = 2.0
TARGET_RSS_PER_PROXY_MIB = 1.0
MARKER_REGEX = rb"10\.77\.\d+\.\d+|bmk-r-\d+"
MARKER_PREFIXES = (b"10.77.", b"bmk-r-")  # every marker starts with one of these

GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {name}
  namespace: {ns}
spec:
  metadata:
    labels:
      app: {name}
  template:
    serviceAccount: {name}
    ports:
      http: 8080
---
"""

SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts:
  - {name}.{ns}.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {name}
---
"""

ENTRY = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  address: {address}
  serviceAccount: {app}
  labels:
    app: {app}
---
"""

SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: {ns}
spec:
  egress:
  - hosts:
    - "./*"
    - "istio-system/*"
---
"""
SIDECAR_HOSTS = ["./*", "istio-system/*"]
SCENARIOS = ["endpoint", "route", "system_endpoint"]
SIDECAR_FILE = "15-sidecars.yaml"
SYSTEM_NS = "istio-system"
SYSTEM_SERVICES = 2  # ServiceEntries in istio-system when the services are spread over namespaces


def namespaces(count: int) -> list[str]:
    """The application namespaces: ``bench`` alone, or ``bench-0`` .. ``bench-{count-1}``."""
    return [NS] if count <= 1 else [f"{NS}-{k}" for k in range(count)]


def service_namespace(i: int, spaces: list[str]) -> str:
    """Service ``svc-i`` and client ``client-i`` live in namespace ``i mod len(spaces)``."""
    return spaces[i % len(spaces)]


def system_services(spaces: list[str]) -> int:
    return SYSTEM_SERVICES if len(spaces) > 1 else 0


def base_config(services: int, spaces: list[str]) -> dict[str, str]:
    """WorkloadGroups of the clients (every namespace) and the agent (the first), ``services``
    ServiceEntries spread over the namespaces, with two entries each, and with several namespaces
    ``SYSTEM_SERVICES`` more in istio-system (what every Sidecar below lets in)."""
    groups = "".join(GROUP.format(name=CLIENT_GROUP, ns=ns) for ns in spaces)
    groups += GROUP.format(name=EDGE_GROUP, ns=spaces[0])
    placed = [(f"svc-{i}", service_namespace(i, spaces), i) for i in range(services)]
    placed += [(f"sys-{j}", SYSTEM_NS, services + j) for j in range(system_services(spaces))]
    svcs = "".join(SERVICE.format(name=name, ns=ns) for name, ns, _ in placed)
    entries = "".join(
        ENTRY.format(name=f"{name}-{j}", ns=ns, address=f"10.{60 + k // 250}.{k % 250}.{j + 1}", app=name)
        for name, ns, k in placed
        for j in range(2)
    )
    return {"10-groups.yaml": groups, "20-services.yaml": svcs, "30-entries.yaml": entries}


def sidecars(spaces: list[str]) -> str:
    """One Sidecar without a selector per application namespace: egress ``./*`` and ``istio-system/*``."""
    return "".join(SIDECAR.format(ns=ns) for ns in spaces)


def expected_outbound(services: int, spaces: list[str], ns: str, sidecar: bool) -> dict[str, int]:
    """Outbound clusters per service namespace a proxy of ``ns`` must get (one port per service)."""
    out: dict[str, int] = {}
    for i in range(services):
        svc_ns = service_namespace(i, spaces)
        if not sidecar or svc_ns == ns:
            out[svc_ns] = out.get(svc_ns, 0) + 1
    if system_services(spaces):
        out[SYSTEM_NS] = system_services(spaces)
    return out


ROUTE_VERSIONS = "/config_dump?resource=dynamic_route_configs&mask=version_info"


def _dump_path(resource: str, app: str, ns: str) -> str:
    regex = "^" + re.escape(f"outbound|8080||{app}.{ns}.svc.cluster.local") + "$"
    return f"/config_dump?resource={resource}&name_regex={quote(regex)}"


def eds_dump_path(app: str, ns: str) -> str:
    """Envoy's admin path for the load assignment of service ``app`` only (``/clusters`` would list
    every host of every cluster: megabytes per poll with thousands of services)."""
    return _dump_path("dynamic_endpoint_configs", app, ns) + "&include_eds"


def cluster_dump_path(app: str, ns: str) -> str:
    """Envoy's admin path for the cluster of service ``app`` only."""
    return _dump_path("dynamic_active_clusters", app, ns)


def change_address(k: int) -> str:
    return f"10.77.{k // 250}.{k % 250 + 1}"


# -- the parent's view of the clients -------------------------------------------------------------


class Collector:
    """Drains the workers' event queue in a thread: who is ready, and when each client ACKed each marker."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self._lock = threading.Lock()
        self.ready: set[int] = set()
        self.sync: dict[int, dict[str, Any]] = {}
        self.marks: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        self.errors: list[str] = []
        self.done: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, _pid, data = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                if kind == "ready":
                    self.ready.add(int(data))
                elif kind == "sync":
                    self.sync[int(data[0])] = dict(data[1])
                elif kind == "marks":
                    for index, marker, short, t in data:
                        self.marks[marker][short].setdefault(index, t)
                elif kind == "error":
                    self.errors.append(str(data))
                elif kind == "done":
                    self.done.append(dict(data))

    def ready_count(self) -> int:
        with self._lock:
            return len(self.ready)

    def sync_info(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return dict(self.sync)

    def marker(self, marker: str) -> dict[str, dict[int, float]]:
        with self._lock:
            return {short: dict(by_client) for short, by_client in self.marks.get(marker, {}).items()}

    def check(self) -> None:
        with self._lock:
            if self.errors:
                raise RuntimeError(f"ADS client worker failed: {self.errors[0]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Clients:
    """N lightweight ADS clients in ``processes`` spawned worker processes."""

    def __init__(
        self, cp: BenchControlPlane, n: int, processes: int, certs: dict[str, list[Any]], spaces: list[str]
    ) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.stop_event = ctx.Event()
        self.collector = Collector(self.events)
        root_pem = cp.root_pem()
        self.spaces = spaces
        self.namespace = [service_namespace(i, spaces) for i in range(n)]
        specs = []
        for i, ns in enumerate(self.namespace):
            cert = certs[ns][i // len(spaces)]
            specs.append(
                ClientSpec(
                    node_id(f"10.88.{i // 250}.{i % 250 + 1}", f"client-{i}", ns),
                    f"client-{i}",
                    cert.key_pem,
                    cert.chain_pem,
                    ns,
                )
            )
        per = -(-n // processes)
        self.procs = []
        for w in range(processes):
            chunk = specs[w * per : (w + 1) * per]
            if not chunk:
                continue
            spec = WorkerSpec(
                cp.mtls_address, root_pem, NS, CLIENT_GROUP, chunk, w * per, MARKER_REGEX,
                connect_concurrency=8, marker_prefixes=MARKER_PREFIXES,
            )  # fmt: skip
            p = ctx.Process(target=worker_main, args=(spec, self.events, self.stop_event), daemon=True)
            p.start()
            self.procs.append(p)
        self.n = n

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        deadline = start + timeout
        last = -1
        while (count := self.collector.ready_count()) < self.n:
            self.collector.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count}/{self.n} ADS clients got their config within {timeout:g}s")
            if count // 100 != last // 100:
                progress(f"  {count}/{self.n} clients synced")
                last = count
            time.sleep(0.05)
        return time.monotonic() - start

    def close(self) -> list[dict[str, Any]]:
        self.stop_event.set()
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        time.sleep(0.2)
        self.collector.close()
        return self.collector.done


# -- the real Envoy -----------------------------------------------------------------------------


def _has(marker: str) -> Callable[[str], bool]:
    return lambda body: marker in body


def _differs(before: str) -> Callable[[str], bool]:
    return lambda body: bool(body) and body != before


class EnvoyWatch:
    """Polls the agent's Envoy admin API every 20 ms until every check holds; ``seen_at`` is when.

    A check is an admin path and a test of its body; one that held once is not asked again.
    """

    def __init__(self, agent: BenchAgent, checks: list[tuple[str, Callable[[str], bool]]]) -> None:
        self.seen_at: float | None = None
        self._agent, self._checks = agent, list(checks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for path, test in list(self._checks):
                try:
                    body = self._agent.admin(path, timeout=2.0)
                except OSError:
                    body = ""
                if test(body):
                    self._checks.remove((path, test))
            if not self._checks:
                self.seen_at = time.monotonic()
                return
            self._stop.wait(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


# -- one size -----------------------------------------------------------------------------------------


def run_changes(
    cp: BenchControlPlane, agent: BenchAgent, clients: Clients, scenario: str, changes: int, offset: int,
    timeout: float, sidecar: bool,
) -> dict[str, Any]:  # fmt: skip
    """Apply ``changes`` changes of one kind, one at a time; each is timed until all clients that must
    see it ACKed it: every client, or with the Sidecars those of the changed (first) namespace, and
    then no other client may have it."""
    ns = SYSTEM_NS if scenario == "system_endpoint" else clients.spaces[0]
    hidden = sidecar and ns != SYSTEM_NS  # from the clients of other namespaces
    expected = [i for i in range(clients.n) if not hidden or clients.namespace[i] == ns]
    others = {i for i in range(clients.n) if hidden and clients.namespace[i] != ns}
    full: list[float] = []
    per_client: list[float] = []
    first: list[float] = []
    envoy: list[float] = []
    types_seen: set[str] = set()
    cpu0 = cpu_seconds(cp.pid)
    for c in range(changes):
        k = offset + c
        time.sleep(random.uniform(0.3, 0.5))  # quiet between changes, at a random phase of the 0.2 s poll
        if scenario in ("endpoint", "system_endpoint"):
            marker = change_address(k)
            app = "sys-0" if scenario == "system_endpoint" else "svc-0"
            text = ENTRY.format(name=f"backend-{k}", ns=ns, address=marker, app=app)
            name, wait_types = f"50-entry-{k}.yaml", {"EDS"}
            checks = [(eds_dump_path(app, ns), _has(marker))]
        else:
            marker = f"bmk-r-{k}"
            text = SERVICE.format(name=marker, ns=ns)
            name, wait_types = f"60-service-{k}.yaml", {"CDS", "EDS", "RDS"}
            # The new cluster, and a new version of the route configuration (only this change alters
            # it); the whole route dump would be megabytes per poll with thousands of virtual hosts.
            versions = agent.admin(ROUTE_VERSIONS, timeout=10.0)
            checks = [
                (cluster_dump_path(marker, ns), _has(marker)),
                (ROUTE_VERSIONS, _differs(versions)),
            ]
        t0 = time.monotonic()
        watch = EnvoyWatch(agent, checks)
        cp.write_config(name, text)
        deadline = t0 + timeout
        try:
            while True:
                clients.collector.check()
                got = clients.collector.marker(marker)
                done = all(all(i in got.get(t, {}) for i in expected) for t in wait_types)
                if done and watch.seen_at is not None:
                    break
                if time.monotonic() > deadline:
                    counts = {t: len(v) for t, v in got.items()}
                    raise RuntimeError(
                        f"{scenario} change {marker}: after {timeout:g}s ACKed by {counts} of {len(expected)} "
                        f"clients, Envoy {'has' if watch.seen_at else 'lacks'} it\n{cp.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            watch.close()
        time.sleep(0.2)  # late types of the same change (e.g. a CDS resend) land in the record too
        got = clients.collector.marker(marker)
        types_seen.update(got)
        leaked = sorted({i for t in got for i in got[t] if i in others})
        if leaked:
            raise RuntimeError(
                f"{scenario} change {marker} in namespace {ns} reached {len(leaked)} clients of other "
                f"namespaces despite their Sidecars (e.g. client-{leaked[0]})"
            )
        lat = [max(got[t][i] for t in got if i in got[t]) - t0 for i in expected]
        per_client.extend(lat)
        full.append(max(lat))
        first.append(min(min(v.values()) for v in got.values()) - t0)
        assert watch.seen_at is not None
        envoy.append(watch.seen_at - t0)
        progress(
            f"  {scenario} change {c + 1}/{changes}: all {len(expected)} ACKed in {full[-1]:.3f}s "
            f"(first {first[-1]:.3f}s), Envoy {envoy[-1]:.3f}s"
        )
    cpu = cpu_seconds(cp.pid) - cpu0
    return {
        "all_acked_s": summary_stats(full),
        "per_client_ack_s": summary_stats(per_client),
        "first_ack_s": summary_stats(first),
        "envoy_s": summary_stats(envoy),
        "types": sorted(types_seen),
        "clients_that_must_see_it": len(expected),
        "cp_cpu_s_per_change": rounded(cpu / changes, 3),
    }


def envoy_outbound(agent: BenchAgent) -> dict[str, int]:
    """Outbound clusters per service namespace in the real Envoy (its admin config_dump)."""
    dump = json.loads(agent.admin("/config_dump?resource=dynamic_active_clusters", timeout=10.0))
    out: dict[str, int] = {}
    for entry in dump.get("configs", []):
        name = str(entry.get("cluster", {}).get("name", ""))
        if name.startswith("outbound|"):
            labels = name.split("|", 3)[-1].split(".")
            ns = labels[1] if len(labels) > 2 else ""
            out[ns] = out.get(ns, 0) + 1
    return out


def check_sync(
    args: argparse.Namespace, clients: Clients, spaces: list[str], sidecar: bool
) -> dict[str, Any]:
    """What each client was sent at sync: bytes per type (mean per proxy) and its outbound clusters,
    which must be exactly those of the namespaces its Sidecar lets in (all without one)."""
    info = clients.collector.sync_info()
    if len(info) < clients.n:
        raise RuntimeError(f"only {len(info)}/{clients.n} clients reported what they were sent")
    wrong = []
    for i, got in info.items():
        want = expected_outbound(args.services, spaces, clients.namespace[i], sidecar)
        if got["cds_outbound_by_namespace"] != want:
            wrong.append((i, got["cds_outbound_by_namespace"], want))
    if wrong:
        i, got, want = wrong[0]
        raise RuntimeError(
            f"{len(wrong)} clients got the wrong outbound clusters, e.g. client-{i} "
            f"({clients.namespace[i]}): {got}, expected {want}"
        )
    counts = [sum(v["cds_outbound_by_namespace"].values()) for v in info.values()]
    out: dict[str, Any] = {
        f"{t.lower()}_bytes_per_proxy": int(sum(v["bytes"].get(t, 0) for v in info.values()) / len(info))
        for t in ("CDS", "EDS", "LDS", "RDS")
    }
    out["cds_outbound_clusters_per_proxy"] = {"min": min(counts), "max": max(counts)}
    out["cds_clusters_checked"] = True
    return out


def run_size(
    args: argparse.Namespace, cp: BenchControlPlane, agent: BenchAgent, n: int, certs: dict[str, list[Any]],
    offset: int, spaces: list[str], sidecar: bool,
) -> dict[str, Any]:  # fmt: skip
    for stale in list(cp.config_dir.glob("5*.yaml")) + list(cp.config_dir.glob("6*.yaml")):
        stale.unlink()
    if sidecar:
        cp.write_config(SIDECAR_FILE, sidecars(spaces))
    else:
        cp.remove_config(SIDECAR_FILE)
    label = f"N={n}{' with Sidecars' if sidecar else ''}"
    cp.start()
    clients: Clients | None = None
    try:
        agent.start()
        agent.wait_ready(timeout=60)
        want = expected_outbound(args.services, spaces, spaces[0], sidecar)
        try:
            wait_until(
                lambda: envoy_outbound(agent) == want,
                args.connect_timeout,
                "the agent's Envoy to get its clusters",
                0.2,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: Envoy has {envoy_outbound(agent)}, expected {want}") from None
        time.sleep(args.settle)
        idle = rss_bytes(cp.pid)
        cpu_idle0 = cpu_seconds(cp.pid)
        progress(
            f"{label}: control plane idle RSS {mib(idle)} MiB (with the agent's Envoy: "
            f"{sum(want.values())} outbound clusters); connecting clients"
        )
        clients = Clients(cp, n, min(args.processes, n), certs, spaces)
        connect_s = clients.wait_ready(timeout=args.connect_timeout)
        time.sleep(args.settle)
        connected = rss_bytes(cp.pid)
        per_proxy = (connected - idle) / n
        progress(
            f"{label}: all synced in {connect_s:.1f}s; RSS {mib(connected)} MiB, "
            f"{per_proxy / 1024:.1f} KiB per proxy"
        )
        proxies = len(cp.api("/api/v1/proxies"))
        cpu_c0 = cpu_seconds(cp.pid)
        out: dict[str, Any] = {
            "clients": n,
            "client_processes": len(clients.procs),
            "proxies_seen_by_cp": proxies,
            "connect_and_sync_s": rounded(connect_s, 2),
            "cp_cpu_s_connect": rounded(cpu_c0 - cpu_idle0, 2),
            "rss_idle_mib": mib(idle),
            "rss_connected_mib": mib(connected),
            "rss_per_proxy_mib": rounded(per_proxy / (1024 * 1024), 4),
            "envoy_outbound_clusters": sum(want.values()),
            **check_sync(args, clients, spaces, sidecar),
        }
        client_cpu0 = sum(cpu_seconds(p) for p in clients.pids())
        for scenario in args.scenarios:
            progress(f"{label}: {args.changes} {scenario} changes")
            out[scenario] = run_changes(
                cp, agent, clients, scenario, args.changes, offset, args.change_timeout, sidecar
            )
            offset += args.changes
        out["client_cpu_s_during_changes"] = rounded(
            sum(cpu_seconds(p) for p in clients.pids()) - client_cpu0, 2
        )
        out["rss_after_changes_mib"] = mib(rss_bytes(cp.pid))
        progress(f"{label}: {json.dumps(out, sort_keys=True)}")  # kept in the log should a later run fail
        return out
    finally:
        if clients is not None:
            stats = clients.close()
            errors = [e for s in stats for e in s.get("errors", [])]
            if errors:
                progress(f"client errors: {errors[:3]}")
        agent.stop()
        cp.stop()


def _ratio(with_: Any, without: Any) -> float | None:
    if not isinstance(with_, int | float) or not isinstance(without, int | float) or not without:
        return None
    return rounded(with_ / without, 3)


def compare(without: dict[str, Any], with_: dict[str, Any]) -> dict[str, Any]:
    """The figures the Sidecar should shrink, without and with, and with/without."""

    def figures(r: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: r[k]
            for k in ("rss_per_proxy_mib", "connect_and_sync_s", "cds_bytes_per_proxy", "eds_bytes_per_proxy")
        }
        out["cds_outbound_clusters_per_proxy"] = r["cds_outbound_clusters_per_proxy"]["max"]
        for scenario in SCENARIOS:
            if scenario in r:
                for q in ("p50", "p99"):
                    out[f"{scenario}_all_acked_{q}_s"] = r[scenario]["all_acked_s"][q]
                out[f"{scenario}_cp_cpu_s_per_change"] = r[scenario]["cp_cpu_s_per_change"]
        return out

    a, b = figures(without), figures(with_)
    return {"without_sidecar": a, "with_sidecar": b, "ratio": {k: _ratio(b[k], a[k]) for k in a}}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "xds_convergence", "machine": machine()}
    result["machine"]["private_netns"] = in_private_netns()
    spaces = namespaces(args.namespaces)
    cp = BenchControlPlane(workdir)
    for name, text in base_config(args.services, spaces).items():
        cp.write_config(name, text)
    cp.start()
    agent = BenchAgent(workdir, "edge")
    per_ns = -(-max(args.sizes) // len(spaces))
    try:
        agent.join(cp, f"{spaces[0]}/{EDGE_GROUP}")
        certs = {ns: cp.mint(ns, CLIENT_GROUP, per_ns) for ns in spaces}
    finally:
        cp.stop()
    sizes: dict[str, Any] = {}
    with_sidecar: dict[str, Any] = {}
    offset = 0
    for n in args.sizes:
        for sidecar in (False, True) if args.sidecar else (False,):
            r = run_size(args, cp, agent, n, certs, offset, spaces, sidecar)
            (with_sidecar if sidecar else sizes)[str(n)] = r
            offset += args.changes * len(args.scenarios)
    result["sizes"] = sizes
    biggest = sizes[str(max(args.sizes))]
    summary: dict[str, Any] = {
        "largest_n": max(args.sizes),
        "target_endpoint_p99_s": TARGET_ENDPOINT_P99_S,
        "target_route_p99_s": TARGET_ROUTE_P99_S,
        "target_rss_per_proxy_mib": TARGET_RSS_PER_PROXY_MIB,
        "rss_per_proxy_mib": biggest["rss_per_proxy_mib"],
        "meets_rss_target": biggest["rss_per_proxy_mib"] <= TARGET_RSS_PER_PROXY_MIB,
    }
    for scenario, target in (("endpoint", TARGET_ENDPOINT_P99_S), ("route", TARGET_ROUTE_P99_S)):
        if scenario in biggest:
            p99 = biggest[scenario]["all_acked_s"]["p99"]
            summary[f"{scenario}_all_acked_p99_s"] = p99
            summary[f"meets_{scenario}_target"] = p99 <= target
    summary["targets_apply_at_n"] = 1000
    if args.sidecar:
        result["sizes_with_sidecar"] = with_sidecar
        result["sidecar"] = {
            "egress_hosts": SIDECAR_HOSTS,
            "sizes": {k: compare(sizes[k], with_sidecar[k]) for k in sizes},
        }
        ratio = result["sidecar"]["sizes"][str(max(args.sizes))]["ratio"]
        summary["sidecar_ratio"] = ratio
        summary["sidecar_lower"] = sorted(k for k, v in ratio.items() if v is not None and v < 1.0)
        summary["sidecar_not_lower"] = sorted(k for k, v in ratio.items() if v is None or v >= 1.0)
    result["summary"] = summary
    result["settings"] = {
        "sizes": args.sizes,
        "changes_per_scenario": args.changes,
        "services": args.services,
        "namespaces": spaces,
        "system_services": system_services(spaces),
        "sidecar": args.sidecar,
        "client_processes": args.processes,
        "config_source": "watched config dir (polled every 0.2 s) + push debounce 0.1 s",
    }
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 300, 1000], help="client counts (100 300 1000)"
    )
    p.add_argument("--changes", type=int, default=5, help="changes per scenario and size (5)")
    p.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS,
        help="endpoint, route and with --namespaces > 1 also system_endpoint (default: all that apply)",
    )  # fmt: skip
    p.add_argument("--services", type=int, default=10, help="ServiceEntries in the base config (10)")
    p.add_argument(
        "--namespaces", type=int, default=1,
        help="spread services and clients over this many namespaces bench-0.. (1: all in bench)",
    )  # fmt: skip
    p.add_argument(
        "--sidecar", action="store_true",
        help="run every size twice, without and with a Sidecar per namespace (egress ./* istio-system/*)",
    )  # fmt: skip
    p.add_argument("--processes", type=int, default=4, help="client worker processes (4)")
    p.add_argument("--settle", type=float, default=1.0, help="pause before RSS readings (1s)")
    p.add_argument("--connect-timeout", type=float, default=180.0, help="for all clients to sync (180s)")
    p.add_argument("--change-timeout", type=float, default=60.0, help="per change (60s)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = p.parse_args(argv)
    if args.namespaces < 1:
        p.error("--namespaces must be at least 1")
    if args.sidecar and args.namespaces < 2:
        p.error("--sidecar needs --namespaces 2 or more (a Sidecar per namespace limits each to its own)")
    if args.scenarios is None:
        args.scenarios = SCENARIOS if args.namespaces > 1 else SCENARIOS[:2]
    elif "system_endpoint" in args.scenarios and args.namespaces < 2:
        p.error(
            "the system_endpoint scenario needs --namespaces 2 or more (istio-system has no service otherwise)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    rc = rerun_in_private_netns("vmbxds", [str(Path(__file__).resolve()), *raw])
    if rc is not None:
        return rc
    return run_in_workdir("xds", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
