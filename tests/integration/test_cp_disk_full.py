"""The control plane's state dir (SQLite) on a full filesystem: xDS keeps being served, a join that cannot
be recorded is refused with a clear error (and the log names the store and the reason), nothing stored
is corrupted, and joins succeed again once space is freed.

The full disk is real: the state dir is a 64 MiB tmpfs (mounted by the test as root, unmounted after),
filled with a file until the kernel says ENOSPC. The ADS client is a real mutual-TLS gRPC stream on 15013
with the certificate of a VM that joined before the disk filled.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.cp_harness import ControlPlaneProcess, VmDirs, join
from tests.integration.test_agent_disk_full import small_tmpfs
from vmagent.agent.identity import IdentityStore
from vmagent.agent.join import secure_channel
from vmagent.agent.paths import AgentPaths
from vmagent.common.constants import CP_SERVER_NAME

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _ads_clusters(cp: ControlPlaneProcess, vm: VmDirs) -> int:
    """Open a new ADS stream with the VM's certificate; return how many clusters the first answer holds."""
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
        return len(first.resources)
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
