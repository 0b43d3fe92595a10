"""The control plane's state dir (SQLite) on a full filesystem: xDS keeps being served; a join, a
registration or a `vmagent-cp apply` that cannot be stored is refused with a clear error naming the store
and the reason (and logged); nothing half-stored appears; the registrations and objects stored before stay
served; all of them succeed once space is freed.

The full disk is real: the state dir is a 64 MiB tmpfs (mounted by the test as root, unmounted after),
filled with a file until the kernel says ENOSPC. The ADS client is a real mutual-TLS gRPC stream on 15013
with the certificate of a VM that joined before the disk filled; the registering agents are the agent's
own ``RegistrationClient`` over mutual TLS with their VMs' certificates; `apply` is the real CLI writing
to the served state dir.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.cp_harness import ControlPlaneProcess, VmDirs, cli, join
from tests.integration.test_agent_disk_full import small_tmpfs
from vmagent.agent.identity import IdentityStore
from vmagent.agent.join import secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.agent.registration import RegisterInfo, RegistrationClient
from vmagent.common.constants import CP_SERVER_NAME
from vmagent.lab.wait import wait_for

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _ads_clusters(cp: ControlPlaneProcess, vm: VmDirs) -> int:
    """Open a new ADS stream with the VM's certificate; return how many clusters the first answer holds."""
    return len(_ads_cluster_names(cp, vm))


def _ads_cluster_names(cp: ControlPlaneProcess, vm: VmDirs) -> list[str]:
    """Open a new ADS stream with the VM's certificate; the names of the clusters of its first answer."""
    ident = IdentityStore(AgentPaths(vm.config_dir, vm.state_dir, vm.runtime_dir)).load()
    ch = secure_channel(
        f"127.0.0.1:{cp.mtls_port}", ident.root_pem, CP_SERVER_NAME, (ident.key_pem, ident.chain_pem)
    )
    try:
        req = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="sidecar~10.0.0.1~web.demo~demo.svc.cluster.local", cluster="web.demo"),
            type_url=CLUSTER,
        )
        it = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(
            iter([req]), timeout=20
        )
        first = next(it)
        it.cancel()
        return [cluster_pb2.Cluster.FromString(r.value).name for r in first.resources]
    finally:
        ch.close()


