"""Fixtures of the package tier: the packages (built once per source tree), the cached Debian rootfs."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.package.machine import RootfsCache, apt_mirror
from vmagent.common.proc import run

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VMAGENT_CACHE", "/var/cache/vmagent-dev"))
# What goes into a package; a change to any of these files makes a new build.
SOURCES = ("vmagent", "packaging", "systemd", "pyproject.toml", "requirements-dev.txt", "README.md")
PREVIOUS_VERSION_SUFFIX = "~prev1"
# Bump when this fixture's build invocation changes.
BUILD_RECIPE = "1"


@dataclass(frozen=True)
class Packages:
    version: str
    deb: Path
    rpm: Path
    cp_deb: Path | None
    cp_rpm: Path | None


def source_hash() -> str:
    h = hashlib.sha256(BUILD_RECIPE.encode())
    for top in SOURCES:
        base = REPO / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def project_version() -> str:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


KEEP_BUILDS = 4


def _prune_old_builds(keep: Path) -> None:
    """Keep the newest few package builds in the cache (each is ~180 MB); drop older ones."""
    builds = sorted(CACHE.glob("packages-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [b for b in builds if b != keep][KEEP_BUILDS:]:
        shutil.rmtree(old, ignore_errors=True)


def build_packages(
    version: str, names: tuple[str, ...], formats: tuple[str, ...] = ("deb", "rpm")
) -> Packages:
    """Run packaging/build.sh into a cache directory keyed by the sources; reuse a finished one."""
    require_tool("dpkg")
    out = CACHE / f"packages-{source_hash()}-{version}-{'-'.join(names)}-{'-'.join(formats)}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "packages.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".ready").exists():
            shutil.rmtree(out, ignore_errors=True)
            venv_bin = str(Path(sys.executable).parent)
            env = {
                **os.environ,
                "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
                "DIST": str(out),
                "VMAGENT_VERSION": version,
                "PACKAGES": " ".join(names),
                "FORMATS": " ".join(formats),
            }
            result = run([str(REPO / "packaging" / "build.sh")], env=env, timeout=1200, check=False)
            if result.returncode != 0:
                pytest.fail(f"packaging/build.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
            (out / ".ready").touch()
            _prune_old_builds(out)
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[arch]

    def deb(name: str) -> Path | None:
        return out / f"{name}_{version}_{arch}.deb" if name in names else None

    def rpm(name: str) -> Path | None:
        return out / f"{name}-{version}-1.{machine}.rpm" if name in names else None

    agent_deb, agent_rpm = deb("vmagent"), rpm("vmagent")
    assert agent_deb is not None and agent_rpm is not None
    return Packages(version, agent_deb, agent_rpm, deb("vmagent-cp"), rpm("vmagent-cp"))


@pytest.fixture(scope="session")
def packages() -> Packages:
    """The current tree's vmagent and vmagent-cp packages, .deb and .rpm."""
    return build_packages(project_version(), ("vmagent", "vmagent-cp"))


@pytest.fixture(scope="session")
def previous_packages() -> Packages:
    """The agent package of the same tree under a lower version, to exercise the upgrade path."""
    return build_packages(project_version() + PREVIOUS_VERSION_SUFFIX, ("vmagent",), ("deb",))


@pytest.fixture(scope="session")
def rootfs() -> RootfsCache:
    """The cached Debian 12 rootfs (debootstrap minbase + systemd, iptables, python3.11)."""
    require_root()
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "ip"):
        require_tool(tool)
    cache = RootfsCache(CACHE, apt_mirror())
    cache.ensure()
    return cache
