"""``vmagent-cp serve --mesh-config``: a bad access-log field stops the start with file and field named."""

from __future__ import annotations

from pathlib import Path

from tests.cp_harness import cli


def test_bad_access_log_encoding_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("accessLogFile: /dev/stdout\naccessLogEncoding: XML\n")
    r = cli("vmagent-cp", "serve", "--state-dir", str(tmp_path / "state"), "--mesh-config", str(mesh))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{mesh}: accessLogEncoding: 'XML' is not TEXT or JSON" in r.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
