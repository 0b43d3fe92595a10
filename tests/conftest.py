"""Fixtures shared by every tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cp_harness import ControlPlaneProcess


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
