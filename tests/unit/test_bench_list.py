"""`make bench` runs exactly the benchmarks: the Makefile's list equals the bench/*.py that run as programs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_lists_every_benchmark_and_no_helper() -> None:
    m = re.search(r"^BENCHMARKS = (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, "Makefile has no BENCHMARKS list"
    listed = set(m.group(1).split())
    programs = {
        p.stem for p in (ROOT / "bench").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()
    }
    assert programs, "no benchmark found in bench/"
    assert listed == programs
