"""The fuzz tier: property-based fuzzing with hypothesis, on the inputs an attacker or a typo controls.

The budget is ``VMAGENT_FUZZ_EXAMPLES`` examples per target (default 200, what `make test` runs; `make fuzz`
runs 5000). Every target counts its executions; the session ends with one line per target and a total.
Findings are kept as ``@example`` regression cases beside the target.
"""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("VMAGENT_FUZZ_EXAMPLES", "200"))
EXECUTIONS: collections.Counter[str] = collections.Counter()

settings.register_profile(
    "vmagent",
    max_examples=EXAMPLES,
    deadline=None,  # a loaded 2-core machine: time is bounded by the budget and pytest-timeout instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile("vmagent")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not EXECUTIONS:
        return
    terminalreporter.write_sep("-", "fuzz executions")
    for target, n in sorted(EXECUTIONS.items()):
        terminalreporter.write_line(f"{target}: {n}")
    terminalreporter.write_line(
        f"fuzz executions total: {sum(EXECUTIONS.values())} (budget {EXAMPLES} per test)"
    )
