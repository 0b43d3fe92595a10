"""A pod and a VM as peers in one mesh: the pod's agent runs in pod mode with a ServiceAccount token.

The "cluster" is the test API server (tests/kubeapi, a FAKE standing in for kube-apiserver, which cannot
be installed here) in a lab namespace; the control plane reaches it through a kubeconfig. The "pod" is a
network namespace where, as in a real pod: an init step applies capture from the pod's annotations
(``vmagent capture apply --pod-annotations``, as root: the init container's NET_ADMIN), then the sidecar
(``vmagent run --pod``, as the proxy user, no capability) gets its certificate with a token the test API
server minted for the pod's ServiceAccount ``web``, and an app listens on 8080. The VM ``ratings`` joins
as usual. Real Envoy, real iptables, real mTLS.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import require_root, require_tool
from tests.kube_lab import endpoint_slice, pod, service, start_cluster
from tests.kubeapi.server import KubeApiServer
from vmagent.common.constants import PROXY_USER
from vmagent.lab.mesh import MeshLab, VmHost, ensure_proxy_user, exe
from vmagent.lab.netns import LineLog, Netns
from vmagent.lab.wait import wait_for

SERVICE_CIDR = "10.96.0.0/16"
WEB_IP, RATINGS_IP = "10.96.0.30", "10.96.0.31"
WEB_URL = "http://web.default.svc.cluster.local/"
RATINGS_HOST = "ratings.default.svc.cluster.local"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
RATINGS_ID = "spiffe://cluster.local/ns/default/sa/ratings"


def _group(name: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {name}
  namespace: default
spec:
  metadata:
    labels:
      app: {name}
  template:
    serviceAccount: {name}
    ports:
      http: 8080
"""


@dataclass
class Pod:
    name: str
    ns: Netns
    root: Path
    agent: subprocess.Popen[str] | None = None

    def curl(self, url: str, *extra: str) -> tuple[str, str]:
        """(HTTP code, body) of ``curl`` from the pod's app container (an ordinary user)."""
        cmd = ["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}", *extra, url]
        r = self.ns.run(cmd, user="nobody", check=False, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        return code, body


def _start_pod(lab: MeshLab, api: KubeApiServer, name: str, sa: str) -> Pod:
    """A pod's network namespace: init step (capture), sidecar in pod mode, app; its Pod object."""
    assert lab.cp is not None
    ns = lab.add_host(name)
    ns.add_route(SERVICE_CIDR, lab.lan_gateway())
    obj = pod(name, {"app": name.split("-")[0], "security.istio.io/tlsMode": "istio"}, ns.address)
    obj["spec"]["serviceAccountName"] = sa
    obj["metadata"]["annotations"] = {"traffic.sidecar.istio.io/excludeOutboundPorts": "6443"}
    api.create(obj)
    root = Path("/run/vmagent-lab") / f"{ns.name}-pod"
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("state", "run", "secrets"):
        (root / sub).mkdir(parents=True, mode=0o700)
    # What the kubelet mounts: the projected token (audience istio-ca), the mesh root, the annotations.
    (root / "secrets" / "istio-token").write_text(api.token("default", sa, ["istio-ca"], pod=name))
    shutil.copy(lab.cp.state_dir / "mesh-root.pem", root / "secrets" / "root-cert.pem")
    annotations = "\n".join(f"{k}={json.dumps(v)}" for k, v in obj["metadata"]["annotations"].items())
    (root / "secrets" / "annotations").write_text(annotations + "\n")
    proxy = pwd.getpwnam(PROXY_USER)
    for path in [root, *root.rglob("*")]:
        shutil.chown(path, proxy.pw_uid, proxy.pw_gid)
    # The init container: capture from the pod's annotations (needs NET_ADMIN, runs before the sidecar).
    ns.run(
        [exe("vmagent"), "capture", "apply", "--pod-annotations", str(root / "secrets" / "annotations"),
         "--config-dir", str(root / "state" / "config")]
    )  # fmt: skip
    ns.popen([sys.executable, "-m", "vmagent.lab.echo", "--port", "8080", "--name", name])  # ends with ns
    ns.wait_listening(8080, timeout=20)
    cp = lab.cp.address
    # The sidecar's settings come from the environment, as the injection webhook sets it.
    env = {
        "POD_NAME": name, "POD_NAMESPACE": "default", "INSTANCE_IP": ns.address, "SERVICE_ACCOUNT": sa,
        "CA_ADDR": f"{cp}:15012", "XDS_ADDR": f"{cp}:15013", "TRUST_DOMAIN": "cluster.local",
    }  # fmt: skip
    # (through env(1): running as another user resets the environment)
    agent = ns.popen(
        ["env", *(f"{k}={v}" for k, v in env.items()), exe("vmagent"), "run", "--pod", "--state-dir", str(root / "state"),
         "--runtime-dir", str(root / "run"), "--token-file", str(root / "secrets" / "istio-token"),
         "--ca-file", str(root / "secrets" / "root-cert.pem")],
        user=PROXY_USER,
    )  # fmt: skip
    LineLog(agent).wait_line("agent ready", timeout=60)
    return Pod(name, ns, root, agent)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshLab, KubeApiServer, Pod]]:
    require_root()
    require_tool("curl")
    ensure_proxy_user()
    workdir = Path(tmp_path_factory.mktemp("podmesh"))
    lab = MeshLab(workdir, prefix="vmpod", subnet="10.230.11.0/24")
    api: KubeApiServer | None = None
    pod_root: Path | None = None
    try:
        kube = lab.add_host("kube")
        api = start_cluster(kube, workdir / "kubeapi")
        for sa in ("web", "ratings"):
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": sa, "namespace": "default"},
                }
            )
        kubeconfig = api.kubeconfig(workdir / "kubeconfig")
        lab.add_control_plane(
            {"10-ratings.yaml": _group("ratings"), "11-intruder.yaml": _group("intruder")},
            extra_args=["--kubeconfig", str(kubeconfig), "--lease-namespace", "default"],
        )
        web = _start_pod(lab, api, "web-1", "web")
        pod_root = web.root
        api.create(service("web", WEB_IP, 80, 8080, {"app": "web"}))
        api.create(endpoint_slice("web", 8080, {"web-1": web.ns.address}))
        # The VM ratings is behind a Kubernetes Service too (its selector picks the VM's WorkloadEntry).
        api.create(service("ratings", RATINGS_IP, 80, 8080, {"app": "ratings"}))
        for name in ("ratings", "intruder"):
            vm = lab.add_vm(name, f"default/{name}")
            vm.ns.add_route(SERVICE_CIDR, lab.lan_gateway())
        yield lab, api, web
    finally:
        lab.close()
        if api is not None:
            api.stop()
        if pod_root is not None:
            shutil.rmtree(pod_root, ignore_errors=True)


