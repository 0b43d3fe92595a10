"""The lab mesh the fault tests share: the demo's WorkloadGroups and services, a client VM ``web`` (no
application) and one or more ``demo/api`` VMs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from vmagent.lab.demo_config import GROUPS, SERVICES
from vmagent.lab.mesh import MeshLab

API_URL = "http://api.demo.svc.cluster.local:8080/hello"


@contextmanager
def web_and_api_mesh(
    root: Path,
    prefix: str,
    subnet: str,
    apis: Sequence[str] = ("api",),
    cp_args: Sequence[str] = (),
    groups: str = GROUPS,
) -> Iterator[MeshLab]:
    """The mesh, up once ``web`` reaches the api service; closed (everything removed) on exit. ``groups``
    replaces the demo's WorkloadGroups (e.g. to give api a probe)."""
    lab = MeshLab(root, prefix=prefix, subnet=subnet)
    try:
        lab.add_control_plane({"10-groups.yaml": groups, "20-services.yaml": SERVICES}, list(cp_args))
        lab.add_vm("web", "demo/web", app_port=None)
        for name in apis:
            lab.add_vm(name, "demo/api")
        lab.wait_reachable(lab.vms["web"], API_URL, timeout=60)
        yield lab
    finally:
        lab.close()
