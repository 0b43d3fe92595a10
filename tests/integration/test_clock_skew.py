"""A VM whose clock is 5 minutes behind or ahead of the control plane still joins and rotates.

The agent runs as a real process under libfaketime (Debian's ``faketime``), which shifts every clock
call of the process (Python's ``time``/``datetime`` and the TLS library's certificate checks) while the
control plane runs on the machine's real clock. Nothing is faked in the code under test.

Joining exercises the agent's chain check (``verify_chain`` on its own clock) and the TLS handshake on
15012; renewal is the agent's real ``Rotator.renew_once`` over mutual TLS on 15013 (the control plane
checks the agent's certificate on its clock, the agent checks the control plane's and the new chain on
its own). When a renewal is *due* is computed from the certificate's own fields, which skew does not
change, so the test triggers the renewal instead of waiting half a day for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cp_harness import ControlPlaneProcess, VmDirs
from vmagent.common.x509util import load_chain

SKEWS = {"5 min behind": "-5m", "5 min ahead": "+5m"}

_RENEW = """
import sys
from pathlib import Path
from vmagent.agent.config import AgentConfig
from vmagent.agent.cpchannel import ControlPlaneChannel
from vmagent.agent.identity import IdentityStore
from vmagent.agent.paths import AgentPaths
from vmagent.agent.rotation import Rotator

paths = AgentPaths(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
cfg = AgentConfig.load(paths.config_file)
store = IdentityStore(paths)
channel = ControlPlaneChannel(cfg.cp_mtls_address, cfg.server_name, store)
new = Rotator(store, channel.get).renew_once()
print(f"renewed serial {new.serial:x}")
"""


def _faketime() -> str:
    exe = shutil.which("faketime")
    if exe is None:
        pytest.fail("faketime is missing: run scripts/system-deps.sh (Debian package faketime)")
    return exe


def _skewed(offset: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FAKETIME", None)
    return subprocess.run(
        [_faketime(), "-f", offset, *argv], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _serial(vm: VmDirs) -> int:
    return load_chain((vm.state_dir / "cert-chain.pem").read_bytes())[0].serial_number


@pytest.mark.parametrize("offset", list(SKEWS.values()), ids=list(SKEWS))
def test_skewed_vm_joins_and_rotates(control_plane: ControlPlaneProcess, tmp_path: Path, offset: str) -> None:
    # The shift really applies to the agent's process.
    probe = _skewed(offset, sys.executable, "-c", "import time; print(time.time())")
    assert probe.returncode == 0, probe.stderr
    import time

    shift = float(probe.stdout) - time.time()
    assert abs(abs(shift) - 300) < 60, f"faketime did not shift the clock by 5 min ({shift:.0f} s)"

    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    exe = os.path.join(os.path.dirname(sys.executable), "vmagent")
    r = _skewed(
        offset, exe, "join", control_plane.join_address, "--token", tok["token"],
        "--ca-hash", tok["ca_hash"], *vm.join_args(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "joined as spiffe://cluster.local/ns/demo/sa/web" in r.stdout
    first = _serial(vm)

    r = _skewed(
        offset, sys.executable, "-c", _RENEW, str(vm.config_dir), str(vm.state_dir), str(vm.runtime_dir)
    )
    assert r.returncode == 0, r.stderr
    assert _serial(vm) != first, "the renewal did not replace the certificate"
    assert f"renewed serial {_serial(vm):x}" in r.stdout
    print(f"clock skew {offset} ({shift:+.0f} s): join ok, rotation ok")
