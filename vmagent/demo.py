"""``make demo``: a control plane on the embedded defaults and a VM that joins it.

Runs everything in a temporary directory on loopback and removes it on exit or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD_GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: web
  namespace: demo
spec:
  metadata:
    labels:
      app: web
  template:
    serviceAccount: web
    ports:
      http: 8080
"""


def _exe(name: str) -> str:
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the control plane exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("demo: the control plane did not start listening in time")


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="vmagent-demo-"))
    cp_proc: subprocess.Popen[bytes] | None = None
    try:
        cfg, state = work / "cp-config", work / "cp-state"
        cfg.mkdir()
        (cfg / "workloadgroup-web.yaml").write_text(WORKLOAD_GROUP)
        tls, mtls, http = _free_port(), _free_port(), _free_port()
        step(f"starting the control plane (state in {state})")
        cp_cmd = [_exe("vmagent-cp"), "serve", "--config-dir", str(cfg), "--state-dir", str(state),
                  "--listen", f"127.0.0.1:{tls}", "--mtls-listen", f"127.0.0.1:{mtls}",
                  "--http-listen", f"127.0.0.1:{http}"]  # fmt: skip
        print("$", shlex.join(cp_cmd))
        cp_proc = subprocess.Popen(cp_cmd, stdout=(work / "cp.log").open("wb"), stderr=subprocess.STDOUT)
        _wait_port(mtls, cp_proc)

        step("creating a join token for WorkloadGroup demo/web")
        tok_cmd = [_exe("vmagent-cp"), "token", "create", "--group", "demo/web", "--state-dir", str(state),
                   "--config-dir", str(cfg), "--join-address", f"127.0.0.1:{tls}", "-o", "json"]  # fmt: skip
        tok = json.loads(subprocess.run(tok_cmd, check=True, capture_output=True, text=True).stdout)
        print("join command:", tok["command"].replace(tok["token"], tok["token"][:12] + "..."))

        step("joining the VM (key + CSR + certificate, verified against the pinned root)")
        vm_etc, vm_state = work / "vm-etc", work / "vm-state"
        join_cmd = [_exe("vmagent"), *shlex.split(tok["command"])[1:], "--config-dir", str(vm_etc),
                    "--state-dir", str(vm_state), "--no-start"]  # fmt: skip
        started = time.monotonic()
        subprocess.run(join_cmd, check=True)
        print(f"(join took {time.monotonic() - started:.2f}s)")

        step("the VM's identity")
        out = subprocess.run(
            [_exe("vmagent"), "status", "--config-dir", str(vm_etc), "--state-dir", str(vm_state)],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        print(out.stdout or out.stderr)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if cp_proc and cp_proc.poll() is None:
            cp_proc.send_signal(signal.SIGTERM)
            cp_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
