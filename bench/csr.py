"""Certificate issuance throughput of ``vmagent-cp serve`` and the wall time of ``vmagent join``.

Run from the repository root with the project venv: ``python bench/csr.py`` (``--help`` for knobs).
Progress goes to stderr; the last stdout line is one JSON object (documented in docs/benchmarks.md).

Measured, all end to end over gRPC with TLS on loopback, ECDSA P-256 CSRs:

* ``renew``: ``IstioCertificateService/CreateCertificate`` on the mutual-TLS port, authenticated by the
  client's mesh certificate -- what steady-state load (rotation at half the lifetime) looks like.
* ``token``: the same RPC on the TLS port with ``authorization: Bearer <join token>`` (a token with
  enough uses) -- what a burst of first joins costs.

each with one and with two server processes bound to the same ports (gRPC sets SO_REUSEPORT on Linux;
the benchmark reports how the connections and the CPU time were split between the two), and ``token``
once more against one server with ``--ca-workers`` CA worker processes (they serve only the join port). Several client
processes with pre-generated CSRs keep a fixed number of calls in flight; only completions inside the
timed window are counted. Baselines measured in the same run make the figures comparable across
machines: the rate at which one process issues certificates with the ``cryptography`` package alone
(parse and verify the CSR, build, sign, PEM-encode), and the rate of vmagent's CA called in-process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``vmagent`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Background,
    free_port,
    machine,
    median,
    percentile,
    progress,
    rounded,
    run_in_workdir,
    run_timed,
    venv_tool,
)

HOST = "127.0.0.1"
NAMESPACE, GROUP, SERVICE_ACCOUNT = "bench", "load", "load-sa"
TRUST_DOMAIN = "cluster.local"
WORKLOAD_GROUP = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {GROUP}
  namespace: {NAMESPACE}
spec:
  metadata:
    labels:
      app: {GROUP}
  template:
    serviceAccount: {SERVICE_ACCOUNT}
    ports:
      http: 8080
"""
EXPECTED_URI = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
TARGET_CERTS_PER_S = 1000.0
TARGET_JOIN_S = 1.5
CALL_TIMEOUT = 30.0
LATENCY_SAMPLES = 5000


# -- baselines (in this process) ---------------------------------------------------------------------


def _make_csrs(count: int) -> list[bytes]:
    from vmagent.agent.join import make_csr
    from vmagent.common.x509util import generate_key

    return [make_csr(generate_key("ec-p256")) for _ in range(count)]


def baseline_cryptography(csrs: list[bytes], seconds: float) -> float:
    """Certificates per second issued with ``cryptography`` alone in one process (one core)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baseline root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(EXPECTED_URI)])
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        csr = x509.load_pem_x509_csr(csrs[count % len(csrs)])
        if not csr.is_signature_valid:
            raise RuntimeError("baseline CSR does not verify")
        t = datetime.datetime.now(datetime.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t)
            .not_valid_after(t + datetime.timedelta(hours=24))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(eku, critical=False)
            .add_extension(aki, critical=False)
            .add_extension(san, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        leaf.public_bytes(serialization.Encoding.PEM)
        count += 1
    return count / (time.perf_counter() - start)


def baseline_vmagent_ca(csrs: list[bytes], seconds: float, workdir: Path) -> float:
    """Certificates per second from vmagent's CertificateAuthority called in-process (no gRPC, no DB)."""
    from vmagent.common.x509util import SpiffeId, chain_pem
    from vmagent.controlplane.ca.authority import CaSettings, CertificateAuthority

    ca = CertificateAuthority.load_or_create(workdir / "baseline-ca", CaSettings(TRUST_DOMAIN))
    ident = SpiffeId(TRUST_DOMAIN, NAMESPACE, SERVICE_ACCOUNT)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        chain_pem(ca.sign_workload_csr(csrs[count % len(csrs)], ident))
        count += 1
    return count / (time.perf_counter() - start)


