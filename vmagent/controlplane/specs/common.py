"""Views of messages shared by several kinds (StringMatch, Percent, PortSelector, WorkloadSelector)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class WorkloadSelector:
    """networking/security v1 ``selector``/``workloadSelector`` (``matchLabels``)."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
