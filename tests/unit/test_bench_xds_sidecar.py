"""The Sidecar run of bench/xds_convergence.py: its config is valid Istio YAML, and its expectations
(outbound clusters per namespace, read from CDS responses' cluster names) are the ones it checks."""

from __future__ import annotations

from collections import Counter

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import any_pb2

from bench.xds_convergence import SYSTEM_NS, base_config, expected_outbound, namespaces, sidecars
from bench.xdsclient import _outbound_namespaces
from vmagent.controlplane.config.loader import load_text


def test_config_spread_over_namespaces_with_sidecars_is_valid() -> None:
    spaces = namespaces(3)
    text = "".join(base_config(7, spaces).values()) + sidecars(spaces)
    result = load_text(text, "bench.yaml")
    assert [str(e) for e in result.errors] == []
    assert [str(w) for w in result.warnings] == []
    kinds = Counter((o.kind, o.namespace) for o in result.objects)
    assert kinds[("Sidecar", "bench-0")] == kinds[("Sidecar", "bench-2")] == 1
    assert kinds[("ServiceEntry", "bench-0")] == 3  # svc-0, svc-3, svc-6
    assert kinds[("ServiceEntry", SYSTEM_NS)] == 2
    assert kinds[("WorkloadGroup", "bench-0")] == 2  # the clients' and the agent's
    sidecar = next(o for o in result.objects if o.kind == "Sidecar")
    assert sidecar.spec["egress"] == [{"hosts": ["./*", "istio-system/*"]}]


def test_one_namespace_keeps_the_original_config() -> None:
    assert namespaces(1) == ["bench"]
    text = "".join(base_config(10, ["bench"]).values())
    assert "istio-system" not in text
    assert "svc-9.bench.svc.cluster.local" in text and "10.60.9.2" in text


def test_expected_outbound_clusters_with_and_without_sidecar() -> None:
    spaces = namespaces(3)
    assert expected_outbound(7, spaces, "bench-1", sidecar=False) == {
        "bench-0": 3, "bench-1": 2, "bench-2": 2, SYSTEM_NS: 2,
    }  # fmt: skip
    assert expected_outbound(7, spaces, "bench-1", sidecar=True) == {"bench-1": 2, SYSTEM_NS: 2}


def test_cluster_names_of_a_cds_response_counted_per_namespace() -> None:
    def packed(name: str) -> any_pb2.Any:
        msg = any_pb2.Any()
        msg.Pack(cluster_pb2.Cluster(name=name, connect_timeout={"seconds": 1}))
        return msg

    names = [
        "outbound|8080||svc-0.bench-0.svc.cluster.local",
        "outbound|8080||sys-0.istio-system.svc.cluster.local",
        "outbound|8080||sys-1.istio-system.svc.cluster.local",
        "PassthroughCluster",
        "inbound|8080||",
        f"outbound|8080||{'a' * 200}.bench-2.svc.cluster.local",  # its length takes two varint bytes
    ]
    assert _outbound_namespaces([packed(n) for n in names]) == {"bench-0": 1, "bench-2": 1, SYSTEM_NS: 2}


def test_marker_search_by_prefix_finds_what_the_regex_finds() -> None:
    from bench.xds_convergence import MARKER_PREFIXES, MARKER_REGEX
    from bench.xdsclient import WorkerSpec, _Worker

    def worker(prefixes: tuple[bytes, ...]) -> _Worker:
        spec = WorkerSpec("", b"", "bench", "client", [], 0, MARKER_REGEX, marker_prefixes=prefixes)
        return _Worker(spec, None, None)

    body = b"\x0a10.77.0.1\x12bmk-r-3.bench-0\x1a10.77.\x00bmk-r-\x2210.60.1.1 10.77.12.250:8080 bmk-r-3"
    want = {b"10.77.0.1", b"bmk-r-3", b"10.77.12.250"}
    assert worker(()).markers(body) == want
    assert worker(MARKER_PREFIXES).markers(body) == want