# -- load clients (separate processes) --------------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    mode: str  # "renew" or "token"
    tls_address: str
    mtls_address: str
    root_pem: bytes
    token: str
    csrs: list[str]
    inflight: int
    conns: int
    warmup: float
    duration: float


def _channel(address: str, root_pem: bytes, client: tuple[bytes, bytes] | None, index: int) -> Any:
    import grpc

    from vmagent.common.constants import CP_SERVER_NAME

    creds = grpc.ssl_channel_credentials(
        root_certificates=root_pem,
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None,
    )
    # A local subchannel pool and a distinct argument give every channel its own TCP connection, so the
    # kernel's SO_REUSEPORT hashing sees several connections per client process.
    options = [
        ("grpc.ssl_target_name_override", CP_SERVER_NAME),
        ("grpc.use_local_subchannel_pool", 1),
        ("vmagent.bench.connection", index),
    ]
    return grpc.secure_channel(address, creds, options=options)


def _client_identity(spec: ClientSpec) -> tuple[bytes, bytes]:
    """A mesh certificate for this client, issued through a token-authenticated CreateCertificate."""
    from vmagent.agent.join import make_csr
    from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
    from vmagent.common.x509util import generate_key, key_pem

    key = generate_key("ec-p256")
    channel = _channel(spec.tls_address, spec.root_pem, None, -1)
    try:
        resp = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key).decode()),
            metadata=[("authorization", f"Bearer {spec.token}")],
            timeout=CALL_TIMEOUT,
        )
    finally:
        channel.close()
    return key_pem(key), "".join(resp.cert_chain).encode()


def client_main(spec: ClientSpec, go: Any, t0: Any, ready: Any, results: Any) -> None:
    """Connect, report ready, then keep ``inflight`` calls outstanding until the window closes."""
    try:
        results.put(_client_run(spec, go, t0, ready))
    except BaseException as exc:
        ready.put(os.getpid())  # never leave the parent waiting
        results.put({"fatal": f"{type(exc).__name__}: {exc}"})


def _client_run(spec: ClientSpec, go: Any, t0: Any, ready: Any) -> dict[str, Any]:
    import grpc
    from cryptography import x509

    from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
    from vmagent.common.x509util import spiffe_ids

    if spec.mode == "renew":
        client = _client_identity(spec)
        channels = [_channel(spec.mtls_address, spec.root_pem, client, i) for i in range(spec.conns)]
        metadata: list[tuple[str, str]] | None = None
    else:
        channels = [_channel(spec.tls_address, spec.root_pem, None, i) for i in range(spec.conns)]
        metadata = [("authorization", f"Bearer {spec.token}")]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=CALL_TIMEOUT)
    stubs = [istio_ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate for ch in channels]
    requests = [istio_ca_pb2.IstioCertificateRequest(csr=c) for c in spec.csrs]
    ready.put(os.getpid())
    go.wait()
    start = t0.value
    win_start = start + spec.warmup
    win_end = win_start + spec.duration
    while time.monotonic() < start:
        time.sleep(0.001)

    ok = errors = issued = 0
    checked = False
    samples: list[str] = []
    latencies: list[float] = []
    outstanding: deque[tuple[Any, float]] = deque()
    i = 0
    while True:
        now = time.monotonic()
        if now < win_end:
            while len(outstanding) < spec.inflight:
                fut = stubs[i % len(stubs)].future(
                    requests[i % len(requests)], metadata=metadata, timeout=CALL_TIMEOUT
                )
                outstanding.append((fut, time.monotonic()))
                i += 1
        if not outstanding:
            break
        fut, sent = outstanding.popleft()
        try:
            resp = fut.result()
        except grpc.RpcError as exc:
            errors += 1
            if len(samples) < 3:
                samples.append(f"{exc.code().name}: {exc.details()}")
            continue
        issued += 1
        done = time.monotonic()
        if not checked:
            leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
            if spiffe_ids(leaf) != [EXPECTED_URI] or len(resp.cert_chain) < 2:
                raise RuntimeError(f"server issued {spiffe_ids(leaf)}, expected [{EXPECTED_URI}]")
            checked = True
        if win_start <= done <= win_end:
            ok += 1
            if len(latencies) < LATENCY_SAMPLES:
                latencies.append(done - sent)
    for ch in channels:
        ch.close()
    return {"ok": ok, "issued": issued, "errors": errors, "error_samples": samples, "latencies": latencies}


