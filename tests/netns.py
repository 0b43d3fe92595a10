"""Pytest side of the namespace lab: the ``netns_pool`` fixture; the harness is ``vmagent.lab.netns``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.netns import (
    Lan,
    LineLog,
    Netns,
    NetnsPool,
    as_user,
    cleanup_stale,
    unique_name,
    veth,
)

__all__ = [
    "Lan",
    "LineLog",
    "Netns",
    "NetnsPool",
    "as_user",
    "cleanup_stale",
    "netns_pool",
    "unique_name",
    "veth",
]


@pytest.fixture
def netns_pool() -> Iterator[NetnsPool]:
    """A NetnsPool for one test (skips unless root with ``ip`` on PATH); everything is removed afterwards.

    Import it into a test module or conftest: ``from tests.netns import netns_pool  # noqa: F401``.
    """
    require_root()
    require_tool("ip")
    with NetnsPool() as pool:
        yield pool
