"""Onboarding a fleet with the Ansible collection: wall time of ``site.yml`` for N VMs, per VM, and the slope.

Boots one control plane and N Debian 12 machines (systemd-nspawn, each in its own network namespace on a
bridged LAN, the rootfs of tests/ansible), installs the control plane with ``site.yml --limit vmagent_cp``,
then onboards N/2 fresh VMs and N fresh VMs with ``site.yml`` (the VMs of the first round are removed with
``remove.yml`` in between, untimed, so every onboarded VM is fresh). Reports, as the last line of stdout:

* ``wall_s`` per size and ``per_vm_s`` (wall / n);
* ``slope_s_per_vm``: (wall(N) - wall(N/2)) / (N - N/2), the marginal cost of one more VM;
* ``machine_rss_mib``: the mean resident memory of one onboarded machine (every process in it: systemd,
  sshd, the agent, Envoy);
* ``profile_top_tasks`` per size: the twelve longest tasks of that run (the ``task_profile`` callback in
  bench/ansible_plugins; ansible-playbook runs with ``forks`` >= the hosts of the run);
* ``failed_hosts`` per size (hosts site.yml failed on; such a round's time is not comparable) and the
  load average at start and end (the machine is shared: read the figures with it).

Usage: python bench/fleet.py [N]   (default 10; root; the package tier's packages are built if needed)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, progress
from tests.ansible.fleet import Fleet, fleet_rootfs
from tests.package.conftest import CACHE, build_packages, project_version
from vmagent.lab.demo_config import GROUPS, SERVICES


def machine_rss(pid1: int) -> int:
    root = psutil.Process(pid1)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


PLUGINS = Path(__file__).resolve().parent / "ansible_plugins"


def profile_env(path: Path, forks: int) -> dict[str, str]:
    """Run ansible-playbook with the task_profile callback writing ``path``, and at least ``forks`` forks."""
    return {
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS),
        "ANSIBLE_CALLBACKS_ENABLED": "task_profile",
        "VMAGENT_TASK_PROFILE": str(path),
        "ANSIBLE_FORKS": str(max(10, forks)),
    }


def top_tasks(path: Path, count: int = 12) -> list[dict[str, object]]:
    """The ``count`` tasks with the longest wall time of one profiled run, longest first."""
    tasks: list[dict[str, object]] = json.loads(path.read_text())
    ranked = sorted(tasks, key=lambda t: float(str(t["wall_s"])), reverse=True)
    return [
        {"task": t["task"], "wall_s": t["wall_s"], "host_max_s": t["host_max_s"], "hosts": t["hosts"]}
        for t in ranked[:count]
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    half = max(1, n // 2)
    pkgs = build_packages(project_version(), ("vmagent", "vmagent-cp"))
    assert pkgs.cp_deb is not None
    rootfs = fleet_rootfs(CACHE)
    names = [f"vm{i:02d}" for i in range(n)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp,
        Fleet(rootfs, Path(tmp), "vmbf", "10.237.0.0/24") as fleet,
    ):
        t0 = time.monotonic()
        fleet.boot(["cp", *names])
        progress(f"booted {n + 1} machines in {time.monotonic() - t0:.1f}s")
        host_vars = {
            name: {"vmagent_group": "demo/web", "vmagent_address": fleet.nodes[name].address}
            for name in names
        }
        common = {
            "vmagent_cp_host": "cp",
            "vmagent_package_source": str(pkgs.deb),
            "vmagent_cp_package_source": str(pkgs.cp_deb),
            "vmagent_cp_config_files": {"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES},
        }
        inventory = fleet.write_inventory(
            Path(tmp) / "inventory.yml", {"vmagent_cp": ["cp"], "vmagent": names}, host_vars, common
        )
        cp = fleet.playbook(inventory, "site", "--limit", "cp")
        if cp.rc != 0:
            raise SystemExit(f"control plane: site.yml failed:\n{cp.output[-4000:]}")
        walls: dict[int, float] = {}
        failures: dict[int, list[str]] = {}
        profiles: dict[int, list[dict[str, object]]] = {}
        load_start = os.getloadavg()[0]
        for size in (half, n):
            subset = names[:size]
            t = time.monotonic()
            prof = Path(tmp) / f"profile-{size}.json"
            r = fleet.playbook(
                inventory, "site", "--limit", ",".join(["cp", *subset]), extra_env=profile_env(prof, size + 1)
            )
            walls[size] = time.monotonic() - t
            if prof.exists():
                profiles[size] = top_tasks(prof)
                tasks_total = len(json.loads(prof.read_text()))
                progress(f"profile of {size} VMs ({tasks_total} tasks), longest first:")
                for task in profiles[size]:
                    progress(f"  {task['wall_s']:7.2f}s  {task['task']}")
            failed = sorted(h for h, rec in r.recap.items() if rec["failed"] or rec["unreachable"])
            if r.rc != 0:
                # Reported, not hidden: the figures of a round with failed hosts are not comparable.
                progress(f"site.yml for {size} VMs failed on {failed}:\n{r.output[-3000:]}")
                failures[size] = failed or ["(no recap)"]
            progress(f"onboarded {size} VMs in {walls[size]:.1f}s")
            if size == half:
                rss = [machine_rss(fleet.nodes[name].machine.pid1) for name in subset]
                removed = fleet.playbook(inventory, "remove", "--limit", ",".join(subset))
                if removed.rc != 0:
                    raise SystemExit(f"remove.yml failed:\n{removed.output[-4000:]}")
        slope = (walls[n] - walls[half]) / (n - half) if n > half else 0.0
        emit(
            {
                "bench": "fleet",
                "n": n,
                "wall_s": {str(k): round(v, 1) for k, v in walls.items()},
                "per_vm_s": {str(k): round(v / k, 2) for k, v in walls.items()},
                "slope_s_per_vm": round(slope, 2),
                "machine_rss_mib": round(statistics.mean(rss) / 2**20, 1),
                "cpus": psutil.cpu_count(),
                "failed_hosts": {str(k): v for k, v in failures.items()},
                "loadavg_1m_at_start": round(load_start, 2),
                "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                "profile_top_tasks": {str(k): v for k, v in profiles.items()},
            }
        )


if __name__ == "__main__":
    main()
