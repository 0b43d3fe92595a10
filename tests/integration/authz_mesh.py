"""A real control plane (``vmagent.controlplane.app.ControlPlane``: gRPC over TLS and mutual TLS on loopback,
SQLite state, the YAML config directory) with the mesh of issue 20, and VMs driven as an attacker would.

Namespace ``demo``: WorkloadGroups ``web`` (service account ``web``, ``app=web``) and ``api``
(``api-sa``, ``app=api``), a ServiceEntry selecting ``app=api``, STRICT PeerAuthentication and an
AuthorizationPolicy allowing only ``sa/web`` into ``app=api``. Certificates are signed by the control
plane's own CA and recorded as joins, so renewals and revocations work on them as on joined VMs.
"""

from __future__ import annotations

import datetime
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from tests.harness import free_port
from vmagent.agent.join import make_csr, secure_channel
from vmagent.agent.registration import RegisterInfo, RegistrationClient
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import SpiffeId, chain_pem, generate_key, key_pem, load_chain
from vmagent.controlplane.app import ControlPlane
from vmagent.controlplane.options import ServeOptions
from vmagent.controlplane.registry.workload_store import LifecycleSettings
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

TD = "cluster.local"
API_CLUSTER = "outbound|8080||api.demo.svc.cluster.local"

MESH = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: web, namespace: demo}
spec:
  metadata:
    labels: {app: web}
  template:
    serviceAccount: web
    ports: {http: 8080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api, namespace: demo}
spec:
  metadata:
    labels: {app: api}
  template:
    serviceAccount: api-sa
    ports: {http: 8080}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: demo}
spec:
  hosts: [api.demo.svc.cluster.local]
  addresses: [240.240.0.30]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP, targetPort: 8080}
  workloadSelector:
    labels: {app: api}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-from-web, namespace: demo}
spec:
  selector:
    matchLabels: {app: api}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/web]
"""

FAST = LifecycleSettings(heartbeat_interval=1, heartbeat_timeout=5, grace_period=60, restart_window=0)


def node_id(ip: str, name: str, ns: str = "demo") -> str:
    return f"sidecar~{ip}~{name}.{ns}~{ns}.svc.{TD}"


def make_node(nid: str, metadata: dict[str, Any] | None = None) -> base_pb2.Node:
    node = base_pb2.Node(id=nid, cluster="test")
    if metadata is not None:
        meta = struct_pb2.Struct()
        meta.update(metadata)
        node.metadata.CopyFrom(meta)
    return node


class AdsStream:
    """One SotW ADS stream driven by hand over a real mTLS channel."""

    def __init__(self, channel: grpc.Channel, node: base_pb2.Node, types: tuple[str, ...]) -> None:
        self._out: queue.Queue[Any] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(iter(self._out.get, None))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        for i, t in enumerate(types):
            req = discovery_pb2.DiscoveryRequest(type_url=t)
            if i == 0:
                req.node.CopyFrom(node)
            self._out.put(req)

    def _pump(self) -> None:
        try:
            for resp in self.call:
                self._in.put(resp)
                # ACK, as Envoy does, so the proxy counts as synced.
                self._out.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=resp.type_url, version_info=resp.version_info, response_nonce=resp.nonce
                    )
                )
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self._done.set()

    def recv(self, timeout: float = 10.0) -> discovery_pb2.DiscoveryResponse:
        try:
            item: discovery_pb2.DiscoveryResponse = self._in.get(timeout=timeout)
        except queue.Empty:
            if self.error is not None:
                raise self.error from None
            raise
        return item

    def ended(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()


@dataclass
class Vm:
    """A VM's credentials: its key and certificate, signed by the control plane's CA."""

    mesh: Mesh
    sa: str
    key: bytes
    chain: bytes
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(TD, "demo", self.sa)

    @property
    def serial(self) -> int:
        return load_chain(self.chain)[0].serial_number

    def channel(self) -> grpc.Channel:
        ch = secure_channel(
            f"127.0.0.1:{self.mesh.opts.mtls_listen.rpartition(':')[2]}",
            self.mesh.cp.store.ca.root_pem,
            CP_SERVER_NAME,
            (self.key, self.chain),
        )
        self.channels.append(ch)
        return ch

    def renew(self) -> Vm:
        """A renewal over mutual TLS with this certificate (Istio's CreateCertificate); the new Vm."""
        key = generate_key()
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel())
        resp = stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key).decode(), validity_duration=3600),
            timeout=10,
        )
        return Vm(self.mesh, self.sa, key_pem(key), "".join(resp.cert_chain).encode())


