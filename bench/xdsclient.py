"""Lightweight ADS clients for the benchmarks: real gRPC streams over mutual TLS speaking SotW xDS.

One worker process (``worker_main``, started with multiprocessing's spawn) runs many clients on one
asyncio loop. Each client has its own channel (its own TCP + TLS connection) authenticated with its own
workload certificate, and a node id of Istio's shape ``sidecar~IP~NAME.NS~NS.svc.cluster.local`` with
``NAMESPACE`` metadata equal to the certificate's namespace (the worker's, or the client's own). It subscribes to CDS and LDS (wildcard)
and to EDS and RDS with the explicit wildcard ``*``, and ACKs every response with its version and
nonce, as Envoy does.

Measurement: every response's resource bytes are searched for ``marker_regex``; the first time a client
ACKs a response of a type carrying a marker it has not seen in that type, the worker records ``(client, marker, type, t)``
with ``t = time.monotonic()`` taken right after the ACK was written (CLOCK_MONOTONIC is shared by all
processes of the machine, so the parent compares it with its own clock). Records are sent to the parent
in batches every 20 ms over a multiprocessing queue. ``watch`` markers (e.g. an address in EDS) are
reported on every change of presence: ``(client, marker, type, present, t)`` each time a response of
that type starts or stops carrying them.

What a client was sent: with the ``ready`` event goes a ``sync`` event with, per type, the resource
bytes of the last response received, and the number of outbound clusters in the CDS response with
their count per namespace (from the cluster names, ``outbound|PORT|SUBSET|HOST.NS.svc...``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}
# Subscription order and names: wildcard for CDS/LDS, the explicit wildcard "*" for EDS/RDS.
SUBSCRIPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = ((CDS, ()), (EDS, ("*",)), (LDS, ()), (RDS, ("*",)))


def node_id(ip: str, name: str, namespace: str) -> str:
    return f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"


@dataclass(frozen=True)
class ClientSpec:
    node_id: str
    name: str
    key_pem: bytes
    chain_pem: bytes
    namespace: str = ""  # the certificate's namespace; empty: the worker's


@dataclass(frozen=True)
class WorkerSpec:
    address: str  # the control plane's mutual-TLS HOST:PORT
    root_pem: bytes
    namespace: str
    workload_name: str
    clients: list[ClientSpec]
    index_base: int  # global index of clients[0]
    marker_regex: bytes  # markers to report when first seen
    # Literal starts of every marker: then the regex is tried only where one occurs (bytes.find is
    # about 10x faster than scanning megabytes of CDS with the regex); empty: the regex scans it all.
    marker_prefixes: tuple[bytes, ...] = ()
    watch: dict[str, list[str]] = field(default_factory=dict)  # type short name -> markers to follow
    connect_concurrency: int = 16
    connect_timeout: float = 60.0


def worker_main(spec: WorkerSpec, events: Any, stop: Any) -> None:
    """Process entry point: run the clients until ``stop`` (an mp.Event) is set.

    Puts on ``events``: ``("sync", pid, (index, info))`` (see the module docstring) and then
    ``("ready", pid, index)`` when a client has received and ACKed all four types,
    ``("marks", pid, [(index, marker, type, t), ...])`` batches, ``("flips", pid, [(index, marker, type,
    present, t), ...])`` for watched markers, ``("error", pid, text)`` and finally ``("done", pid, stats)``.
    """
    try:
        stats = asyncio.run(_Worker(spec, events, stop).run())
        events.put(("done", os.getpid(), stats))
    except BaseException:
        events.put(("error", os.getpid(), traceback.format_exc()))
        events.put(("done", os.getpid(), {}))


class _Worker:
    def __init__(self, spec: WorkerSpec, events: Any, stop: Any) -> None:
        self.spec = spec
        self.events = events
        self.stop = stop
        self.pattern = re.compile(spec.marker_regex)
        self.batch: list[tuple[int, str, str, float]] = []
        self.flips: list[tuple[int, str, str, bool, float]] = []
        self.responses = 0
        self.errors: list[str] = []
        self.connect_sem: asyncio.Semaphore | None = None

    async def run(self) -> dict[str, Any]:
        self.connect_sem = asyncio.Semaphore(self.spec.connect_concurrency)
        tasks = [
            asyncio.create_task(self.client(self.spec.index_base + i, c))
            for i, c in enumerate(self.spec.clients)
        ]
        flusher = asyncio.create_task(self.flush_loop())
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            if failed:
                exc = failed[0].exception()
                self.events.put(("error", os.getpid(), f"{type(exc).__name__}: {exc}"))
                break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        self.flush()
        return {"responses": self.responses, "errors": self.errors[:3]}

    def flush(self) -> None:
        if self.batch:
            self.events.put(("marks", os.getpid(), self.batch))
            self.batch = []
        if self.flips:
            self.events.put(("flips", os.getpid(), self.flips))
            self.flips = []

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.flush()

    def markers(self, body: bytes) -> set[bytes]:
        """The distinct markers in ``body``."""
        if not self.spec.marker_prefixes:
            return set(self.pattern.findall(body))
        found: set[bytes] = set()
        for prefix in self.spec.marker_prefixes:
            pos = body.find(prefix)
            while pos >= 0:
                m = self.pattern.match(body, pos)
                if m:
                    found.add(m.group())
                pos = body.find(prefix, pos + 1)
        return found

    async def client(self, index: int, c: ClientSpec) -> None:
        import grpc
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
        from google.protobuf import struct_pb2

        from vmagent.common.constants import CP_SERVER_NAME

        spec = self.spec
        creds = grpc.ssl_channel_credentials(spec.root_pem, c.key_pem, c.chain_pem)
        options = [
            ("grpc.ssl_target_name_override", CP_SERVER_NAME),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        meta = struct_pb2.Struct()
        namespace = c.namespace or spec.namespace
        meta.update(
            {
                "NAMESPACE": namespace,
                "WORKLOAD_NAME": spec.workload_name,
                "LABELS": {"app": spec.workload_name},
                "NAME": c.name,
            }
        )
        node = base_pb2.Node(id=c.node_id, cluster=f"{spec.workload_name}.{namespace}", metadata=meta)
        assert self.connect_sem is not None
        async with self.connect_sem:
            channel = grpc.aio.secure_channel(spec.address, creds, options=options)
            await asyncio.wait_for(channel.channel_ready(), spec.connect_timeout)
        try:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            names = dict(SUBSCRIPTIONS)
            for n, (type_url, res) in enumerate(SUBSCRIPTIONS):
                req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(res))
                if n == 0:
                    req.node.CopyFrom(node)
                await call.write(req)
            seen: set[tuple[str, str]] = set()
            present: dict[tuple[str, str], bool] = {}
            got: set[str] = set()
            last_bytes: dict[str, int] = {}
            cds_namespaces: dict[str, int] = {}
            ready_sent = False
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise RuntimeError(f"client {index}: the control plane ended the stream")
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=resp.type_url,
                        version_info=resp.version_info,
                        response_nonce=resp.nonce,
                        resource_names=list(names.get(resp.type_url, ())),
                    )
                )
                t = time.monotonic()
                self.responses += 1
                short = SHORT.get(resp.type_url, resp.type_url)
                body = b"".join(r.value for r in resp.resources)
                for m in self.markers(body):
                    marker = m.decode()
                    if (marker, short) not in seen:
                        seen.add((marker, short))
                        self.batch.append((index, marker, short, t))
                for marker in spec.watch.get(short, ()):
                    now_present = marker.encode() in body
                    if present.get((short, marker)) != now_present:
                        present[(short, marker)] = now_present
                        self.flips.append((index, marker, short, now_present, t))
                if not ready_sent:
                    got.add(resp.type_url)
                    last_bytes[short] = len(body)
                    if resp.type_url == CDS:
                        cds_namespaces = _outbound_namespaces(resp.resources)
                    if len(got) == len(SUBSCRIPTIONS):
                        ready_sent = True
                        info = {"bytes": dict(last_bytes), "cds_outbound_by_namespace": cds_namespaces}
                        self.events.put(("sync", os.getpid(), (index, info)))
                        self.events.put(("ready", os.getpid(), index))
        finally:
            await channel.close()


def _field1(value: bytes) -> bytes:
    """Field 1 (a length-delimited ``name``, serialized first) of a serialized message, else b""."""
    if not value or value[0] != 0x0A:
        return b""
    length, shift, pos = 0, 0, 1
    while pos < len(value):
        byte = value[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value[pos : pos + length]
    return b""


def _outbound_namespaces(resources: Any) -> dict[str, int]:
    """Outbound clusters per namespace of their host, from the names of a CDS response's clusters."""
    out: dict[str, int] = {}
    for r in resources:
        name = _field1(r.value).decode(errors="replace")
        if not name.startswith("outbound|"):
            continue
        labels = name.split("|", 3)[-1].split(".")
        ns = labels[1] if len(labels) > 2 else ""
        out[ns] = out.get(ns, 0) + 1
    return out
