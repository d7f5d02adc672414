"""Smoke tests of ``bench/scale_cost.py``: its pure helpers (the cost arithmetic, the
cadence, the timeline, the phase of a call) and one measured 5-minute run on SQLite
whose writes are counted a second way."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from bench import scale_cost as sc
from bench._common import Backends

S = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


def test_a_month_of_a_thousand_schedules_every_15_minutes() -> None:
    assert sc.runs_per_month(1_000, 15) == 2_920_000
    assert sc.CostConfig().runs_per_month == 2_920_000
    assert sc.scheduler_usd(1_000) == pytest.approx(100.0)


def test_monthly_cost_at_list_prices() -> None:
    runs = 2_920_000
    # Twenty heartbeat writes a run: more than Cloud Scheduler's $100 for 1,000 jobs.
    assert sc.monthly_usd(runs, 20, 0, sc.NAM5) == pytest.approx(105.12)
    assert sc.monthly_usd(runs, 20, 0, sc.US_CENTRAL1) == pytest.approx(52.56)
    assert sc.monthly_usd(runs, 5, 5, sc.NAM5) == pytest.approx(35.04)
    assert sc.monthly_usd(runs, 0, 1, sc.NAM5) == pytest.approx(1.752)
    assert sc.monthly_usd(0, 20, 20, sc.NAM5) == 0


def test_cadence_and_detection_latency() -> None:
    assert sc.check_in_interval(300 * S) == MINUTE
    assert sc.check_in_interval(3 * S) == 0.6 * S
    assert sc.check_in_interval(300 * S, 5 * S) == 5 * S
    assert sc.check_in_interval(3 * S, 100 * S) == 1 * S  # at most a third of the lease
    assert sc.detection_latency(300 * S) == 6 * MINUTE
    assert sc.detection_latency(30 * S) == 90 * S


def test_the_timeline_of_a_run() -> None:
    steps = sc.timeline(5 * MINUTE, MINUTE)
    assert steps == [(m * MINUTE, kind) for m in (1, 2, 3, 4) for kind in ("check-in", "tick")]
    assert sc.timeline(10 * S, MINUTE) == []
    assert [k for _, k in sc.timeline(MINUTE, 15 * S)] == ["check-in"] * 3


def test_a_call_is_put_in_the_phase_of_the_nearest_known_caller() -> None:
    def check_in() -> str:
        def beat() -> str:
            return sc.phase_of("update_run", sys._getframe())

        return beat()

    def nowhere() -> str:
        return sc.phase_of("get_run", sys._getframe())

    assert check_in() == "renewal"
    assert nowhere() == "other (get_run)"
    assert sc.phase_of("append_logs", sys._getframe()) == "logs"
    tally = sc.Tally()
    tally.add(0, 0, 1)
    tally.add(3, 1, 1)
    assert (tally.reads, tally.writes, tally.queries, tally.empty_queries) == (3, 1, 2, 1)


def test_a_five_minute_run_on_sqlite_writes_what_the_bench_reports(tmp_path: Path) -> None:
    """One real run (simulated minutes) through a tick and the worker SDK: its writes by
    phase add up to every write both store clients counted, which on SQLite is also the
    run document's version (one per write) plus the claim's schedule write."""
    backends = Backends(tmp_path)
    try:
        cost = asyncio.run(sc.measure_run(backends, "sqlite", 5 * MINUTE))
    finally:
        backends.close()
    assert (cost.state, cost.attempts, cost.log_lines) == ("succeeded", 1, 0)
    assert (cost.renewals, cost.check_in_reads) == (1, 3)
    assert cost.writes == cost.store_writes
    assert cost.writes == int(cost.run_version) + 1
    assert {name: t.writes for name, t in cost.phases.items() if t.writes} == {
        "claim": 2,
        "start": 1,
        "renewal": 1,
        "end": 1,
    }
    assert cost.writes <= sc.CostConfig().max_writes_5min