class Mesh:
    """The control plane of the module docstring, plus what the tests started against it."""

    def __init__(self, root: Path) -> None:
        config = root / "config"
        config.mkdir(parents=True)
        (config / "mesh.yaml").write_text(MESH)
        self.opts = ServeOptions(
            state_dir=root / "state",
            config_dir=config,
            listen=f"127.0.0.1:{free_port()}",
            mtls_listen=f"127.0.0.1:{free_port()}",
            http_listen=f"127.0.0.1:{free_port()}",
            lifecycle=FAST,
        )
        self.cp = ControlPlane(self.opts)
        self.cp.start()
        assert self.cp.configs.errors() == []
        self.clients: list[RegistrationClient] = []
        self.streams: list[AdsStream] = []
        self.vms: list[Vm] = []

    def vm(self, sa: str) -> Vm:
        key = generate_key()
        identity = SpiffeId(TD, "demo", sa)
        chain = self.cp.store.ca.sign_workload_csr(make_csr(key), identity, datetime.timedelta(hours=1))
        self.cp.store.records.record(chain[0], identity, via="join")
        vm = Vm(self, sa, key_pem(key), chain_pem(chain))
        self.vms.append(vm)
        return vm

    def register(
        self, vm: Vm, group: str, address: str, labels: dict[str, str] | None = None
    ) -> RegistrationClient:
        ch = vm.channel()
        client = RegistrationClient(
            lambda: ch,
            RegisterInfo(group=group, address=address, labels=dict(labels or {})),
            heartbeat_interval=0.5,
            ack_timeout=2.0,
            backoff_initial=0.2,
            backoff_max=1.0,
        )
        client.start()
        self.clients.append(client)
        return client

    def ads(
        self, vm: Vm, nid: str, metadata: dict[str, Any] | None = None, types: tuple[str, ...] = (CLUSTER,)
    ) -> AdsStream:
        s = AdsStream(vm.channel(), make_node(nid, metadata), types)
        self.streams.append(s)
        return s

    def versions(self, key: str) -> dict[str, str]:
        snap = self.cp.cache.get(key)
        assert snap is not None, f"no snapshot for {key}"
        return {t: snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER)}

    def api_endpoints(self, key: str) -> list[str]:
        """Addresses of the api service's endpoints in the EDS that proxy ``key`` is sent."""
        snap = self.cp.cache.get(key)
        assert snap is not None
        packed = snap.get(ENDPOINT).resources.get(API_CLUSTER)
        if packed is None:
            return []
        cla = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(cla)
        return sorted(
            lb.endpoint.address.socket_address.address for g in cla.endpoints for lb in g.lb_endpoints
        )

    def api_cluster_sans(self, key: str) -> bytes:
        snap = self.cp.cache.get(key)
        assert snap is not None
        return snap.get(CLUSTER).resources[API_CLUSTER].value

    def entry(self, name: str) -> dict[str, Any] | None:
        return next((w for w in self.cp.workloads.workloads_json() if w["name"] == name), None)

    def inbound_listener(self, key: str) -> bytes:
        snap = self.cp.cache.get(key)
        assert snap is not None
        return snap.get(LISTENER).resources["virtualInbound"].value

    def settle(self) -> None:
        """Wait until a push round that began now has finished and every stream ACKed it."""
        assert self.cp.mesh.wait_pushed(20, self.cp._all_synced), "pushes did not settle"

    def close(self) -> None:
        for c in self.clients:
            c.stop()
        for s in self.streams:
            s.close()
        for vm in self.vms:
            for ch in vm.channels:
                ch.close()
        self.cp.stop()
