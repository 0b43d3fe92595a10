"""Shared test harness: waiting on conditions with deadlines, free ports, root checks."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from tests.tools import missing_message
from vmagent.lab.wait import wait_for


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_root() -> None:
    """Skip (with the reason printed) when not root; CI runs as root and treats a skip as a failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, iptables or systemd-nspawn)")


def require_tool(name: str) -> str:
    """The path of command ``name``; fails (never skips: a skipped check passes by accident) naming the
    Debian package that scripts/system-deps.sh installs for it."""
    path = shutil.which(name)
    if not path:
        pytest.fail(missing_message(name))
    return path


__all__ = ["free_port", "require_root", "require_tool", "wait_for"]
