"""Golden tests: representative Istio YAML in, the Envoy resources (JSON) out.

``UPDATE_GOLDEN=1`` rewrites the expected files instead of comparing (see test_translate_support).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.unit.test_translate_support import dumps, golden_cases, load_case, render


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    actual = dumps(render(load_case(path)))
    expected_path = path.with_suffix(".json")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual)
    assert expected_path.exists(), f"{expected_path.name} missing; run with UPDATE_GOLDEN=1 to create it"
    expected = expected_path.read_text()
    if actual != expected:
        # Show the first differing resource rather than a 3,000-line diff.
        a, e = json.loads(actual), json.loads(expected)
        for kind in sorted(set(a) | set(e)):
            assert sorted(a.get(kind, {})) == sorted(e.get(kind, {})), f"{kind} names differ"
            for name in sorted(a.get(kind, {})):
                assert a[kind][name] == e[kind][name], f"{kind} {name} differs from {expected_path.name}"
        assert actual == expected


def test_golden_is_deterministic() -> None:
    for path in golden_cases():
        case = load_case(path)
        assert dumps(render(case)) == dumps(render(case))
        # Service order from the registry does not matter.
        case.services.reverse()
        assert dumps(render(case)) == dumps(render(load_case(path)))
