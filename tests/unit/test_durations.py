"""Durations on the command line: ``90s``, ``1h30m``, ``250ms``, ``7d``."""

from __future__ import annotations

import argparse
import datetime

import pytest

from vmagent.common.durations import duration_arg, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("1h30m", 5400),
        ("7d", 7 * 86400),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4.005),
        ("0s", 0),
        (" 20s ", 20),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "  ", "10", "h", "1x", "1 h", "1h foo", "-1s", "1.s", "s1", "1h-30m"])
def test_non_durations_are_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(examples: 90s, 30m, 1h, 1h30m, 7d\)"):
        parse_duration(text)


def test_a_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="vmagent-cp")
    parser.add_argument("--ttl", type=duration_arg, default="1h")
    assert parser.parse_args([]).ttl == datetime.timedelta(hours=1)
    assert parser.parse_args(["--ttl", "45m"]).ttl == datetime.timedelta(minutes=45)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--ttl", "forever"])
    assert info.value.code == 2
    assert "argument --ttl: 'forever' is not a duration" in capsys.readouterr().err
