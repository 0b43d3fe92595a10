"""`vmagent join --token-file -`: the token comes from standard input, never the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cp_harness import ControlPlaneProcess, VmDirs


def test_join_reads_the_token_from_stdin_and_a_missing_file_is_named(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path)
    cp.add_group("demo", "web")
    cp.start()
    try:
        tok = cp.token("demo/web")
        vm = VmDirs.under(tmp_path)
        exe = shutil.which("vmagent", path=os.path.dirname(sys.executable)) or "vmagent"
        base = [exe, "join", cp.join_address, "--ca-hash", tok["ca_hash"], *vm.join_args()]
        missing = tmp_path / "no-such-token"
        r = subprocess.run(
            [*base, "--token-file", str(missing)], capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 1 and f"cannot read --token-file {missing}" in r.stderr, r.stderr
        r = subprocess.run(
            [*base, "--token-file", "-"], input=tok["token"] + "\n", capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert (vm.state_dir / "cert-chain.pem").exists()
        assert tok["token"] not in r.stdout + r.stderr
    finally:
        cp.stop()
