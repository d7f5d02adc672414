"""Smoke tests of ``bench/scale_seconds.py``'s pure helpers.

The benchmark itself runs for minutes of wall time (one tick a minute), so it is not
run here; these check what its figures rest on: the quantiles, the tick instants, and
that its schedule, planned as a tick with a Cloud Tasks queue plans it, hands over each
minute's 60 occurrences at their own second, every occurrence exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bench.scale_seconds import (
    SecondsConfig,
    first_instant,
    lateness,
    quantile,
    seconds_spec,
    send_times,
    spread_ms,
    tick_instants,
)

from _tasks_emulator import Delivery
from firecron.core import planning
from firecron.core.models import StoredSchedule
from firecron.core.runs import Run
from firecron.dispatch import TASKS_LOOKAHEAD

T = datetime(2026, 11, 30, 14, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def test_quantile_is_the_nearest_rank() -> None:
    values = [float(x) for x in range(1, 121)]  # 1..120
    assert quantile(values, 0.5) == 60.0
    assert quantile(values, 0.99) == 119.0  # ceil(118.8) = 119th smallest
    assert quantile(values, 1.0) == 120.0
    assert quantile([3.0, 1.0, 2.0], 0.0) == 1.0
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)


def test_spread_is_in_milliseconds_and_empty_is_none() -> None:
    assert spread_ms([0.25, 0.125, -0.001]) == {
        "count": 3,
        "p50_ms": 125.0,
        "p99_ms": 250.0,
        "min_ms": -1.0,
        "max_ms": 250.0,
    }
    assert spread_ms([])["p99_ms"] is None


def test_the_first_instant_is_a_whole_second_at_least_the_lead_ahead() -> None:
    assert first_instant(T + timedelta(milliseconds=300), 2.0) == T + 3 * S
    assert first_instant(T, 2.0) == T + 2 * S


def test_one_tick_a_minute_while_occurrences_remain() -> None:
    assert tick_instants(T, 60) == [T]
    assert tick_instants(T, 61) == [T, T + timedelta(minutes=1)]
    assert tick_instants(T, 120) == [T, T + timedelta(minutes=1)]
    assert SecondsConfig.quick().occurrences == 60


def _planned(stored: StoredSchedule, now: datetime) -> tuple[list[Run], StoredSchedule]:
    plan = planning.plan(stored, None, now, lookahead=TASKS_LOOKAHEAD)
    return plan.runs, StoredSchedule(spec=stored.spec, state=plan.new_state, version="2")


@pytest.mark.parametrize("tick_delay", [timedelta(milliseconds=1), timedelta(milliseconds=400)])
def test_each_tick_hands_over_the_coming_minute_ahead_and_no_occurrence_twice(
    tick_delay: timedelta,
) -> None:
    spec = seconds_spec("s", "http://127.0.0.1:1/", T, 120)
    stored = StoredSchedule(spec=spec, state=planning.initial_state(spec, T - S), version="1")
    planned: list[list[Run]] = []
    for at in [*tick_instants(T, 120), T + timedelta(minutes=2)]:
        runs, stored = _planned(stored, at + tick_delay)
        planned.append(runs)
    # Each tick hands over what is due before its lookahead ends (75 s: the first tick
    # plans 75 s, the next the rest, each ahead of the tick after it), none of them due
    # yet; none after the end.
    ahead = int(TASKS_LOOKAHEAD.total_seconds())
    assert ahead > 60
    assert [len(runs) for runs in planned] == [ahead, 120 - ahead, 0]
    ticks = tick_instants(T, 120)
    for at, runs in zip(ticks, planned, strict=False):
        assert all(r.fire_at > at + tick_delay for r in runs)
    every = [r for runs in planned for r in runs]
    assert [r.scheduled_for for r in every] == [T + i * S for i in range(1, 121)]
    assert all(r.fire_at == r.scheduled_for for r in every)
    assert {r.state.value for r in every} == {"pending"}


def test_lateness_and_send_times_pair_runs_with_their_records() -> None:
    spec = seconds_spec("s", "http://127.0.0.1:1/", T, 2)
    stored = StoredSchedule(spec=spec, state=planning.initial_state(spec, T - S), version="1")
    runs, _ = _planned(stored, T)
    first, second = runs
    started = [
        first.model_copy(update={"started_at": T + S + timedelta(milliseconds=150)}),
        second,  # never started: not counted
    ]
    assert lateness(started) == [0.15]
    keys = {"task-a": first.id, "task-b": second.id}
    deliveries = [
        Delivery(task="task-a", refused=True),
        Delivery(task="task-a", status=200, sent_at=10.0),
        Delivery(task="task-a", status=200, sent_at=11.0),
        Delivery(task="other", status=200, sent_at=12.0),
    ]
    assert send_times(deliveries, keys) == {first.id: 10.0}
