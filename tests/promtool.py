"""Reading a Prometheus text exposition in tests, and checking it with Prometheus' own ``promtool``."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, /, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``; None when there is none."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def promtool_check(text: str, allowed_lint: tuple[str, ...] = ()) -> None:
    """``promtool check metrics`` (Debian's ``prometheus`` package) must accept ``text`` without lint.

    ``allowed_lint``: exact lint lines tolerated, for names fixed by a standard promtool's conventions
    disagree with (Istio's ``istio_request_duration_milliseconds``); a parse error never passes.
    """
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/system-deps.sh installs it)")
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and allowed_lint:
        problems = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        if problems and all(ln.strip() in allowed_lint for ln in problems):
            return
    assert r.returncode == 0, f"promtool check metrics: exit {r.returncode}\n{r.stdout}{r.stderr}"
