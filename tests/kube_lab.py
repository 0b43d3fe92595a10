"""A "cluster" for the system tests: the test API server (tests/kubeapi, a stand-in for kube-apiserver,
which cannot be installed here) listening inside one of the lab's network namespaces, plus helpers for
the objects a cluster would hold (Services, pods' EndpointSlices).

The server runs in this process (so tests can create objects and drop watches directly) but its
listening socket is opened from a thread that entered the namespace with ``setns(2)``: a socket stays
in the namespace it was created in, so the control plane in another namespace reaches it over the
lab's LAN exactly as it would reach a real API server.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar

from tests.kubeapi.server import KubeApiServer
from vmagent.controlplane.kube.crds import all_crds
from vmagent.lab.netns import Netns

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def in_netns(ns: Netns, fn: Any) -> Any:
    """Run ``fn()`` in a thread that entered ``ns``'s network namespace; returns its result."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {ns.name}: {os.strerror(err)}")
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=run, name=f"setns-{ns.name}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def start_cluster(ns: Netns, workdir: Path) -> KubeApiServer:
    """The test API server on ``ns``'s LAN address (port 6443), Istio's CRDs installed."""
    api: KubeApiServer = in_netns(
        ns, lambda: KubeApiServer(workdir, host=ns.address, port=6443, bookmark_interval=1.0)
    )
    api.start()
    for crd in all_crds():
        api.create(crd)
    return api


def start_pod_app(ns: Netns, name: str, port: int = 8080) -> subprocess.Popen[str]:
    """A plain HTTP server standing in for a pod without a sidecar."""
    proc = ns.popen(
        [sys.executable, "-m", "vmagent.lab.echo", "--port", str(port), "--name", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ns.wait_listening(port, timeout=20)
    return proc


def service(
    name: str, cluster_ip: str, port: int, target_port: int, selector: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": cluster_ip,
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    }


def pod(name: str, labels: dict[str, str], ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "echo"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def endpoint_slice(service_name: str, port: int, pods: dict[str, str]) -> dict[str, Any]:
    """An EndpointSlice of ``service_name`` listing ``pods`` ({pod name: IP}), all ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-slice",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": name, "namespace": "default"},
            }
            for name, ip in sorted(pods.items())
        ],
    }
