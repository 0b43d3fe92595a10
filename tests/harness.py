"""Shared test harness: waiting on conditions with deadlines, free ports, root checks."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail the test with ``what`` at the deadline.

    Exceptions raised by ``condition`` count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported at the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_root() -> None:
    """Skip (with the reason printed) when not root; CI runs as root and treats a skip as a failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, iptables or systemd-nspawn)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"needs {name!r} on PATH (scripts/system-deps.sh installs it)")
    return path
