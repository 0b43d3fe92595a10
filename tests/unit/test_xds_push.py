"""Debounce timing: the rule with a fake clock, and the scheduler thread against deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from tests.harness import wait_for
from vmagent.controlplane.xds.push import Debouncer, PushScheduler, Scope


def test_quiet_period_fires_after_debounce() -> None:
    d = Debouncer(debounce=0.1, max_delay=1.0)
    assert d.deadline() is None and d.take(0.0) == (False, set())
    d.add({"a"}, now=10.0)
    assert d.take(10.05) == (False, set())
    d.add({"b"}, now=10.05)  # extends the quiet period
    assert d.deadline() == pytest.approx(10.15)
    assert d.take(10.14)[0] is False
    assert d.take(10.15) == (True, {"a", "b"})
    assert not d.pending


def test_steady_changes_are_capped_by_max_delay() -> None:
    d = Debouncer(debounce=0.1, max_delay=1.0)
    t = 0.0
    fired_at = None
    while t < 3.0:
        d.add({"p"}, t)
        ready, _ = d.take(t)
        if ready:
            fired_at = t
            break
        t = round(t + 0.05, 3)
    assert fired_at == pytest.approx(1.0)


def test_none_scope_means_everyone_and_absorbs_sets() -> None:
    d = Debouncer()
    d.add({"a"}, 0.0)
    d.add(None, 0.01)
    d.add({"b"}, 0.02)
    assert d.take(5.0) == (True, None)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Debouncer(debounce=2.0, max_delay=1.0)


def test_scheduler_coalesces_a_burst_into_one_recompute() -> None:
    calls: list[tuple[float, Scope]] = []
    done = threading.Event()

    def recompute(scope: Scope) -> None:
        calls.append((time.monotonic(), scope))
        done.set()

    s = PushScheduler(recompute, debounce=0.1, max_delay=1.0)
    try:
        start = time.monotonic()
        for i in range(20):
            s.trigger({f"p{i % 3}"})
        assert done.wait(2.0)
        assert calls[0][1] == {"p0", "p1", "p2"}
        assert 0.1 <= calls[0][0] - start < 0.6
        assert len(calls) == 1
    finally:
        s.close()


def test_scheduler_pushes_within_max_delay_under_continuous_changes() -> None:
    calls: list[float] = []
    s = PushScheduler(lambda scope: calls.append(time.monotonic()), debounce=0.1, max_delay=0.5)
    try:
        start = time.monotonic()
        deadline = start + 3.0
        while not calls and time.monotonic() < deadline:  # a change every 20 ms, bounded by the deadline
            s.trigger(None)
            threading.Event().wait(0.02)
        assert calls, "no push within 3 s of continuous changes"
        assert 0.5 <= calls[0] - start < 0.9
    finally:
        s.close()


def test_scheduler_survives_a_failing_recompute() -> None:
    calls: list[Scope] = []

    def recompute(scope: Scope) -> None:
        calls.append(scope)
        if len(calls) == 1:
            raise RuntimeError("translation failed")

    s = PushScheduler(recompute, debounce=0.01, max_delay=0.1)
    try:
        s.trigger({"a"})
        wait_for(lambda: len(calls) == 1, 2, what="first recompute")
        s.trigger({"b"})
        wait_for(lambda: len(calls) == 2, 2, what="second recompute after a failure")
        assert calls == [{"a"}, {"b"}]
    finally:
        s.close()
