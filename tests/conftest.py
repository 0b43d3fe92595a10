"""Fixtures shared by every tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cp_harness import ControlPlaneProcess
from tests.tools import TIER_TOOLS, missing_message, missing_tools

TESTS = Path(__file__).resolve().parent


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop before the first test when a command a collected tier runs is missing (with its Debian package),
    rather than failing or skipping deep inside a test."""
    tiers: set[str] = set()
    for item in session.items:
        try:
            tiers.add(item.path.resolve().relative_to(TESTS).parts[0])
        except ValueError:
            continue
    needed = [tool for tier in sorted(tiers) for tool in TIER_TOOLS.get(tier, ())]
    missing = missing_tools(needed)
    if missing:
        pytest.exit(
            "\n".join(missing_message(tool) for tool in missing), returncode=pytest.ExitCode.USAGE_ERROR
        )


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A running ``vmagent-cp serve`` on loopback with WorkloadGroup demo/web (service account web)."""
    cp = ControlPlaneProcess(tmp_path)
    cp.add_group("demo", "web")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
