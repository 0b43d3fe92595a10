#!/usr/bin/env python3
"""Build the vmagent container image (``make image``) without pulling anything from a registry.

    python packaging/image.py [--debs DIR] [--out FILE] [--store DIR --runroot DIR]   (dev venv, as root)

1. The base is the package tier's Debian 12 tree (tests/package/machine.py ``RootfsCache``: debootstrap
   minbase with python3.11, iptables, iproute2, ca-certificates, ..., cached under $VMAGENT_CACHE), so
   ``make test`` and ``make image`` share one debootstrap.
2. A copy of it gets the user vmagent-proxy with uid/gid 1337 (vmagent/common/image.py) and then the
   project's own vmagent and vmagent-cp .debs with ``dpkg -i`` in a chroot (the .debs from --debs, else
   built now with packaging/build.sh). Logs, caches, /dev, /run and /tmp are emptied.
3. That tree, as one tar with sorted names, numeric owners and times clamped to SOURCE_DATE_EPOCH, is the
   only layer: ``podman build`` of packaging/Containerfile (``FROM scratch``, ``--pull=never``,
   ``--network=none``, ``--timestamp``) tags it ``IMAGE`` in the podman store, and ``podman save``
   writes the OCI archive (default dist/vmagent-image_VERSION_ARCH.oci.tar).

--store DIR --runroot DIR keep the image in a podman store of its own instead of the system's (the tests do).
Environment: VMAGENT_CACHE (default /var/cache/vmagent-dev), SOURCE_DATE_EPOCH (default: the last commit's
time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.package.machine import RootfsCache, apt_mirror  # noqa: E402
from vmagent.common.image import IMAGE, IMAGE_GID, IMAGE_UID  # noqa: E402

PROXY_USER = "vmagent-proxy"
ENVOY = "/opt/vmagent/lib/envoy/_bin/envoy"
# Emptied in the image: the container runtime provides /dev, /run and /tmp; the rest is build residue.
EMPTIED = ("dev", "run", "tmp", "var/log", "var/cache/apt", "var/lib/apt/lists")
REMOVED = (
    ".ready",
    "etc/hostname",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
)


_STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"image: [{time.monotonic() - _STARTED:5.0f} s] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(
            f"image: {' '.join(cmd[:4])} ... failed with status {result.returncode}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-4000:]}"
        )
    return result


def project_version() -> str:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    git = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
    )
    return int(git.stdout.strip()) if git.returncode == 0 and git.stdout.strip() else int(time.time())


def debs(directory: Path | None, version: str, arch: str, build: Path) -> list[Path]:
    """The vmagent and vmagent-cp .debs of ``version``: from ``directory``, else built now."""
    if directory is None:
        directory = build / "debs"
        log(f"building the .debs into {directory} (packaging/build.sh)")
        env = {**os.environ, "DIST": str(directory), "VMAGENT_VERSION": version}
        env.update(PACKAGES="vmagent vmagent-cp", FORMATS="deb")
        subprocess.run([str(REPO / "packaging" / "build.sh")], env=env, check=True, cwd=REPO)
    found = [directory / f"{name}_{version}_{arch}.deb" for name in ("vmagent", "vmagent-cp")]
    for path in found:
        if not path.is_file():
            raise SystemExit(f"image: {path} does not exist (make packages, or --debs DIR)")
    return found


def stage(base: RootfsCache, root: Path, packages: list[Path]) -> None:
    """A copy of the base with the proxy user and the .debs installed, build residue removed."""
    if root.exists():
        shutil.rmtree(root)
    base.copy(root)
    chroot = ["chroot", str(root)]
    sh([*chroot, "groupadd", "--system", "--gid", str(IMAGE_GID), PROXY_USER])
    sh(
        [
            *chroot,
            "useradd",
            "--system",
            "--uid",
            str(IMAGE_UID),
            "--gid",
            str(IMAGE_GID),
            "--home-dir",
            "/",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "vmagent Envoy proxy",
            PROXY_USER,
        ]
    )
    inbox = root / "root" / "debs"
    inbox.mkdir()
    for deb in packages:
        shutil.copy(deb, inbox / deb.name)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    sh([*chroot, "dpkg", "-i", *[f"/root/debs/{deb.name}" for deb in packages]], env=env, timeout=600)
    shutil.rmtree(inbox)
    if not (root / ENVOY.lstrip("/")).is_file():
        raise SystemExit(f"image: the vmagent package did not install {ENVOY}")
    (root / "usr" / "local" / "bin" / "envoy").symlink_to(ENVOY)
    for rel in EMPTIED:
        directory = root / rel
        for child in directory.iterdir() if directory.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for rel in REMOVED:
        (root / rel).unlink(missing_ok=True)
    (root / "etc" / "machine-id").write_text("")


def rootfs_tar(root: Path, tar: Path, epoch: int) -> None:
    """One tar of the tree, the same bytes for the same tree: sorted, numeric owners, clamped times."""
    sh(
        [
            "tar",
            "--sort=name",
            "--numeric-owner",
            "--xattrs",
            f"--mtime=@{epoch}",
            "--clamp-mtime",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-C",
            str(root),
            "-cf",
            str(tar),
            ".",
        ],
        timeout=600,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="packaging/image.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--debs", type=Path, help="directory holding vmagent_V_ARCH.deb and vmagent-cp_V_ARCH.deb"
    )
    parser.add_argument("--version", default=None, help="package version (default: pyproject.toml's)")
    parser.add_argument(
        "--out", type=Path, help="the OCI archive (default: dist/vmagent-image_V_ARCH.oci.tar)"
    )
    parser.add_argument("--store", type=Path, help="a podman store of its own (podman --root)")
    parser.add_argument(
        "--runroot", type=Path, help="with --store: its podman --runroot (at most 50 characters)"
    )
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "image")
    args = parser.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("image: needs root (chroot, dpkg -i into the tree, podman's store)")
    for tool in ("podman", "chroot", "tar", "dpkg", "debootstrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"image: {tool} is not on PATH: run scripts/system-deps.sh")
    version = args.version or project_version()
    arch = sh(["dpkg", "--print-architecture"]).stdout.strip()
    out = args.out or REPO / "dist" / f"vmagent-image_{version}_{arch}.oci.tar"
    build: Path = args.build_dir
    build.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch()

    packages = debs(args.debs, version, arch, build)
    cache = RootfsCache(Path(os.environ.get("VMAGENT_CACHE", "/var/cache/vmagent-dev")), apt_mirror())
    log(f"base: {cache.path} (the package tier's Debian 12 tree)")
    cache.ensure()
    root = build / "rootfs"
    log("installing " + " ".join(p.name for p in packages))
    stage(cache, root, packages)
    context = build / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    log("writing the layer's tar")
    rootfs_tar(root, context / "rootfs.tar", epoch)
    shutil.rmtree(root)

    podman = ["podman"]
    if args.store is not None:
        if args.runroot is None:
            raise SystemExit("image: --store needs --runroot too")
        podman += ["--root", str(args.store), "--runroot", str(args.runroot)]
    tag = IMAGE if version == IMAGE.rpartition(":")[2] else f"{IMAGE.rpartition(':')[0]}:{version}"
    log(f"podman build {tag}")
    sh(
        [
            *podman,
            "build",
            "--pull=never",
            "--network=none",
            f"--timestamp={epoch}",
            "--build-arg",
            f"VERSION={version}",
            "--build-arg",
            f"UID_GID={IMAGE_UID}:{IMAGE_GID}",
            "-f",
            str(REPO / "packaging" / "Containerfile"),
            "-t",
            tag,
            str(context),
        ],
        timeout=1200,
    )
    shutil.rmtree(context)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log(f"podman save {out}")
    sh([*podman, "save", "--format", "oci-archive", "-o", str(out), tag], timeout=1200)
    image_id = sh([*podman, "image", "inspect", "--format", "{{.Id}}", tag]).stdout.strip()
    log(f"{tag} (id {image_id[:12]}) built")
    log(f"{out} {out.stat().st_size / 1048576:.1f} MB")
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