def _json(body: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body)
    return doc


def _pod_to_ratings(web: Pod) -> tuple[str, str]:
    return web.curl(f"http://{RATINGS_HOST}/", "--resolve", f"{RATINGS_HOST}:80:{RATINGS_IP}")


def test_pod_and_vm_call_each_other_by_name_over_mutual_tls(mesh: tuple[MeshLab, KubeApiServer, Pod]) -> None:
    lab, _, web = mesh
    ratings = lab.vms["ratings"]
    # VM -> pod, by the pod's Service name: the pod's app sees the VM's SPIFFE id in XFCC.
    seen = lab.wait_reachable(ratings, WEB_URL, timeout=90)
    assert seen["name"] == "web-1"
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert f"By={WEB_ID}" in xfcc and f"URI={RATINGS_ID}" in xfcc
    # Pod -> VM, by the VM's Service name: the VM's app sees the pod's SPIFFE id.
    got = wait_for(lambda: (lambda r: r if r[0] == "200" else None)(_pod_to_ratings(web)), timeout=90,
                   what="ratings from the pod")  # fmt: skip
    seen = _json(got[1])
    assert seen["name"] == "ratings"
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert f"By={RATINGS_ID}" in xfcc and f"URI={WEB_ID}" in xfcc
    # The sidecar runs as the proxy user with no capability (capture came from the init step).
    assert web.agent is not None
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{web.agent.pid}/status").read_text().splitlines()
    )
    assert int(status["Uid"].split()[0]) == pwd.getpwnam(PROXY_USER).pw_uid
    assert int(status["CapEff"].strip(), 16) == 0
    # Its certificate came from its ServiceAccount token, recorded with the pod's name.
    assert lab.cp is not None
    certs = lab.cp.api("/api/v1/certificates")
    assert [(c["identity"], c["hostname"]) for c in certs if c["via"] == "kubernetes"] == [
        (WEB_ID, "default/web-1")
    ]
    # `vmagent status` in the pod: pod mode, ready, the pod's identity (config found under the state dir).
    r = web.ns.run(
        [exe("vmagent"), "status", "--state-dir", str(web.root / "state"), "-o", "json"], check=False
    )
    doc = json.loads(r.stdout)
    assert (doc["mode"], doc["ready"], doc["identity"]["spiffe_id"]) == ("pod", True, WEB_ID), r.stdout
    assert doc["registration"] == {"enabled": False}
    # No registration: the control plane has only the VMs' workloads; the pod is known from the cluster.
    workloads = lab.cp.api("/api/v1/workloads")
    assert sorted(w["name"].split("-")[0] for w in workloads) == ["intruder", "ratings"]


def test_strict_peer_authentication_refuses_a_client_without_sidecar(
    mesh: tuple[MeshLab, KubeApiServer, Pod],
) -> None:
    lab, api, web = mesh
    plain = lab.hosts.get("plain") or lab.add_host("plain")
    url = f"http://{web.ns.address}:8080/"

    def plain_code() -> str:
        r = plain.run(["curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", url],
                      check=False, timeout=15)  # fmt: skip
        return r.stdout.strip()

    wait_for(lambda: plain_code() == "200", timeout=60, what="plain text into the PERMISSIVE pod")
    api.create({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "web-strict", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}},
    })  # fmt: skip
    try:
        wait_for(lambda: plain_code() == "000", timeout=60, what="STRICT to refuse plain text")
        # A mesh client still gets in.
        assert lab.wait_reachable(lab.vms["ratings"], WEB_URL, timeout=60)["name"] == "web-1"
    finally:
        api.delete("security.istio.io/v1", "PeerAuthentication", "web-strict", "default")


def test_authorization_policy_lets_the_pod_in_and_keeps_another_vm_out(
    mesh: tuple[MeshLab, KubeApiServer, Pod],
) -> None:
    lab, api, web = mesh
    intruder: VmHost = lab.vms["intruder"]
    url = f"http://{RATINGS_HOST}/"
    lab.wait_reachable(intruder, url, timeout=90)
    api.create({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ratings-from-web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "ratings"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/web"]}}]}],
        },
    })  # fmt: skip
    try:

        def intruder_code() -> str:
            return intruder.curl(url).stdout.rpartition("\n")[2]

        wait_for(lambda: intruder_code() == "403", timeout=60, what="the other VM to be denied")
        code, body = _pod_to_ratings(web)
        assert code == "200", body
        assert _json(body)["name"] == "ratings"
    finally:
        api.delete("security.istio.io/v1", "AuthorizationPolicy", "ratings-from-web", "default")
