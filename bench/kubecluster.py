"""A "cluster" for the Kubernetes benchmark: the test API server (tests/kubeapi, a stand-in for
kube-apiserver, which cannot be installed here) in its own process, filled with Services, EndpointSlices
and Pods, driven over a pipe.

The objects are created in the server's process through its store (no HTTP: filling 20,000 pods over
REST would time the test server, not vmagent); the control plane then reaches the server only through a
kubeconfig, as it would a real cluster. Commands on the pipe (one reply each):

* ``("endpoint", address)``: add ``address`` as a ready endpoint to the first EndpointSlice of the
  first Service; replies with ``time.monotonic()`` right after the write;
* ``("stop",)``: stop the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ClusterSpec:
    workdir: Path
    namespaces: int
    services: int
    endpoints: int  # in all; spread evenly over the services, one pod each


def service_name(i: int) -> str:
    return f"svc-{i}"


def namespace_name(i: int, spec: ClusterSpec) -> str:
    return f"kb-{i % spec.namespaces}"


def pod_address(n: int) -> str:
    return f"10.{64 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"


def fill(api: Any, spec: ClusterSpec) -> int:
    """Namespaces, Services with one EndpointSlice each, and a Pod per endpoint; the object count."""
    from vmagent.controlplane.kube.crds import all_crds

    count = 0
    for crd in all_crds():  # Istio's kinds served (empty), as in a cluster with the CRDs installed
        api.create(crd)
        count += 1
    for n in range(spec.namespaces):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"kb-{n}"}})
        count += 1
    per = max(1, spec.endpoints // spec.services)
    e = 0
    for i in range(spec.services):
        ns, name = namespace_name(i, spec), service_name(i)
        labels = {"app": name}
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                    "selector": labels,
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
                },
            }
        )
        endpoints = []
        for j in range(per):
            pod = f"{name}-{j}"
            address = pod_address(e)
            e += 1
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "nodeName": f"node-{j % 10}",
                        "containers": [{"name": "app", "image": "app"}],
                    },
                    "status": {"phase": "Running", "podIP": address},
                }
            )
            endpoints.append(
                {
                    "addresses": [address],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                    "nodeName": f"node-{j % 10}",
                }
            )
        api.create(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abcde",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }
        )
        count += 2 + per
    return count


def cluster_main(spec: ClusterSpec, conn: Any) -> None:
    """The server process: fill, serve, answer commands until ``stop``."""
    from tests.kubeapi.server import KubeApiServer

    t0 = time.monotonic()
    api = KubeApiServer(spec.workdir, bookmark_interval=1.0)
    objects = fill(api, spec)
    api.start()
    conn.send({"kubeconfig": str(api.kubeconfig()), "objects": objects, "fill_s": time.monotonic() - t0})
    first_ns, first = namespace_name(0, spec), service_name(0)
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] == "stop":
                break
            if cmd[0] == "endpoint":
                address = cmd[1]
                sl = api.get("discovery.k8s.io/v1", "EndpointSlice", f"{first}-abcde", first_ns)
                sl["endpoints"].append({"addresses": [address], "conditions": {"ready": True}})
                api.update(sl)
                conn.send(time.monotonic())
            else:
                conn.send(f"unknown command {cmd!r}")
    finally:
        api.stop()
