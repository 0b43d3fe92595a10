"""The container image of ``make image`` (packaging/image.py): built from the project's own .debs on the
package tier's cached Debian tree, with nothing from a registry, and run with podman as non-root.

The build runs the same script as ``make image``, inside a network namespace that has only a loopback
interface and with an empty podman store of its own: a base image or layer from a registry could not have
been fetched. The result (the OCI archive and that store) is cached under $VMAGENT_CACHE keyed by the
package sources (which include packaging/image.py, packaging/Containerfile and vmagent/common/image.py)
and the base tree, so a second run only starts containers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import require_tool
from tests.package.conftest import CACHE, REPO, Packages, source_hash
from tests.package.machine import RootfsCache
from vmagent.common.image import IMAGE, IMAGE_GID, IMAGE_UID
from vmagent.common.proc import run

# The first test's setup may build the packages (shared with the other package tests) and then the image:
# on a busy 2-core machine that is more than the default 600 s.
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

KEEP_IMAGES = 2


@dataclass(frozen=True)
class Built:
    archive: Path
    store: Path  # podman --root
    runroot: Path  # podman --runroot: its sockets and locks (podman allows at most 50 characters)
    build_log: Path

    @property
    def podman(self) -> list[str]:
        return ["podman", "--root", str(self.store), "--runroot", str(self.runroot)]


def _runroot(out: Path) -> Path:
    return Path("/run") / f"vmimg-{hashlib.sha256(str(out).encode()).hexdigest()[:16]}"


def _prune(keep: Path) -> None:
    """Keep the newest few image builds (each is an archive and a podman store, ~900 MB)."""
    builds = sorted(CACHE.glob("image-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [b for b in builds if b.is_dir() and b != keep][KEEP_IMAGES - 1 :]:
        store = ["--root", str(old / "store"), "--runroot", str(_runroot(old))]
        run(["podman", *store, "system", "reset", "--force"], check=False, timeout=300)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(_runroot(old), ignore_errors=True)


def _build_offline(out: Path, packages: Packages) -> None:
    """packaging/image.py as ``make image`` runs it, in a network namespace with nothing but loopback."""
    netns = f"vmimg{os.getpid()}"
    run(["ip", "netns", "add", netns])
    try:
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        routes = run(["ip", "-n", netns, "route", "show", "table", "all"]).stdout
        assert all(" lo " in f" {line} " for line in routes.splitlines()), routes
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        started = time.monotonic()
        with open(out / "build.log", "w") as log:
            build = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    sys.executable,
                    str(REPO / "packaging" / "image.py"),
                    "--debs",
                    str(packages.deb.parent),
                    "--version",
                    packages.version,
                    "--store",
                    str(out / "store"),
                    "--runroot",
                    str(_runroot(out)),
                    "--out",
                    str(out / "vmagent.oci.tar"),
                    "--build-dir",
                    str(out / "build"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            try:
                returncode = build.wait(timeout=1500)
            finally:
                # A timeout (ours or pytest's) must not leave podman running on the store.
                if build.poll() is None:
                    os.killpg(build.pid, signal.SIGKILL)
                    build.wait()
            print(f"build took {time.monotonic() - started:.0f} s (exit {returncode})", file=log)
        assert returncode == 0, (out / "build.log").read_text()[-4000:]
    finally:
        run(["ip", "netns", "delete", netns], check=False)


@pytest.fixture(scope="module")
def built(packages: Packages, rootfs: RootfsCache) -> Iterator[Built]:
    for tool in ("podman", "ip", "chroot", "tar"):
        require_tool(tool)
    out = CACHE / f"image-{source_hash()}-{rootfs.path.name}"
    with open(CACHE / "image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while the tests use the store
        if not (out / ".ready").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            try:
                _build_offline(out, packages)
            finally:
                shutil.rmtree(out / "build", ignore_errors=True)  # the staged tree, ~700 MB
            (out / ".ready").touch()
            _prune(out)
        out.touch()  # newest for _prune
        yield Built(out / "vmagent.oci.tar", out / "store", _runroot(out), out / "build.log")


def podman(built: Built, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run([*built.podman, *args], timeout=timeout)


def run_in_image(built: Built, *argv: str, user: str | None = None) -> str:
    """``podman run --rm`` of the image, no network, returning stdout.

    Two settings come from the host, not the image: on a cgroup v1 or hybrid host (this machine) crun
    refuses to start, so runc is used there; and the resource limits are set below any host's hard
    limits (podman's defaults raise them, which needs CAP_SYS_RESOURCE this machine's container lacks)."""
    flags = ["--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"]
    if user is not None:
        flags.append(f"--user={user}")
    globals_: list[str] = []
    if run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip() != "cgroup2fs":
        require_tool("runc")
        globals_ += ["--runtime=runc"]
    if not Path("/run/systemd/system").is_dir():
        globals_ += ["--cgroup-manager=cgroupfs"]
    return podman(built, *globals_, "run", *flags, IMAGE, *argv).stdout


def _archive_json(tar: tarfile.TarFile, name: str) -> dict[str, object]:
    member = tar.extractfile(name)
    assert member is not None, name
    doc = json.load(member)
    assert isinstance(doc, dict)
    return doc


def test_the_image_is_built_from_the_project_debs_with_nothing_from_a_registry(
    built: Built, packages: Packages
) -> None:
    # The archive names the image by the project's version and holds one manifest with one layer.
    with tarfile.open(built.archive) as tar:
        index = _archive_json(tar, "index.json")
        (desc,) = index["manifests"]  # type: ignore[misc]
        assert desc["annotations"]["org.opencontainers.image.ref.name"] == IMAGE
        manifest = _archive_json(tar, "blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
        config = _archive_json(tar, "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:"))  # type: ignore[index]
    (layer,) = manifest["layers"]  # type: ignore[misc]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    # Its history is this project's Containerfile: FROM scratch, one ADD of the prepared tree, no
    # other layer (a base image would show its own history entries and layers first).
    history = config["history"]
    assert isinstance(history, list)
    layered = [h for h in history if not h.get("empty_layer")]
    assert len(layered) == 1 and "ADD file:" in layered[0]["created_by"], history
    assert config["rootfs"] == {"type": "layers", "diff_ids": config["rootfs"]["diff_ids"]}  # type: ignore[index]
    assert len(config["rootfs"]["diff_ids"]) == 1  # type: ignore[index]
    image_config = config["config"]
    assert isinstance(image_config, dict)
    assert image_config["User"] == f"{IMAGE_UID}:{IMAGE_GID}" and IMAGE_UID != 0
    assert image_config["Labels"]["org.opencontainers.image.version"] == packages.version
    # The store of the build holds it under the same name.
    assert podman(built, "image", "exists", IMAGE).returncode == 0
    # Inside, the packages are the ones this tree built, installed by dpkg.
    installed = run_in_image(built, "dpkg-query", "-W", "-f=${Package} ${Version}\n", "vmagent", "vmagent-cp")
    assert installed.split("\n")[:2] == [f"vmagent {packages.version}-1", f"vmagent-cp {packages.version}-1"]
    assert run_in_image(built, "cat", "/etc/debian_version").startswith("12.")


def test_the_image_runs_vmagent_vmagent_cp_and_envoy_as_non_root(built: Built, packages: Packages) -> None:
    assert run_in_image(built, "id", "-un").strip() == "vmagent-proxy"
    assert run_in_image(built, "id", "-u").strip() == str(IMAGE_UID)
    assert run_in_image(built, "vmagent", "--version").strip() == f"vmagent {packages.version}"
    assert run_in_image(built, "vmagent-cp", "--version").strip() == f"vmagent-cp {packages.version}"
    assert "envoy  version:" in run_in_image(built, "envoy", "--version")
    # The control plane's Deployment runs it as 65532 (no passwd entry): it starts as that user too.
    assert run_in_image(built, "vmagent-cp", "--version", user="65532:65532").strip() == (
        f"vmagent-cp {packages.version}"
    )
    # The default command, with no arguments: the agent's help.
    assert "usage: vmagent" in run_in_image(built)
    print(built.build_log.read_text().splitlines()[-1], file=sys.stderr)
