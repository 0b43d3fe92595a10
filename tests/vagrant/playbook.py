"""ansible-playbook from this machine against the VMs, over SSH on the private network, with the
collection in ``ansible/`` (the same runner settings as the Ansible tier, without its namespaces)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.ansible.fleet import RECAP, PlaybookRun, collections_path
from tests.vagrant.cluster import Cluster
from vmagent.common.proc import run
from vmagent.lab.demo_config import GROUPS, SERVICES


def write_inventory(cluster: Cluster, path: Path, groups: dict[str, str], all_vars: dict[str, Any]) -> Path:
    """Groups ``vmagent_cp`` (the cp VM) and ``vmagent`` (each workload VM with its WorkloadGroup)."""
    ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20"
    common = {
        "ansible_user": "vagrant",
        "ansible_ssh_private_key_file": str(cluster.box.key),
        "ansible_ssh_common_args": ssh_args,
        "ansible_python_interpreter": "/usr/bin/python3",
        "vmagent_cp_host": "cp",
        "vmagent_cp_config_files": {"10-groups.yaml": GROUPS, "20-services.yaml": SERVICES},
        # Envoy, Python and TLS under software emulation: readiness takes minutes, not seconds.
        "vmagent_ready_timeout": 600,
        "vmagent_cp_ready_timeout": 600,
        **all_vars,
    }
    inventory = {
        "all": {
            "vars": common,
            "children": {
                "vmagent_cp": {"hosts": {"cp": {"ansible_host": cluster.addresses["cp"]}}},
                "vmagent": {
                    "hosts": {
                        name: {
                            "ansible_host": cluster.addresses[name],
                            "vmagent_group": group,
                            "vmagent_address": cluster.addresses[name],
                        }
                        for name, group in groups.items()
                    }
                },
            },
        }
    }
    path.write_text(json.dumps(inventory, indent=1))
    return path


def playbook(workdir: Path, inventory: Path, name: str, *args: str, timeout: float = 2400.0) -> PlaybookRun:
    """``ansible-playbook -i INVENTORY vmagent.mesh.NAME ARGS``; the output is also kept in the workdir."""
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path(workdir)),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_TIMEOUT": "60",
    }
    cmd = [str(venv_bin / "ansible-playbook"), "-i", str(inventory), f"vmagent.mesh.{name}", *args]
    start = time.monotonic()
    result = run(cmd, check=False, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    (workdir / f"{name}-{int(start)}.log").write_text(output)
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        m = RECAP.match(line) if in_recap else None
        if m:
            recap[m["host"]] = {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
    return PlaybookRun(result.returncode, output, recap)
