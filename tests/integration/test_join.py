"""`vmagent join` against a real control plane over TLS: success, refusals, restarts."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

from tests.cp_harness import ControlPlaneProcess, VmDirs, cli, join
from tests.harness import free_port, wait_for
from vmagent.common.x509util import load_chain, spiffe_ids, verify_chain


def test_join_yields_chain_to_root_with_group_identity(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    r = join(control_plane, vm, tok["token"], tok["ca_hash"])
    assert r.returncode == 0, r.stderr
    assert "joined as spiffe://cluster.local/ns/demo/sa/web" in r.stdout
    assert tok["token"] not in r.stdout + r.stderr

    chain = load_chain((vm.state_dir / "cert-chain.pem").read_bytes())
    root = load_chain((vm.state_dir / "root-cert.pem").read_bytes())[0]
    verify_chain(chain, root)
    assert spiffe_ids(chain[0]) == ["spiffe://cluster.local/ns/demo/sa/web"]
    key_mode = stat.S_IMODE((vm.state_dir / "key.pem").stat().st_mode)
    assert key_mode == 0o600
    cp_root = load_chain((control_plane.state_dir / "mesh-root.pem").read_bytes())[0]
    assert root == cp_root
    group = json.loads((vm.config_dir / "workloadgroup.json").read_text())
    assert group["metadata"]["name"] == "web"


def test_join_again_changes_nothing(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web", uses=2)
    vm = VmDirs.under(tmp_path)
    assert join(control_plane, vm, tok["token"], tok["ca_hash"]).returncode == 0
    before = (vm.state_dir / "cert-chain.pem").read_bytes()
    r = join(control_plane, vm, tok["token"], tok["ca_hash"])
    assert r.returncode == 0
    assert "already joined" in r.stdout
    assert (vm.state_dir / "cert-chain.pem").read_bytes() == before
    # The second use was not consumed.
    listing = json.loads(
        control_plane.cp("token", "list", "--state-dir", str(control_plane.state_dir), "-o", "json").stdout
    )
    assert [t["used"] for t in listing] == [1]


def _assert_refused(r: object, vm: VmDirs, expect: str) -> None:
    import subprocess

    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert expect in lines[0], lines[0]
    assert not vm.state_dir.exists(), "a refused join wrote to the state dir"
    assert not vm.config_dir.exists(), "a refused join wrote to the config dir"


def test_token_used_more_than_uses_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web", uses=1)
    assert join(control_plane, VmDirs.under(tmp_path, "a"), tok["token"], tok["ca_hash"]).returncode == 0
    vm = VmDirs.under(tmp_path, "b")
    _assert_refused(join(control_plane, vm, tok["token"], tok["ca_hash"]), vm, "has been used 1 of 1 times")


def test_expired_token_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web", ttl="1s")
    exp = json.loads(_jwt_payload(tok["token"]))["exp"]
    deadline = time.monotonic() + 5
    while time.time() <= exp + 0.1 and time.monotonic() < deadline:
        time.sleep(0.05)
    vm = VmDirs.under(tmp_path)
    _assert_refused(join(control_plane, vm, tok["token"], tok["ca_hash"]), vm, "join token has expired")


def test_token_signed_by_another_key_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    other = ControlPlaneProcess(tmp_path / "other")
    other.add_group("demo", "web")
    foreign = other.token("demo/web")  # made with the other state dir's key, never started
    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    _assert_refused(
        join(control_plane, vm, foreign["token"], tok["ca_hash"]),
        vm,
        "signature is not valid for this control plane",
    )


def test_tampered_token_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web")
    head, _payload, sig = tok["token"].split(".")
    claims = json.loads(_jwt_payload(tok["token"]))
    claims["sub"] = "demo/admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    vm = VmDirs.under(tmp_path)
    _assert_refused(
        join(control_plane, vm, f"{head}.{forged}.{sig}", tok["ca_hash"]), vm, "signature is not valid"
    )


def test_token_for_missing_group_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web")
    (control_plane.config_dir / "wg-demo-web.yaml").unlink()
    # The server reloads its config dir on its own schedule: join only once it has dropped the group.
    wait_for(lambda: "demo/web" not in control_plane.served_groups(), timeout=30, what="group to be unloaded")
    vm = VmDirs.under(tmp_path)
    _assert_refused(
        join(control_plane, vm, tok["token"], tok["ca_hash"]), vm, "WorkloadGroup demo/web does not exist"
    )


def test_token_create_for_missing_group_fails(control_plane: ControlPlaneProcess) -> None:
    r = control_plane.cp(
        "token", "create", "--group", "demo/nope", "--state-dir", str(control_plane.state_dir),
        "--config-dir", str(control_plane.config_dir), "--server", control_plane.http_url,
    )  # fmt: skip
    assert r.returncode == 1
    assert f"WorkloadGroup demo/nope not found in the control plane at {control_plane.http_url}" in r.stderr


def test_token_create_asks_the_running_server(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    """Only the group and the server URL: the state dir, the group check and the join address come from
    the running `serve`, and the printed command joins."""
    r = control_plane.cp(
        "token", "create", "--group", "demo/web", "--server", control_plane.http_url, "-o", "json"
    )
    assert r.returncode == 0, r.stderr
    tok = json.loads(r.stdout)
    assert tok["address"] == control_plane.join_address  # what serve --listen names, not 0.0.0.0
    vm = VmDirs.under(tmp_path)
    assert join(control_plane, vm, tok["token"], tok["ca_hash"]).returncode == 0
    # Another state dir than the server's would make tokens it refuses: said plainly.
    other = control_plane.cp(
        "token", "create", "--group", "demo/web", "--server", control_plane.http_url,
        "--state-dir", str(tmp_path / "other"),
    )  # fmt: skip
    assert other.returncode == 1
    assert f"uses state dir {control_plane.state_dir.resolve()}" in other.stderr


def test_token_create_without_a_server_falls_back_and_says_so(control_plane: ControlPlaneProcess) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    r = control_plane.cp(
        "token", "create", "--group", "demo/web", "--server", nobody,
        "--state-dir", str(control_plane.state_dir), "--config-dir", str(control_plane.config_dir), "-o", "json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"no control plane answers at {nobody}" in r.stderr
    missing = control_plane.cp(
        "token",
        "create",
        "--group",
        "demo/web",
        "--server",
        nobody,
        "--state-dir",
        str(control_plane.state_dir),
    )
    assert missing.returncode == 1
    assert "start `vmagent-cp serve`" in missing.stderr and "no --config-dir given" in missing.stderr


def test_wrong_ca_hash_is_refused(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    wrong = "sha256:" + "0" * 64
    _assert_refused(
        join(control_plane, vm, tok["token"], wrong), vm, "not the --ca-hash given; refusing to trust it"
    )
    # The token was not consumed by the refused attempt.
    assert join(control_plane, vm, tok["token"], tok["ca_hash"]).returncode == 0


def test_restart_keeps_ca_and_use_counts(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web", uses=2)
    assert join(control_plane, VmDirs.under(tmp_path, "a"), tok["token"], tok["ca_hash"]).returncode == 0
    control_plane.restart()
    again = control_plane.token("demo/web")
    assert again["ca_hash"] == tok["ca_hash"]
    assert join(control_plane, VmDirs.under(tmp_path, "b"), tok["token"], tok["ca_hash"]).returncode == 0
    vm = VmDirs.under(tmp_path, "c")
    _assert_refused(join(control_plane, vm, tok["token"], tok["ca_hash"]), vm, "has been used 2 of 2 times")


def test_join_with_ca_file(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web")
    vm = VmDirs.under(tmp_path)
    r = cli(
        "vmagent", "join", control_plane.join_address, "--token", tok["token"],
        "--ca-file", str(control_plane.state_dir / "mesh-root.pem"), *vm.join_args(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_token_never_logged_by_control_plane(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    tok = control_plane.token("demo/web")
    assert join(control_plane, VmDirs.under(tmp_path), tok["token"], tok["ca_hash"]).returncode == 0
    control_plane.stop()
    log = control_plane.log_path.read_text()
    assert "issued spiffe://cluster.local/ns/demo/sa/web" in log
    assert tok["token"] not in log
    assert tok["token"].split(".")[2] not in log


def _jwt_payload(token: str) -> str:
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
