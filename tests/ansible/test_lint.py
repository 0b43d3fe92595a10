"""`ansible-lint --profile production` passes on the collection in ansible/ (config: ansible/.ansible-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.ansible.fleet import REPO, collections_path


def test_collection_passes_ansible_lint_production(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path(tmp_path)),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "NO_COLOR": "1",
    }
    r = subprocess.run(
        [str(venv_bin / "ansible-lint"), "--nocolor"],
        cwd=REPO / "ansible",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr
