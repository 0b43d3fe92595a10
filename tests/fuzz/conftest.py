"""The fuzz tier: property-based fuzzing with hypothesis, on the inputs an attacker or a typo controls.

The budget is ``VMAGENT_FUZZ_EXAMPLES`` examples per target (default 200, what `make test` runs; `make fuzz`
runs 5000). Every target counts its executions and, where the fuzzed code runs in this process, measures
the line and branch coverage of the fuzzed modules with coverage.py, only while a fuzzed call runs
(``fuzzed``; ``measured`` for code serving in its own threads, see ``test_fuzz_dns.py``). The session ends
with one line per target (executions, then coverage) and a total. Findings are kept as ``@example``
regression cases beside the target.
"""

from __future__ import annotations

import ast
import collections
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import coverage
import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("VMAGENT_FUZZ_EXAMPLES", "200"))
EXECUTIONS: collections.Counter[str] = collections.Counter()
# target -> its measurement and the files reported for it (even those not reached)
COVERAGE: dict[str, tuple[coverage.Coverage, list[str]]] = {}
QUIET = ["module-not-measured", "no-data-collected"]  # modules imported before the measurement started

settings.register_profile(
    "vmagent",
    max_examples=EXAMPLES,
    deadline=None,  # a loaded 2-core machine: time is bounded by the budget and pytest-timeout instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile("vmagent")


def _coverage_for(targets: tuple[str, ...], modules: tuple[str, ...]) -> coverage.Coverage:
    """One coverage.py measurement for ``targets``, limited to the files of ``modules`` (dotted names), with
    branches; kept in memory only (no .coverage file)."""
    if targets[0] in COVERAGE:
        return COVERAGE[targets[0]][0]
    files = _files(modules)
    cov = coverage.Coverage(data_file=None, branch=True, include=files, config_file=False)
    cov.set_option("run:disable_warnings", QUIET)
    for target in targets:
        COVERAGE[target] = (cov, files)
    return cov


def _files(modules: tuple[str, ...]) -> list[str]:
    return [str(Path(str(importlib.import_module(m).__file__)).resolve()) for m in modules]


@contextmanager
def measured_process(data_dir: Path, parts: dict[tuple[str, ...], tuple[str, ...]]) -> Iterator[list[str]]:
    """For code fuzzed in another Python process (the control plane's streams): yields the command prefix
    that runs a Python script under coverage.py, measuring the files of every ``parts`` value; once the
    block is over (the process has exited normally and saved its data) each key's targets report the
    files of its modules. Measured over the process's whole life: the calls that set up and check the
    fuzzing count too."""
    wanted = {key: _files(modules) for key, modules in parts.items()}
    data = data_dir / "coverage.data"
    rc = data_dir / "coveragerc"
    include = "".join(f"\n    {f}" for files in wanted.values() for f in files)
    rc.write_text(
        f"[run]\nbranch = True\ndata_file = {data}\ninclude ={include}\n"
        f"disable_warnings = {', '.join(QUIET)}\n"
    )
    yield [sys.executable, "-m", "coverage", "run", f"--rcfile={rc}"]
    if not data.exists():
        return
    cov = coverage.Coverage(data_file=str(data), config_file=str(rc))
    cov.load()
    for targets, files in wanted.items():
        for target in targets:
            COVERAGE[target] = (cov, files)


@contextmanager
def measured(targets: tuple[str, ...], *modules: str) -> Iterator[None]:
    """Measure the coverage of ``modules`` while the block runs, in this thread and in the threads started
    inside it, as one figure for ``targets``. For code that serves in its own threads (the DNS proxy), the
    block spans the server's life, so its start and stop count too."""
    cov = _coverage_for(targets, modules)
    cov.start()
    try:
        yield
    finally:
        cov.stop()


@contextmanager
def fuzzed(target: str, *modules: str) -> Iterator[None]:
    """One execution of ``target``: counted, and the coverage of ``modules`` measured around the call."""
    EXECUTIONS[target] += 1
    with measured((target,), *modules):
        yield


def _function_body_lines(path: Path) -> set[int]:
    """The lines inside function bodies. Module and class level lines run at import, before any fuzzed
    call, so they are left out of both sides of the figure."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
            lines.update(range(node.body[0].lineno, node.end_lineno + 1))
    return lines


def _coverage_line(cov: coverage.Coverage, files: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(morfs=files, outfile=str(out), ignore_errors=True)
        report = json.loads(out.read_text())
    lines = [0, 0]
    branches = [0, 0]
    for name, f in report["files"].items():
        body = _function_body_lines(Path(name))
        hit = [n for n in f["executed_lines"] if n in body]
        miss = [n for n in f["missing_lines"] if n in body]
        bhit = [b for b in f.get("executed_branches", []) if b[0] in body]
        bmiss = [b for b in f.get("missing_branches", []) if b[0] in body]
        lines[0] += len(hit)
        lines[1] += len(hit) + len(miss)
        branches[0] += len(bhit)
        branches[1] += len(bhit) + len(bmiss)
    names = sorted(Path(f).name for f in report["files"])
    of = ", ".join(names) if len(names) <= 3 else f"{len(names)} files ({names[0]}, ...)"
    return (
        f"coverage lines {lines[0]}/{lines[1]} ({_pct(lines)}), "
        f"branches {branches[0]}/{branches[1]} ({_pct(branches)}) of {of}"
    )


def _pct(pair: list[int]) -> str:
    return f"{100 * pair[0] / pair[1]:.0f}%" if pair[1] else "n/a"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not EXECUTIONS:
        return
    terminalreporter.write_sep("-", "fuzz executions and coverage")
    for target, n in sorted(EXECUTIONS.items()):
        measurement = COVERAGE.get(target)
        if measurement is None:
            where = "coverage not measured"
        else:
            where = _coverage_line(*measurement)
            shared = sorted(t for t, m in COVERAGE.items() if m == measurement and t != target)
            if shared:
                where += f" (one figure with {', '.join(shared)})"
        terminalreporter.write_line(f"{target}: {n} executions; {where}")
    terminalreporter.write_line(
        f"fuzz executions total: {sum(EXECUTIONS.values())} (budget {EXAMPLES} per test)"
    )
