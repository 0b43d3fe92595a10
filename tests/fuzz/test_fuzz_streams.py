"""Fuzz the control plane's long-lived streams on its mutual-TLS port, against a real `vmagent-cp serve`:
the registration stream (``vmagent.v1.Registration/Connect``) with generated agent messages and with raw
frames that are not protobuf at all, and the ADS stream with raw and mutated DiscoveryRequest frames (the
frames the agent's xDS proxy forwards unchanged from Envoy). Each call ends in a response or a gRPC
status; afterwards the control plane is alive and still renews a certificate and accepts a registration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.cp_harness import ControlPlaneProcess, VmDirs, join
from tests.fuzz.conftest import EXAMPLES, EXECUTIONS, measured_process
from vmagent.agent.identity import IdentityStore
from vmagent.agent.join import make_csr, secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.api import istio_ca_pb2, istio_ca_pb2_grpc, registration_pb2
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.common.x509util import generate_key

STREAM_EXAMPLES = max(EXAMPLES // 4, 20)  # each example is a TLS stream round trip
REGISTRATION = "/vmagent.v1.Registration/Connect"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
# The control plane runs under coverage.py; these are the files reported for each target (docs/reliability.md).
REGISTRATION_TARGETS = ("registration stream (messages)", "registration stream (raw frames)")
REGISTRY_MODULES = tuple(
    f"vmagent.controlplane.registry.{m}" for m in ("registration", "workload_entry", "workload_store")
)
ADS_TARGET = "ads stream (frames)"
XDS_MODULES = ("vmagent.controlplane.xds.server", "vmagent.controlplane.xds.stream")
# Statuses a hostile stream may end with; UNKNOWN would mean an exception escaped a handler.
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
}  # fmt: skip


class Mesh:
    def __init__(self, cp: ControlPlaneProcess, store: IdentityStore) -> None:
        self.cp = cp
        ident = store.load()
        self.channel = secure_channel(
            f"127.0.0.1:{cp.mtls_port}", ident.root_pem, CP_SERVER_NAME, (ident.key_pem, ident.chain_pem)
        )

    def stream(self, method: str, frames: list[bytes], responses: int = 3) -> None:
        call = self.channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        it = call(iter(frames), timeout=5)
        try:
            for n, _ in enumerate(it):
                if n + 1 >= responses:
                    it.cancel()
                    break
        except grpc.RpcError as exc:
            # A frame that is not the method's protobuf fails in gRPC's own deserializer, which reports
            # UNKNOWN naming the DecodeError; any other UNKNOWN is an exception escaping our handler.
            corrupt = "Error parsing message" in (exc.details() or "")
            assert exc.code() in ALLOWED or corrupt, f"{method}: {exc.code()} {exc.details()}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root: Path = tmp_path_factory.mktemp("fuzzcp")
    with measured_process(root, {REGISTRATION_TARGETS: REGISTRY_MODULES, (ADS_TARGET,): XDS_MODULES}) as run:
        cp = ControlPlaneProcess(root, launcher=run)
        cp.add_group("demo", "web")
        cp.start()
        try:
            tok = cp.token("demo/web")
            vm = VmDirs.under(root)
            r = join(cp, vm, tok["token"], tok["ca_hash"])
            assert r.returncode == 0, r.stderr
            yield Mesh(cp, IdentityStore(AgentPaths(vm.config_dir, vm.state_dir, vm.runtime_dir)))
        finally:
            cp.stop()


text = st.text(max_size=30)
agent_messages = st.one_of(
    st.builds(
        lambda ns, g, a, labels, ports, net, loc, host, w: registration_pb2.AgentMessage(
            register=registration_pb2.Register(
                namespace=ns, group=g, address=a, labels=labels, ports=ports, network=net, locality=loc,
                hostname=host, weight=w,
            )
        ),
        st.sampled_from(["demo", ""]) | text, st.sampled_from(["web", ""]) | text,
        st.sampled_from(["10.0.0.1", "::1", "fe80::1%eth0", "999.1.1.1", ""]) | text,
        st.dictionaries(text, text, max_size=4), st.dictionaries(text, st.integers(0, 2**32 - 1), max_size=4),
        text, text, text, st.integers(0, 2**32 - 1),
    ),
    st.builds(lambda s, h, m: registration_pb2.AgentMessage(health=registration_pb2.HealthReport(
        seq=s, healthy=h, message=m)), st.integers(0, 2**64 - 1), st.booleans(), text),
    st.builds(lambda s: registration_pb2.AgentMessage(heartbeat=registration_pb2.Heartbeat(seq=s)),
              st.integers(0, 2**64 - 1)),
    st.just(registration_pb2.AgentMessage(leave=registration_pb2.Leave())),
    st.just(registration_pb2.AgentMessage()),
)  # fmt: skip


@settings(max_examples=STREAM_EXAMPLES)
@given(st.lists(agent_messages, min_size=1, max_size=5))
def test_registration_stream_with_generated_messages(
    mesh: Mesh, msgs: list[registration_pb2.AgentMessage]
) -> None:
    EXECUTIONS[REGISTRATION_TARGETS[0]] += 1
    mesh.stream(REGISTRATION, [m.SerializeToString() for m in msgs])


@settings(max_examples=STREAM_EXAMPLES)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_registration_stream_with_raw_frames(mesh: Mesh, frames: list[bytes]) -> None:
    EXECUTIONS[REGISTRATION_TARGETS[1]] += 1
    mesh.stream(REGISTRATION, frames)


GOOD_DR = discovery_pb2.DiscoveryRequest(
    node=base_pb2.Node(id="sidecar~10.0.0.1~web.demo~demo.svc.cluster.local", cluster="web.demo"),
    type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
).SerializeToString()


@st.composite
def ads_frames(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(GOOD_DR)
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=STREAM_EXAMPLES)
@given(st.lists(ads_frames(), min_size=1, max_size=4))
@example([GOOD_DR, GOOD_DR])  # a well-formed stream, so every run reaches the state machine at least once
def test_ads_stream_with_raw_and_mutated_frames(mesh: Mesh, frames: list[bytes]) -> None:
    EXECUTIONS[ADS_TARGET] += 1
    mesh.stream(ADS, frames)


def test_control_plane_still_serves_after_the_fuzzing(mesh: Mesh) -> None:
    assert mesh.cp.proc is not None and mesh.cp.proc.poll() is None, "the control plane died"
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(mesh.channel)
    resp = stub.CreateCertificate(
        istio_ca_pb2.IstioCertificateRequest(csr=make_csr(generate_key()).decode()), timeout=30
    )
    assert len(resp.cert_chain) >= 2
    call = mesh.channel.stream_stream(
        REGISTRATION,
        request_serializer=registration_pb2.AgentMessage.SerializeToString,
        response_deserializer=registration_pb2.ControlMessage.FromString,
    )
    hello = registration_pb2.AgentMessage(
        register=registration_pb2.Register(namespace="demo", group="web", address="10.0.0.9")
    )
    replies = call(iter([hello]), timeout=30)
    first = next(replies)
    replies.cancel()
    assert first.WhichOneof("msg") == "registered", first
