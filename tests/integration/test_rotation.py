"""Certificate rotation by the running agent, over mTLS, without the join token."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cp_harness import ControlPlaneProcess, VmDirs, cli
from tests.harness import wait_for
from vmagent.common.x509util import load_chain


def _serial(vm: VmDirs) -> int:
    return load_chain((vm.state_dir / "cert-chain.pem").read_bytes())[0].serial_number


def assert_private(vm: VmDirs, when: str) -> None:
    """The identity stays private to root: state directory 0700, private key 0600 (issue 13 item 8)."""
    modes = {
        "state_dir": stat.S_IMODE(vm.state_dir.stat().st_mode),
        "key.pem": stat.S_IMODE((vm.state_dir / "key.pem").stat().st_mode),
    }
    print(f"{when}: { {k: oct(v) for k, v in modes.items()} }")
    assert modes == {"state_dir": 0o700, "key.pem": 0o600}, when


def minimal_agent_config(vm: VmDirs) -> None:
    """Turn off the parts of the daemon this test does not exercise (Envoy, capture, DNS)."""
    path = vm.config_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["envoy"] = {"enabled": False}
    cfg["capture"] = {"enabled": False}
    cfg["dns"] = {"enabled": False}
    path.write_text(yaml.safe_dump(cfg))


@pytest.fixture
def short_lived_cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path, cert_ttl="20s")
    cp.add_group("demo", "web")
    cp.start()
    yield cp
    cp.stop()


def test_agent_renews_over_mtls_and_survives_control_plane_outage(
    short_lived_cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = short_lived_cp
    tok = cp.token("demo/web")
    token_file = tmp_path / "token"
    token_file.write_text(tok["token"])
    vm = VmDirs.under(tmp_path)
    r = cli(
        "vmagent",
        "join",
        cp.join_address,
        "--token-file",
        str(token_file),
        "--ca-hash",
        tok["ca_hash"],
        *vm.join_args(),
    )
    assert r.returncode == 0, r.stderr
    token_file.unlink()  # renewals must not need it
    assert_private(vm, "after join")
    minimal_agent_config(vm)
    first = _serial(vm)

    log_path = tmp_path / "agent.log"
    exe = os.path.join(os.path.dirname(sys.executable), "vmagent")
    with log_path.open("w") as log:
        agent = subprocess.Popen(
            [exe, "run", "--config-dir", str(vm.config_dir), "--state-dir", str(vm.state_dir),
             "--runtime-dir", str(vm.runtime_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # 20 s lifetime (+2 s backdating): renewal due at about 9-13 s after issue.
        second = wait_for(
            lambda: _serial(vm) if _serial(vm) != first else None, timeout=30, what="first renewal"
        )
        # The file is replaced before the log line is written: wait for it rather than race it.
        wait_for(
            lambda: "certificate renewed" in log_path.read_text(), timeout=10, what="the renewal's log line"
        )
        assert_private(vm, "after rotation")

        cp.stop()
        wait_for(
            lambda: "certificate renewal failed" in log_path.read_text(), timeout=30, what="a failed renewal"
        )
        assert _serial(vm) == second, "a failed renewal replaced the certificate"
        assert agent.poll() is None, "the agent died while the control plane was away"

        cp.start()
        wait_for(
            lambda: _serial(vm) not in (first, second),
            timeout=30,
            what="renewal after the control plane returned",
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
    assert agent.returncode == 0, log_path.read_text()
