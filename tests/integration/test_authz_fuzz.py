"""Fuzzing the control plane's authorization with a valid certificate: random node ids, node metadata,
registration labels and addresses from web2's certificate never change another workload's snapshot or
entry (real control plane, real gRPC/mutual TLS on loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import wait_for
from tests.integration.authz_mesh import Mesh
from tests.integration.test_authz_attacks import ALL, API_KEY, WEB_KEY, Joined
from vmagent.api import registration_pb2, registration_pb2_grpc

KNOWN_IPS = ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.9", "::1", "2001:db8::2", "0.0.0.0", "not-an-ip"]
LABEL_KEYS = ["app", "version", "track", "security.istio.io/tlsMode", "istio", "x"]
LABEL_VALUES = ["api", "web", "nothing", "ingressgateway", "", "v1"]

ips = st.sampled_from(KNOWN_IPS)
names = st.sampled_from(["api-10-9-0-2", "web-10-9-0-1", "evil", "x", ""])
namespaces = st.sampled_from(["demo", "other", "istio-system", ""])
labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)
node_ids = st.one_of(
    st.builds(
        lambda kind, ip, name, ns, ns2: f"{kind}~{ip}~{name}.{ns}~{ns2}.svc.cluster.local",
        st.sampled_from(["sidecar", "router", "other"]),
        ips,
        names,
        namespaces,
        namespaces,
    ),
    st.text(alphabet="~.-abc019", max_size=30),
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "NAMESPACE": namespaces,
        "WORKLOAD_NAME": st.sampled_from(["api", "web", "nope"]),
        "LABELS": labels,
        "SERVICE_ACCOUNT": st.sampled_from(["api-sa", "web"]),
    },
)


def snapshot_of(m: Mesh) -> dict[str, Any]:
    """What another workload must keep: api's and web's config, entries and EDS."""
    m.settle()
    entries = {}
    for name in ("web-10.9.0.1", "api-10.9.0.2"):
        e = m.entry(name)
        assert e is not None
        entries[name] = {
            k: e[k] for k in ("cert_serial", "spiffe_id", "labels", "connected", "in_eds", "address")
        }
    return {
        "api": m.versions(API_KEY),
        "web_listeners": m.versions(WEB_KEY),
        "entries": entries,
        "api_eds": m.api_endpoints(WEB_KEY),
        "api_proxy": m.cp.mesh.proxies.get(API_KEY),
        "web_proxy": m.cp.mesh.proxies.get(WEB_KEY),
    }


def test_random_node_ids_metadata_labels_and_addresses_never_touch_another_workload(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        joined = Joined(mesh)
        baseline = snapshot_of(mesh)
        stub = registration_pb2_grpc.RegistrationStub(joined.web2.channel())

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(
            nid=node_ids, meta=metadata, reg_labels=labels, address=ips, group=st.sampled_from(["web", "api"])
        )
        def attempt(
            nid: str, meta: dict[str, Any], reg_labels: dict[str, str], address: str, group: str
        ) -> None:
            if nid:
                s = mesh.ads(joined.web2, nid, meta, ALL)
                # Either refused, or served; wait for one of the two so the attempt has taken effect.
                wait_for(lambda: not s.alive or mesh.cp.cache.get(nid) is not None, 15, what="an answer")
                s.close()
            msgs = [
                registration_pb2.AgentMessage(
                    register=registration_pb2.Register(group=group, address=address, labels=reg_labels)
                ),
                registration_pb2.AgentMessage(leave=registration_pb2.Leave()),
            ]
            try:
                list(stub.Connect(iter(msgs), timeout=15))
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ), exc
            assert snapshot_of(mesh) == baseline

        attempt()
        assert joined.api_ads.alive and joined.web_ads.alive
        assert joined.api_reg.connected and joined.web_reg.connected
    finally:
        mesh.close()
