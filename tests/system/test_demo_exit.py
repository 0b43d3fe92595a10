"""Every way out of the demo removes everything it started: no process, network namespace or runtime dir
is left after a cut output pipe (`| head`), SIGHUP, SIGTERM, SIGINT or an exception; `--help` only prints
help. Each case stops the demo once its control plane runs (agents may be starting)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_root, require_tool
from vmagent.lab.wait import wait_for

PREFIX = "vmdemo"
DEMO = [sys.executable, "-m", "vmagent.demo"]


def demo_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def demo_processes() -> list[str]:
    """Processes whose command line names a demo work dir or runtime dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "vmagent-demo-" in cmd or f"vmagent-lab/{PREFIX}" in cmd:
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


def leftovers() -> list[str]:
    runtime = (
        [str(p) for p in Path("/run/vmagent-lab").glob(f"{PREFIX}*")]
        if Path("/run/vmagent-lab").exists()
        else []
    )
    return demo_namespaces() + demo_processes() + runtime


@pytest.fixture(autouse=True)
def clean_machine() -> Iterator[None]:
    require_root()
    for tool in ("ip", "iptables", "curl", "useradd"):
        require_tool(tool)
    assert not leftovers(), f"a demo is already running here: {leftovers()}"
    yield


def start(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([*DEMO, *args], stdout=stdout, stderr=subprocess.STDOUT, text=True)


def wait_control_plane_running(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("control plane at"):
            return
    pytest.fail(f"the demo ended before its control plane ran (exit {proc.wait()})")


def assert_all_gone() -> None:
    left = wait_for(lambda: not leftovers() or None, timeout=30, what="demo leftovers gone")
    assert left


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGHUP, 128 + signal.SIGHUP)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_tears_everything_down(signum: int, code: int) -> None:
    proc = start()
    wait_control_plane_running(proc)
    assert demo_namespaces(), "the demo runs but no namespace was seen"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert "tearing the mesh down" in out
    assert_all_gone()


def test_a_cut_output_pipe_tears_everything_down() -> None:
    """`python -m vmagent.demo | head -3`: head exits, the demo's next write fails, it cleans up."""
    demo = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert demo.stdout is not None
    head = subprocess.run(["head", "-3"], stdin=demo.stdout, capture_output=True, text=True, timeout=120)
    demo.stdout.close()
    assert head.stdout.count("\n") == 3
    assert demo.wait(timeout=180) == 141
    assert_all_gone()


def test_an_exception_tears_everything_down(tmp_path: Path) -> None:
    """A failure after the control plane started (the first VM cannot be added) still removes it all."""
    script = (
        "import sys\n"
        "from vmagent import demo\n"
        "from vmagent.lab.mesh import MeshLab\n"
        "def broken(self, *a, **k):\n"
        "    raise RuntimeError('injected: adding a VM failed')\n"
        "MeshLab.add_vm = broken\n"
        "sys.exit(demo.main([]))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "injected: adding a VM failed" in r.stderr
    assert "tearing the mesh down" in r.stdout
    assert_all_gone()


def test_help_prints_help_and_starts_nothing() -> None:
    r = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "--keep" in r.stdout and "usage:" in r.stdout
    assert not leftovers()
    bad = subprocess.run([*DEMO, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr


def test_keep_leaves_the_mesh_up_says_how_to_reach_it_and_tears_down_on_sigterm() -> None:
    proc = start("--keep")
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("  kill "):
            break
    text = "\n".join(lines)
    assert "the mesh stays up:" in text, text
    assert proc.poll() is None, "the demo ended although --keep was given"
    # The printed curl command reaches api from web while the demo waits.
    curl = next(
        line.strip() for line in lines if line.strip().startswith("ip netns exec") and " curl " in line
    )
    r = subprocess.run(curl.split(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["name"] == "api"
    assert f"kill {proc.pid}" in text
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert_all_gone()
