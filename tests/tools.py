"""The external commands the test tiers run on this machine, and the Debian package that provides each.

``scripts/system-deps.sh`` installs every package named here; ``tests/conftest.py`` checks the commands of
the collected tiers once, before the first test, so a missing tool stops the run with its name and package
instead of failing deep inside an assertion (or, worse, skipping). docs/development.md has the same table
with the code (vmagent/, packaging/, scripts/, bench/) included; keep the two in step.

Commands run *inside* the package tier's booted Debian tree (dpkg -i, systemctl, journalctl, ps...) come
from that tree (tests/package/machine.py PACKAGES), not from this machine, and are not listed here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

# command -> Debian package (bookworm)
DEBIAN_PACKAGE: dict[str, str] = {
    "sh": "dash",
    "test": "coreutils",
    "cp": "coreutils",
    "chroot": "coreutils",
    "tar": "tar",
    "podman": "podman",
    "runc": "runc",
    "ip": "iproute2",
    "ss": "iproute2",
    "sysctl": "procps",
    "setpriv": "util-linux",
    "nsenter": "util-linux",
    "useradd": "passwd",
    "getent": "libc-bin",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "ip6tables-save": "iptables",
    "ip6tables-restore": "iptables",
    "iptables-nft": "iptables",
    "iptables-nft-save": "iptables",
    "iptables-nft-restore": "iptables",
    "ip6tables-nft-save": "iptables",
    "ip6tables-nft-restore": "iptables",
    "iptables-legacy": "iptables",
    "iptables-legacy-save": "iptables",
    "iptables-legacy-restore": "iptables",
    "ip6tables-legacy-save": "iptables",
    "ip6tables-legacy-restore": "iptables",
    "nft": "nftables",
    "curl": "curl",
    "dig": "bind9-dnsutils",
    "dpkg": "dpkg",
    "dpkg-deb": "dpkg",
    "rpm": "rpm",
    "rpmlint": "rpmlint",
    "lintian": "lintian",
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "systemd-analyze": "systemd",
    "git": "git",
    "awk": "mawk",
    "gcc": "gcc",
    "pkg-config": "pkg-config",
    "kubectl": "kubectl (the machine image's) or kubernetes-client",
    "promtool": "prometheus",
    "faketime": "faketime",
    "wat2wasm": "wabt",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "vagrant": "vagrant (+ vagrant-libvirt)",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
}

_CAPTURE = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
)

# tier (the directory under tests/) -> the commands its tests and the code they drive run on this machine
TIER_TOOLS: dict[str, tuple[str, ...]] = {
    "unit": ("sh", "promtool"),
    "integration": ("sh", "test", "setpriv", "promtool", "faketime", "kubectl", "wat2wasm"),
    "system": (
        *_CAPTURE,
        "nft",
        "ip",
        "ss",
        "sysctl",
        "setpriv",
        "useradd",
        "getent",
        "curl",
        "dig",
        "test",
        "kubectl",
        "wat2wasm",
        "chromium",
        "chromedriver",
    ),
    "kube": ("kubectl",),
    "ansible": ("ssh", "ssh-keygen", "systemd-nspawn", "debootstrap", "ip", "nsenter"),
    # Not in `make test`: `make vagrant` installs these with scripts/vagrant-deps.sh.
    "vagrant": (
        "vagrant",
        "virsh",
        "libvirtd",
        "virtlogd",
        "qemu-system-x86_64",
        "qemu-img",
        "mkfs.ext4",
        "debootstrap",
        "ssh",
        "ssh-keygen",
    ),
    "package": (
        "ip",
        "nsenter",
        "systemd-nspawn",
        "systemd-analyze",
        "debootstrap",
        "cp",
        "chroot",
        "tar",
        "podman",
        "runc",
        "dpkg",
        "dpkg-deb",
        "rpm",
        "rpmlint",
        "lintian",
        "git",
        "awk",
    ),
}


def missing_message(tool: str) -> str:
    package = DEBIAN_PACKAGE.get(tool, "unknown: add it to tests/tools.py")
    return f"tool {tool!r} (Debian package {package}) is missing: run scripts/system-deps.sh"


def missing_tools(tools: Iterable[str]) -> list[str]:
    """The commands of ``tools`` not found on PATH, each once, in the given order."""
    seen: list[str] = []
    for tool in tools:
        if tool not in seen and shutil.which(tool) is None:
            seen.append(tool)
    return seen
