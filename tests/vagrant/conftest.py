"""Fixtures of the VM tier: libvirt started by the tier, the box, the packages, the booted VMs, and the
figures (wall time, boot-to-ready seconds, failed requests) printed in the test summary."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness import require_root, require_tool
from tests.package.conftest import CACHE, PREVIOUS_VERSION_SUFFIX, Packages, build_packages, project_version
from tests.tools import TIER_TOOLS
from tests.vagrant.cluster import Cluster, build_box
from tests.vagrant.libvirt import Libvirt

FIGURES: list[str] = []
STARTED = time.monotonic()
SUBNET = "10.239.56"
PREFIX = "vmagent-tier-"
# vm1 and vm2 serve "web", vm3 ("api") is the client: the reboot scenario needs a second web endpoint to
# fail over to, and a client outside "web" (a VM calling its own service is not what is tested here).
WORKLOAD_VMS = 3


def figure(text: str) -> None:
    """A measured figure, printed in the summary of the run (and kept when a later step fails)."""
    FIGURES.append(text)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("vagrant tier figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"tier wall time: {time.monotonic() - STARTED:.0f} s")


@pytest.fixture(scope="session")
def vagrant_packages() -> tuple[Packages, Packages]:
    """The .deb packages of this tree (as ``make packages`` builds them) and the agent under a lower
    version (the upgrade scenario's starting point)."""
    current = build_packages(project_version(), ("vmagent", "vmagent-cp"), ("deb",))
    previous = build_packages(project_version() + PREVIOUS_VERSION_SUFFIX, ("vmagent",), ("deb",))
    return current, previous


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """libvirt running, the box built and added, ``vagrant up`` of cp + three workload VMs; at the end
    everything destroyed (also on failure or Ctrl-C), and the teardown fails naming anything left."""
    require_root()
    for tool in TIER_TOOLS["vagrant"]:
        require_tool(tool)
    start = time.monotonic()
    box = build_box(CACHE)
    figure(f"box ready (cached or built): {time.monotonic() - start:.0f} s")
    libvirt = Libvirt()
    libvirt.start()
    workdir = tmp_path_factory.mktemp("vagrant")
    vms = Cluster(box, CACHE, workdir, WORKLOAD_VMS, SUBNET, PREFIX)
    try:
        up = time.monotonic()
        vms.vagrant("up", "--provider=libvirt")
        for name in vms.names:
            vms.wait_ssh(name)
        vms.up_seconds = time.monotonic() - up
        figure(f"vagrant up ({len(vms.names)} VMs, SSH answering): {vms.up_seconds:.0f} s")
        yield vms
    finally:
        vms.destroy()
        left = libvirt.stop() + vms.qemu_processes()
        if left:
            pytest.fail(f"the VM tier left behind: {', '.join(left)}")
