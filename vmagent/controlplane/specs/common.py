"""Views of messages shared by several kinds (StringMatch, Percent, PortSelector)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StringMatch:
    """One of ``exact``/``prefix``/``regex`` (None: not set)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True)
class Percent:
    value: float = 0.0


@dataclass(frozen=True)
class PortSelector:
    number: int | None = None
