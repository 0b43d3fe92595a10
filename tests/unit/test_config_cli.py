"""`vmagent-cp validate -f` and `vmagent-cp apply -f`: exit codes, output, and all-or-nothing storing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmagent.cli.controlplane import main
from vmagent.controlplane.config.store import ConfigStore

DATA = Path(__file__).resolve().parent.parent / "testdata" / "config" / "valid"
BAD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: demo}
spec:
  hosts: [db.example.com]
  ports:
  - {number: 5432, name: tcp, protocol: TCP}
  - {number: 5433, name: tcp, protocol: TCP}
  resolution: SOMETIMES
"""


def test_validate_valid_dir_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(DATA)]) == 0
    out, err = capsys.readouterr()
    assert out == "11 objects valid\n"
    assert err == ""


def test_validate_lists_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", "-f", str(DATA), "-f", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}: ServiceEntry demo/db: spec.resolution: invalid value 'SOMETIMES', expected one of: NONE, STATIC, "
        "DNS, DNS_ROUND_ROBIN",
        f"{bad}: ServiceEntry demo/db: spec.ports[1].name: duplicate port name 'tcp'",
        "vmagent-cp: error: 2 errors found; nothing is valid until fixed",
    ]


def test_validate_prints_warnings_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "vs.yaml"
    f.write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        "spec: {host: r, trafficPolicy: {outlierDetection: {consecutiveErrors: 1}}}\n"
    )
    assert main(["validate", "-f", str(f)]) == 0
    out, err = capsys.readouterr()
    assert out == "1 object valid\n"
    assert err == (
        f"warning: {f}: DestinationRule default/r: spec.trafficPolicy.outlierDetection.consecutiveErrors: "
        "deprecated field: use 'consecutiveGatewayErrors' or 'consecutive5xxErrors' instead\n"
    )


def test_validate_missing_path_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert f"{tmp_path / 'missing.yaml'}: no such file or directory" in capsys.readouterr().err


def test_apply_stores_nothing_when_one_file_is_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(DATA, conf)
    (conf / "zz-bad.yaml").write_text(BAD)
    state = tmp_path / "state"
    assert main(["apply", "-f", str(conf), "--state-dir", str(state)]) == 1
    assert "nothing was stored" in capsys.readouterr().err
    assert not (state / "state.db").exists() or ConfigStore.open(state).list_objects() == []

    (conf / "zz-bad.yaml").unlink()
    assert main(["apply", "-f", str(conf), "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "11 objects applied (11 created, 0 updated, 0 unchanged)\n"
    assert len(ConfigStore.open(state).list_objects()) == 11
    assert main(["apply", "-f", str(conf), "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "11 objects applied (0 created, 0 updated, 11 unchanged)\n"

    assert main(["apply", "--delete", "-f", str(conf / "security.yaml"), "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "5 objects deleted\n"
    assert sorted({o.kind for o in ConfigStore.open(state).list_objects()}) == [
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "VirtualService",
        "WorkloadEntry",
        "WorkloadGroup",
    ]


def test_cli_process_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    cmd = [sys.executable, "-m", "vmagent.cli.controlplane"]
    ok = subprocess.run([*cmd, "validate", "-f", str(DATA)], capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout) == (0, "11 objects valid\n")
    failed = subprocess.run([*cmd, "validate", "-f", str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "spec.ports[1].name: duplicate port name 'tcp'" in failed.stderr
    usage = subprocess.run([*cmd, "validate"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "-f/--filename" in usage.stderr


COMPAT = """\
apiVersion: networking.istio.io/v1beta1
kind: ProxyConfig
metadata: {name: default, namespace: demo}
spec:
  concurrency: 2
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: demo}
spec:
  host: r
  trafficPolicy:
    connectionPool: {http: {http2KeepAlive: {time: 10s}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: demo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
"""


def test_validate_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", "-o", "json", "-f", str(bad)]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert err == ""
    assert doc["valid"] is False and doc["objects"] == 0 and doc["warnings"] == []
    assert doc["errors"][1] == {
        "file": str(bad),
        "object": "ServiceEntry demo/db",
        "path": "spec.ports[1].name",
        "message": "duplicate port name 'tcp'",
    }
    assert "istioCompat" not in doc
    assert main(["validate", "-o", "json", "-f", str(DATA)]) == 0
    assert json.loads(capsys.readouterr().out)["objects"] == 11


def test_validate_istio_compat_reports_kinds_fields_and_semantics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    (tmp_path / "mesh").mkdir()
    f = tmp_path / "mesh" / "a.yaml"
    f.write_text(COMPAT.split("---\n", 1)[1])
    g = tmp_path / "mesh" / "b.yaml"
    g.write_text(COMPAT.split("---\n", 1)[0])
    assert main(["validate", "--istio-compat", "-o", "json", "-f", str(tmp_path / "mesh")]) == 1
    doc = json.loads(capsys.readouterr().out)
    got = [(c["object"], c["path"], c["compat"]) for c in doc["istioCompat"]]
    assert got == [
        ("AuthorizationPolicy demo/ext", "spec.action", "different"),
        ("DestinationRule demo/r", "spec.trafficPolicy.connectionPool.http.http2KeepAlive", "ignored"),
        ("ProxyConfig demo/default", "kind", "kind"),
    ]
    f.unlink()
    assert main(["validate", "--istio-compat", "-f", str(tmp_path / "mesh")]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == "Istio compatibility: 1 difference"
    assert out.splitlines()[1].startswith(
        f"  kind: {g}: ProxyConfig demo/default: kind: unsupported kind 'ProxyConfig'"
    )