def test_full_state_store_keeps_xds_serving_and_recovers(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path)
    cp.add_group("demo", "web")
    with small_tmpfs(cp.state_dir, "64m") as disk:
        cp.start()
        try:
            vm = VmDirs.under(tmp_path)
            tok = cp.token("demo/web")
            r = join(cp, vm, tok["token"], tok["ca_hash"])
            assert r.returncode == 0, r.stderr
            clusters = _ads_clusters(cp, vm)
            assert clusters > 0
            spare = [cp.token("demo/web") for _ in range(2)]  # minted while there is room

            disk.fill()
            served, refused = 0, []
            for i, t in enumerate(spare[:2]):
                assert _ads_clusters(cp, vm) == clusters  # xDS served while the store cannot write
                served += 1
                r = join(cp, VmDirs.under(tmp_path, f"full{i}"), t["token"], t["ca_hash"])
                print(f"join on a full control-plane store: exit {r.returncode}: {r.stderr.strip()}")
                if r.returncode != 0:
                    refused.append(r.stderr)
            log = cp.log_path.read_text()
            store = f"cannot write its state store {cp.state_dir}/state.db: database or disk is full"
            for err in refused:
                assert "join refused by the control plane" in err, err
                assert store in err and "the token not used" in err, err
            assert f"join refused: the control plane {store}" in log, log[-2000:]
            assert cp.proc is not None and cp.proc.poll() is None, "the control plane died on a full disk"

            disk.free()
            # The refused join did not use its one-use token: it joins now.
            r = join(cp, VmDirs.under(tmp_path, "after"), spare[0]["token"], spare[0]["ca_hash"])
            assert r.returncode == 0, r.stderr
            assert _ads_clusters(cp, vm) == clusters
        finally:
            cp.stop()
        db = sqlite3.connect(cp.state_dir / "state.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
    full_lines = [ln for ln in log.splitlines() if "disk is full" in ln]
    print(
        f"control-plane store full: {served} new ADS streams served, {len(refused)} joins refused; "
        f"log: {full_lines[:1]}"
    )


def _integrity_ok(cp: ControlPlaneProcess) -> list[tuple[Any, ...]]:
    """Check the stopped control plane's store; return its auto-registered workload entries."""
    db = sqlite3.connect(cp.state_dir / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT namespace, name, address FROM auto_workload_entries").fetchall()
    finally:
        db.close()


def _workloads(cp: ControlPlaneProcess) -> dict[str, dict[str, Any]]:
    r = requests.get(f"{cp.http_url}/api/v1/workloads", timeout=10)
    r.raise_for_status()
    return {w["address"]: w for w in r.json()}


@contextmanager
def _registered_agent(cp: ControlPlaneProcess, vm: VmDirs, address: str) -> Iterator[RegistrationClient]:
    """The agent's registration client with the VM's certificate (backoff 0.2 s doubling to 2 s)."""
    ident = IdentityStore(AgentPaths(vm.config_dir, vm.state_dir, vm.runtime_dir)).load()
    ch = secure_channel(
        f"127.0.0.1:{cp.mtls_port}", ident.root_pem, CP_SERVER_NAME, (ident.key_pem, ident.chain_pem)
    )
    client = RegistrationClient(
        lambda: ch, RegisterInfo(group="web", address=address), backoff_initial=0.2, backoff_max=2.0
    )
    client.start()
    try:
        yield client
    finally:
        client.stop()
        ch.close()


def test_registration_on_a_full_store_is_refused_and_retried_until_space_is_freed(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path)
    cp.add_group("demo", "web")
    with small_tmpfs(cp.state_dir, "64m") as disk:
        cp.start()
        try:
            vms = []
            for name in ("early", "late"):
                vm = VmDirs.under(tmp_path, name)
                tok = cp.token("demo/web")
                r = join(cp, vm, tok["token"], tok["ca_hash"])
                assert r.returncode == 0, r.stderr
                vms.append(vm)
            with _registered_agent(cp, vms[0], "10.0.0.1") as early:
                wait_for(lambda: early.connected, 30, what="the first agent to register")

                disk.fill()
                with _registered_agent(cp, vms[1], "10.0.0.2") as late:
                    err = wait_for(
                        lambda: late.registrations == 0 and "RESOURCE_EXHAUSTED" in (late.last_error or "")
                        and late.last_error,
                        60,
                        what="the registration refused on the full store",
                    )  # fmt: skip
                    print(f"registration on a full control-plane store: agent's last error: {err}")
                    store = f"cannot write its state store {cp.state_dir}/state.db: database or disk is full"
                    assert store in err and "was not registered, retry later" in err, err
                    # Refused and retried: the agent keeps trying with backoff, the control plane logs each.
                    wait_for(
                        lambda: cp.log_path.read_text().count("refused registration from") >= 2,
                        60,
                        what="a retried registration",
                    )
                    assert "ERROR" in next(ln for ln in cp.log_path.read_text().splitlines() if store in ln)
                    # Nothing half-stored: the refused agent has no entry; the registered one stays in EDS.
                    shown = _workloads(cp)
                    assert "10.0.0.2" not in shown, shown
                    assert shown["10.0.0.1"]["in_eds"] and shown["10.0.0.1"]["connected"], shown
                    # The registered agent's heartbeats cannot be stored (one every 30 s): its stream
                    # goes on, and its entry stays in EDS.
                    wait_for(
                        lambda: "cannot store the heartbeat of demo/" in cp.log_path.read_text(),
                        90,
                        what="a heartbeat that cannot be stored",
                    )
                    assert early.connected and early.registrations == 1
                    assert _workloads(cp)["10.0.0.1"]["in_eds"]
                    assert cp.proc is not None and cp.proc.poll() is None, "the control plane died"

                    disk.free()
                    wait_for(lambda: late.connected, 60, what="the registration after space was freed")
                    shown = _workloads(cp)
                    assert shown["10.0.0.2"]["in_eds"] and shown["10.0.0.1"]["in_eds"], shown
                    retries = cp.log_path.read_text().count(store)
        finally:
            cp.stop()
        stored = _integrity_ok(cp)
    assert sorted(a for _, _, a in stored) == ["10.0.0.1", "10.0.0.2"], stored
    print(
        f"control-plane store full: registration refused {retries} times (RESOURCE_EXHAUSTED), the "
        "registered agent kept its stream and EDS entry; registered after space was freed"
    )


SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: demo
spec:
  hosts: [{name}.example.com]
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"""


def test_apply_on_a_full_store_fails_clearly_and_keeps_serving_what_was_applied(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path)
    cp.add_group("demo", "web")
    files = {}
    for name in ("ext-before", "ext-full"):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(textwrap.dedent(SERVICE_ENTRY.format(name=name)))

    def apply(name: str) -> Any:
        return cli("vmagent-cp", "apply", "-f", str(files[name]), "--state-dir", str(cp.state_dir))

    def served(cp: ControlPlaneProcess, vm: VmDirs, name: str) -> bool:
        return any(f"{name}.example.com" in c for c in _ads_cluster_names(cp, vm))

    with small_tmpfs(cp.state_dir, "64m") as disk:
        cp.start()
        try:
            vm = VmDirs.under(tmp_path)
            tok = cp.token("demo/web")
            r = join(cp, vm, tok["token"], tok["ca_hash"])
            assert r.returncode == 0, r.stderr
            r = apply("ext-before")
            assert r.returncode == 0, r.stderr
            wait_for(lambda: served(cp, vm, "ext-before"), 30, what="the applied ServiceEntry in CDS")

            disk.fill()
            r = apply("ext-full")
            print(f"vmagent-cp apply on a full state dir: exit {r.returncode}: {r.stderr.strip()}")
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert "Traceback" not in r.stderr, r.stderr
            assert (
                f"vmagent-cp: error: cannot write the state store {cp.state_dir}/state.db: database or disk "
                "is full; nothing was stored"
            ) in r.stderr, r.stderr
            # The objects applied before are still served; the refused one is not half there.
            names = _ads_cluster_names(cp, vm)
            assert any("ext-before.example.com" in c for c in names), names
            assert not any("ext-full.example.com" in c for c in names), names
            assert cp.proc is not None and cp.proc.poll() is None, "the control plane died"

            disk.free()
            r = apply("ext-full")
            assert r.returncode == 0, r.stderr
            wait_for(lambda: served(cp, vm, "ext-full"), 30, what="the ServiceEntry applied after freeing")
            assert served(cp, vm, "ext-before")
        finally:
            cp.stop()
        _integrity_ok(cp)
    print("control-plane store full: apply refused naming state.db, the applied objects still served")
