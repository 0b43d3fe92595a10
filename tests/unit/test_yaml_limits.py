"""YAML bombs and oversized input are refused with a clear message within the documented limits.

Each case goes through the user's entry points: `vmagent-cp validate -f`, `vmagent-cp apply -f` (nothing
stored, what was stored before kept) and the agent's config loader.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from vmagent.agent.config import AgentConfig
from vmagent.cli.controlplane import main
from vmagent.common.errors import ConfigError
from vmagent.common.yamllimits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, MAX_SCALAR_BYTES
from vmagent.controlplane.config.store import ConfigStore

DATA = Path(__file__).resolve().parent.parent / "testdata" / "config" / "valid"


def _billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion laughs": (_billion_laughs(), f"more than {MAX_NODES} nodes once aliases are expanded"),
    "deep nesting": (
        "x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n",
        f"deeper than {MAX_DEPTH}",
    ),
    "huge scalar": ("x: " + "A" * (MAX_SCALAR_BYTES + 1) + "\n", f"the limit is {MAX_SCALAR_BYTES}"),
    "huge file": ("# pad\n" * (MAX_FILE_BYTES // 6 + 1), f"the limit is {MAX_FILE_BYTES} bytes"),
    "libyaml's own nesting cap": ("[" * 20000 + "]" * 20000, "maximum nesting depth"),
}


@pytest.mark.parametrize(("text", "expect"), list(BOMBS.values()), ids=list(BOMBS))
def test_validate_refuses_bombs_quickly_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expect: str
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    started = time.monotonic()
    assert main(["validate", "-f", str(bomb)]) == 1
    elapsed = time.monotonic() - started
    _, err = capsys.readouterr()
    assert str(bomb) in err and expect in err, err
    # Refused on the event stream, long before the expanded data could be built (generous for a loaded box).
    assert elapsed < 20, f"refusing took {elapsed:.1f} s"
    line = next(ln for ln in err.splitlines() if expect in ln)
    print(f"refused in {elapsed:.2f} s: {line[:160]}")


def test_apply_of_a_bomb_stores_nothing_and_keeps_what_was_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["apply", "-f", str(DATA), "--state-dir", str(state)]) == 0
    before = sorted((o.kind, o.namespace, o.name) for o in ConfigStore.open(state).list_objects())
    conf = tmp_path / "conf"
    shutil.copytree(DATA, conf)
    (conf / "zz-bomb.yaml").write_text(_billion_laughs())
    capsys.readouterr()
    assert main(["apply", "-f", str(conf), "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "zz-bomb.yaml" in err and "nothing was stored" in err, err
    after = sorted((o.kind, o.namespace, o.name) for o in ConfigStore.open(state).list_objects())
    assert after == before


def test_agent_config_bomb_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_billion_laughs())
    with pytest.raises(ConfigError, match=f"{path}: cannot read: more than {MAX_NODES} nodes"):
        AgentConfig.load(path)


ANCHORED = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: demo}
spec:
  hosts: &hosts [db.example.com]
  subjectAltNames: *hosts
  ports:
  - {number: 5432, name: tcp, protocol: TCP}
  resolution: DNS
"""


def test_anchors_and_aliases_within_limits_still_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text(ANCHORED)
    assert main(["validate", "-f", str(ok)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out