# -- servers and measurements -----------------------------------------------------------------------


@dataclass
class Layout:
    root: Path
    config_dir: Path
    state_dir: Path
    tls_port: int
    mtls_port: int

    @property
    def tls_address(self) -> str:
        return f"{HOST}:{self.tls_port}"

    @property
    def mtls_address(self) -> str:
        return f"{HOST}:{self.mtls_port}"


def start_servers(layout: Layout, count: int, ca_workers: int = 0) -> list[Background]:
    """``count`` control planes sharing the state dir and both gRPC ports (SO_REUSEPORT), each with
    ``ca_workers`` CA worker processes on the join port."""
    exe = venv_tool("vmagent-cp")
    servers: list[Background] = []
    try:
        for n in range(count):
            cmd = [
                exe, "serve",
                "--config-dir", str(layout.config_dir), "--state-dir", str(layout.state_dir),
                "--listen", layout.tls_address, "--mtls-listen", layout.mtls_address,
                "--http-listen", f"{HOST}:{free_port()}", "--cert-ttl", "24h",
                "--ca-workers", str(ca_workers),
            ]  # fmt: skip
            server = Background(cmd, layout.root / f"cp-{count}-{ca_workers}w-{n}.log")
            servers.append(server)
            # One at a time: the first creates the CA; a second bind on a port that is not shared fails.
            server.wait_ports(HOST, [layout.tls_port, layout.mtls_port])
            if ca_workers:
                _wait_workers(server, layout.tls_port, ca_workers)
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def create_token(layout: Layout, uses: int, ttl: str = "2h") -> dict[str, Any]:
    cmd = [
        venv_tool("vmagent-cp"), "token", "create", "--group", f"{NAMESPACE}/{GROUP}",
        "--uses", str(uses), "--ttl", ttl, "--state-dir", str(layout.state_dir),
        "--config-dir", str(layout.config_dir), "--join-address", layout.tls_address,
        "--server", "",  # its servers listen on random ports: use the state and config dirs given
        "-o", "json",
    ]  # fmt: skip
    _, result = run_timed(cmd)
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _server_pids(servers: list[Background]) -> list[int]:
    """Each ``serve`` process followed by its CA worker processes."""
    import psutil

    pids: list[int] = []
    for s in servers:
        pids += [s.pid, *(c.pid for c in psutil.Process(s.pid).children(recursive=True))]
    return pids


