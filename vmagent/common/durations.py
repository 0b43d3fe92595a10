"""Human durations for flags: ``90s``, ``30m``, ``1h``, ``1h30m``, ``7d``, ``1.5s``, ``250ms``."""

from __future__ import annotations

import argparse
import datetime
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> datetime.timedelta:
    """Parse ``text``; raise ValueError with a readable message when it is not a duration."""
    s = text.strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 30m, 1h, 1h30m, 7d)")
    return datetime.timedelta(seconds=total)


def duration_arg(text: str) -> datetime.timedelta:
    """argparse ``type=`` for durations (usage error, exit 2, on bad input)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
