"""The .rpm installed with `rpm --root` into a copy of the Debian rootfs (it has the shell, systemctl and
useradd the scriptlets need), and erased again: both packages, the whole tree compared before and after."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from tests.package.conftest import Packages
from tests.package.machine import RootfsCache
from tests.package.treediff import Entry, leftovers, snapshot
from vmagent.common.proc import run

pytestmark = [pytest.mark.root, pytest.mark.slow]


def rpm(root: Path, *args: str) -> str:
    # --nodeps: the RPM database of a Debian tree does not know about python3.11 or iptables, which are
    # installed there through dpkg. Scriptlets run chrooted in ROOT.
    result = run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", *args], timeout=300)
    return result.stdout + result.stderr


# What may differ in the tree between "before installing" and "after erasing", and why. Anything else left
# behind (a file, a directory, a changed mode or owner) fails the test.
ALLOWED_AFTER_ERASE: dict[str, str] = {
    "/var/lib/rpm/": "rpm's own database: this Debian tree had none before the first `rpm --root`",
    "/usr/share/licenses": "created by rpm as the parent of our license directory: Debian has none; on "
    "RPM distributions it exists and belongs to the filesystem package, as /usr/share/doc does",
}


def assert_no_leftovers(root: Path, before: dict[str, Entry], allowed: dict[str, str]) -> None:
    left = leftovers(before, snapshot(root), {**ALLOWED_AFTER_ERASE, **allowed})
    assert left == [], "rpm -e left these behind:\n" + "\n".join(left)


def test_rpm_install_and_erase(packages: Packages, rootfs: RootfsCache, tmp_path: Path) -> None:
    """Both .rpm packages, one after the other in one copy of the rootfs; after each erase the whole tree
    is as before the installation."""
    require_root()
    require_tool("rpm")
    assert packages.cp_rpm is not None
    root = rootfs.copy(tmp_path / "root")
    try:
        before = snapshot(root)
        rpm(root, "-i", "--nodeps", str(packages.rpm))  # the file is read from the host

        # %post ran: the proxy user exists, the unit is present and enabled (not started: nothing runs here).
        passwd = (root / "etc" / "passwd").read_text()
        assert any(line.startswith("vmagent-proxy:") for line in passwd.splitlines()), passwd
        assert (root / "usr" / "lib" / "systemd" / "system" / "vmagent.service").is_file()
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "vmagent.service"
        assert wants.is_symlink()
        assert oct((root / "var" / "lib" / "vmagent").stat().st_mode & 0o777) == "0o700"
        assert "vmagent-" + packages.version in rpm(root, "-q", "vmagent")
        verify = rpm(root, "-V", "--nodeps", "vmagent")
        assert verify.strip() == "", verify

        # The launcher works from the installed tree (python3.11 of the Debian tree, chrooted).
        usage = run(["chroot", str(root), "/usr/bin/vmagent", "--help"]).stdout
        assert "usage: vmagent" in usage

        # Configuration edited by the operator is kept (as .rpmsave); everything else goes.
        (root / "etc" / "vmagent" / "vmagent.env").write_text("VMAGENT_OPTS=--log-level debug\n")
        rpm(root, "-e", "vmagent")
        assert not (root / "opt" / "vmagent").exists()
        assert not (root / "usr" / "bin" / "vmagent").exists()
        assert not (root / "usr" / "lib" / "systemd" / "system" / "vmagent.service").exists()
        assert not wants.is_symlink(), "%preun did not disable the unit"
        assert (root / "etc" / "vmagent" / "vmagent.env.rpmsave").is_file()
        left = run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-qa"]).stdout.split()
        assert left == []
        edited = {
            "/etc/vmagent": "holds the operator's edited configuration, kept by rpm",
            "/etc/vmagent/vmagent.env.rpmsave": "the operator's edited configuration, kept by rpm",
        }
        assert_no_leftovers(root, before, edited)
        shutil.rmtree(root / "etc" / "vmagent")

        # The control plane's package: installed, verified, erased without a trace.
        rpm(root, "-i", "--nodeps", str(packages.cp_rpm))
        assert (root / "usr" / "lib" / "systemd" / "system" / "vmagent-cp.service").is_file()
        assert oct((root / "var" / "lib" / "vmagent-cp").stat().st_mode & 0o777) == "0o700"
        verify = rpm(root, "-V", "--nodeps", "vmagent-cp")
        assert verify.strip() == "", verify
        usage = run(["chroot", str(root), "/usr/bin/vmagent-cp", "--help"]).stdout
        assert "usage: vmagent-cp" in usage
        rpm(root, "-e", "vmagent-cp")
        assert_no_leftovers(root, before, {})
    finally:
        shutil.rmtree(root, ignore_errors=True)