def _wait_workers(server: Background, port: int, count: int, timeout: float = 60.0) -> None:
    """Until ``server`` has ``count`` child processes, each listening on ``port``."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(server.pid).children()
        listening = [
            c
            for c in children
            if any(x.status == psutil.CONN_LISTEN and x.laddr.port == port for x in c.net_connections("tcp"))
        ]
        if len(listening) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{count} CA workers did not listen on {port} within {timeout:g}s")


def _cpu_seconds(pids: list[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        out.append(t.user + t.system)
    return out


def _established(pid: int, port: int) -> int:
    import psutil

    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def measure(
    layout: Layout, servers: list[Background], mode: str, spec_args: dict[str, Any], clients: int
) -> dict[str, Any]:
    """One timed window of ``mode`` calls against ``servers``; returns rate, latency and load split."""
    ctx = mp.get_context("spawn")
    go, t0 = ctx.Event(), ctx.Value("d", 0.0)
    ready, results = ctx.Queue(), ctx.Queue()
    spec = ClientSpec(mode=mode, **spec_args)
    procs = [ctx.Process(target=client_main, args=(spec, go, t0, ready, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        t0.value = time.monotonic() + 0.2
        go.set()
        server_pids = _server_pids(servers)
        client_pids = [p.pid for p in procs if p.pid is not None]
        _sleep_until(t0.value + spec.warmup)
        cpu0 = _cpu_seconds(server_pids + client_pids)
        _sleep_until(t0.value + spec.warmup + spec.duration / 2)
        port = layout.mtls_port if mode == "renew" else layout.tls_port
        split = [_established(pid, port) for pid in server_pids]
        _sleep_until(t0.value + spec.warmup + spec.duration)
        cpu1 = _cpu_seconds(server_pids + client_pids)
        outs = [results.get(timeout=CALL_TIMEOUT + 30) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=CALL_TIMEOUT + 30)
            if p.is_alive():
                p.kill()
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        raise RuntimeError(f"{mode} clients failed: {fatal[0]}")
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    server_cpu, client_cpu = used[: len(server_pids)], used[len(server_pids) :]
    latencies = [x for o in outs for x in o["latencies"]]
    ok = sum(o["ok"] for o in outs)
    server_ms = sum(server_cpu) * 1000 / ok if ok else None
    cpus = os.cpu_count() or 1
    return {
        "certs_per_s": rounded(ok / spec.duration, 1),
        "certs": ok,
        "errors": sum(o["errors"] for o in outs),
        "error_samples": [s for o in outs for s in o["error_samples"]][:3],
        "latency_ms_p50": rounded(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "latency_ms_p99": rounded(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "server_cpu_s": [rounded(c, 2) for c in server_cpu],
        "client_cpu_s": rounded(sum(client_cpu), 2),
        "server_connections": split,
        # CPU time per certificate does not depend on what else runs on the machine; the projection is
        # the rate if every core ran server processes (clients elsewhere): cores * 1000 / server ms.
        "server_cpu_ms_per_cert": rounded(server_ms, 3) if server_ms else None,
        "client_cpu_ms_per_cert": rounded(sum(client_cpu) * 1000 / ok, 3) if ok else None,
        "projected_certs_per_s_all_cores": rounded(cpus * 1000 / server_ms, 1) if server_ms else None,
    }


def _sleep_until(when: float) -> None:
    while (left := when - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def time_joins(layout: Layout, runs: int) -> dict[str, Any]:
    """Wall time of ``vmagent join`` (a new process, fresh dirs, a single-use token each run)."""
    agent = venv_tool("vmagent")
    startup = [run_timed([agent, "--help"])[0] for _ in range(3)]
    walls: list[float] = []
    for n in range(runs):
        tok = create_token(layout, uses=1)
        vm = layout.root / f"join-{n}"
        cmd = [
            agent, "join", layout.tls_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"],
            "--config-dir", str(vm / "etc"), "--state-dir", str(vm / "state"), "--no-start",
        ]  # fmt: skip
        wall, result = run_timed(cmd)
        if "joined as" not in result.stdout or EXPECTED_URI not in result.stdout:
            raise RuntimeError(f"unexpected join output: {result.stdout!r}")
        walls.append(wall)
        progress(f"join {n + 1}/{runs}: {wall:.3f}s")
    return {
        "join_s_median": rounded(median(walls)),
        "join_s_min": rounded(min(walls)),
        "join_s_max": rounded(max(walls)),
        "join_runs": len(walls),
        "agent_cli_startup_s_median": rounded(median(startup)),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "csr", "machine": machine()}
    progress("pre-generating ECDSA P-256 CSRs")
    csrs = _make_csrs(args.csrs)
    progress(f"baseline: cryptography alone, one process, {args.baseline_seconds:g}s")
    base = baseline_cryptography(csrs, args.baseline_seconds)
    progress(f"baseline: {base:.0f} certs/s; vmagent CA in-process")
    ca_rate = baseline_vmagent_ca(csrs, args.baseline_seconds, workdir)
    result["baseline"] = {
        "cryptography_certs_per_s_1proc": rounded(base, 1),
        "vmagent_ca_inprocess_certs_per_s": rounded(ca_rate, 1),
    }

    layout = Layout(workdir, workdir / "cp-config", workdir / "cp-state", free_port(), free_port())
    layout.config_dir.mkdir()
    (layout.config_dir / "workloadgroup.yaml").write_text(WORKLOAD_GROUP)
    spec_args: dict[str, Any] = {
        "tls_address": layout.tls_address,
        "mtls_address": layout.mtls_address,
        "csrs": [c.decode() for c in csrs],
        "inflight": args.inflight,
        "conns": args.conns,
        "warmup": args.warmup,
        "duration": args.duration,
    }
    throughput: dict[str, Any] = {}
    # (server processes, CA workers each, modes): CA workers serve only the join port, so only the
    # token-authenticated mode can reach them.
    runs = [(count, 0, args.modes) for count in args.servers]
    if "token" in args.modes:
        runs += [(1, w, ["token"]) for w in args.ca_workers if w > 0]
    for count, workers, modes in runs:
        progress(
            f"starting {count} control plane process(es) with {workers} CA worker(s) each on "
            f"{layout.tls_address} + {layout.mtls_address}"
        )
        servers = start_servers(layout, count, workers)
        try:
            tok = create_token(layout, uses=10**9)
            root_pem = (layout.state_dir / "root-cert.pem").read_bytes()
            spec_args.update(token=tok["token"], root_pem=root_pem)
            for mode in modes:
                progress(f"{mode}: {args.clients} clients x {args.inflight} in flight, {args.duration:g}s")
                m = measure(layout, servers, mode, spec_args, args.clients)
                m["ratio_to_baseline"] = rounded(m["certs_per_s"] / base, 3)
                key = f"{mode}_{count}proc" + (f"_{workers}workers" if workers else "")
                progress(f"{key}: {json.dumps(m)}")
                throughput[key] = m
        finally:
            for s in servers:
                s.stop()
    result["throughput"] = throughput

    progress(f"timing vmagent join ({args.join_runs} runs)")
    with start_servers(layout, 1)[0]:
        result["join"] = time_joins(layout, args.join_runs)

    best = max((m["certs_per_s"] for m in throughput.values()), default=0.0)
    renew_best = max((m["certs_per_s"] for k, m in throughput.items() if k.startswith("renew")), default=0.0)
    result["summary"] = {
        "renew_certs_per_s_best": renew_best,
        "certs_per_s_best": best,
        "join_s_median": result["join"]["join_s_median"],
        "target_certs_per_s": TARGET_CERTS_PER_S,
        "target_join_s": TARGET_JOIN_S,
        "meets_certs_target": best >= TARGET_CERTS_PER_S,
        "meets_join_target": result["join"]["join_s_median"] <= TARGET_JOIN_S,
    }
    result["settings"] = {
        "clients": args.clients,
        "inflight_per_client": args.inflight,
        "connections_per_client": args.conns,
        "window_s": args.duration,
        "warmup_s": args.warmup,
    }
    result["machine"]["loadavg_1m_at_end"] = rounded(os.getloadavg()[0], 2)
    result["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="timed window per measurement (5s)")
    p.add_argument("--warmup", type=float, default=1.0, help="load before the window opens (1s)")
    p.add_argument("--clients", type=int, default=3, help="client processes (3)")
    p.add_argument("--inflight", type=int, default=16, help="calls in flight per client (16)")
    p.add_argument("--conns", type=int, default=4, help="TCP connections per client (4)")
    p.add_argument("--csrs", type=int, default=64, help="distinct pre-generated CSRs (64)")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2], help="server process counts (1 2)")
    p.add_argument("--modes", nargs="+", default=["renew", "token"], choices=["renew", "token"])
    p.add_argument(
        "--ca-workers",
        type=int,
        nargs="*",
        default=[1],
        help="also measure token joins against one server with this many CA workers (1); none: skip",
    )
    p.add_argument("--join-runs", type=int, default=7, help="vmagent join runs for the median (7)")
    p.add_argument("--baseline-seconds", type=float, default=2.0, help="per baseline (2s)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (server logs) and print its path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir("csr", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
