"""The committed generated code must match what the .proto files produce."""

from __future__ import annotations

from pathlib import Path

from vmagent.api import generate


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    produced = sorted((tmp_path / "vmagent" / "api").iterdir())
    assert produced, "protoc produced nothing"
    for new in produced:
        committed = generate.API_DIR / new.name
        assert committed.exists(), f"{new.name} is not committed; run `make proto`"
        assert committed.read_bytes() == new.read_bytes(), (
            f"{new.name} drifted from its .proto; run `make proto`"
        )
