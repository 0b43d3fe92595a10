"""The agent's state dir on a full filesystem: renewal and join fail with an error naming the file and
"No space left on device", the current identity stays in force and intact, the data plane keeps serving,
and everything recovers once space is freed.

The full disk is real: the state dir is a 1 MiB tmpfs (mounted by the test as root, unmounted after),
filled with a file until the kernel says ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cp_harness import ControlPlaneProcess, VmDirs, cli
from tests.harness import require_root, wait_for
from tests.integration.test_agent_crash_consistency import check_state
from tests.integration.test_envoy_dataplane import _make_stack
from tests.integration.test_envoy_support import tls_get
from tests.integration.test_rotation import minimal_agent_config
from vmagent.common.errors import VmagentError


class FullableDir:
    """A directory on its own small tmpfs that can be filled to ENOSPC and freed again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        block = b"\0" * 65536
        try:
            while True:
                os.write(fd, block)  # unbuffered: no data is left to fail again on close
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        # Not one more byte fits:
        with pytest.raises(OSError) as info:
            (self.path / "probe").write_bytes(b"x" * 4096)
        assert info.value.errno == errno.ENOSPC
        with contextlib.suppress(FileNotFoundError):
            (self.path / "probe").unlink()

    def free(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[FullableDir]:
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield FullableDir(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_state_dir_fails_renewal_and_join_clearly_and_recovers(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path, cert_ttl="8s")
    cp.add_group("demo", "web")
    cp.start()
    vm = VmDirs.under(tmp_path)
    run = [os.path.join(os.path.dirname(sys.executable), "vmagent"), "run", "--config-dir", str(vm.config_dir),
           "--state-dir", str(vm.state_dir), "--runtime-dir", str(vm.runtime_dir)]  # fmt: skip
    log_path = tmp_path / "agent.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        with small_tmpfs(vm.state_dir) as disk:
            tok = cp.token("demo/web", uses=3)
            join = ["vmagent", "join", cp.join_address, "--token", tok["token"], "--ca-hash", tok["ca_hash"]]
            r = cli(*join, *vm.join_args())
            assert r.returncode == 0, r.stderr
            minimal_agent_config(vm)
            before = check_state(vm)
            assert before is not None
            with log_path.open("w") as log:
                agent = subprocess.Popen(run, stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: "certificate renewed" in log_path.read_text(), 60, what="a first renewal")

            disk.fill()
            mark = len(log_path.read_text())
            expected = f"cannot write {vm.state_dir}/"
            wait_for(
                lambda: (
                    "certificate renewal failed" in log_path.read_text()[mark:]
                    and "No space left on device" in log_path.read_text()[mark:]
                ),
                60,
                what="a renewal failing on the full disk",
            )
            failed = next(ln for ln in log_path.read_text()[mark:].splitlines() if "renewal failed" in ln)
            print(f"agent log on a full state dir: {failed.strip()}")
            assert expected in failed, failed
            held = check_state(vm)  # the identity in force is intact, key matches, nothing staged left
            assert agent.poll() is None, "the agent died on a full disk"

            # A rejoin on the full disk: refused with the path named, the state untouched.
            r = cli(*join, *vm.join_args(), "--rejoin")
            print(f"vmagent join --rejoin on a full state dir: exit {r.returncode}: {r.stderr.strip()}")
            assert r.returncode != 0
            assert "No space left on device" in r.stderr and str(vm.state_dir) in r.stderr, r.stderr
            assert check_state(vm) == held

            disk.free()
            mark = len(log_path.read_text())
            wait_for(
                lambda: "certificate renewed" in log_path.read_text()[mark:],
                60,
                what="renewal after space freed",
            )
            after = check_state(vm)
            assert after is not None and held is not None and after[1] != held[1]
            r = cli(*join, *vm.join_args(), "--rejoin")
            assert r.returncode == 0, r.stderr
            assert check_state(vm) is not None
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
        cp.stop()


def test_data_plane_keeps_serving_while_the_state_dir_is_full(tmp_path: Path) -> None:
    """Real Envoy fed by the agent's SDS server: a rotated certificate that cannot be stored is refused
    with the error, Envoy keeps the one it has, and a TLS request loop through it does not fail."""
    runtime = Path(f"/tmp/vma-full-{os.getpid()}")
    runtime.mkdir(exist_ok=True)
    with small_tmpfs(tmp_path / "state") as disk:
        gen = _make_stack(tmp_path, runtime)
        stack = next(gen)
        try:
            wait_for(
                lambda: tls_get(stack.listen_port, stack.ca.root_pem).status == 200, 15, what="Envoy serving"
            )
            held = stack.store.current().serial
            disk.fill()
            failures: list[str] = []
            sent = 0
            stop = threading.Event()

            def loop() -> None:
                nonlocal sent
                while not stop.is_set():
                    sent += 1
                    try:
                        if tls_get(stack.listen_port, stack.ca.root_pem).status != 200:
                            failures.append("status")
                    except OSError as exc:
                        failures.append(repr(exc))

            t = threading.Thread(target=loop)
            t.start()
            try:
                errors = []
                for _ in range(6):  # as the rotator would: renewals refused while the disk is full
                    with pytest.raises(VmagentError) as info:
                        stack.store.save(stack.ca.issue())
                    errors.append(str(info.value))
                    time.sleep(0.5)  # spacing the attempts so the loop runs meanwhile (not a wait)
                assert f"cannot write {tmp_path / 'state'}/" in errors[0] and "No space left" in errors[0]
                assert stack.store.current().serial == held
                assert tls_get(stack.listen_port, stack.ca.root_pem).peer_serial == held
                disk.free()
                new = stack.ca.issue()
                stack.store.save(new)
                wait_for(
                    lambda: tls_get(stack.listen_port, stack.ca.root_pem).peer_serial == new.serial,
                    10,
                    what="Envoy presenting the certificate stored after space was freed",
                )
            finally:
                stop.set()
                t.join()
            print(
                f"state dir full during {len(errors)} refused renewals ({errors[0]}): {sent} requests through Envoy, "
                f"{len(failures)} failed; after freeing space the new certificate is served"
            )
            assert failures == [], failures[:5]
        finally:
            with contextlib.suppress(StopIteration):
                next(gen)
            subprocess.run(["rm", "-rf", str(runtime)], check=False)
