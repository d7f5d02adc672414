"""Continuous schedules (exactly one instance, 24/7) with a functions-framework worker.

Work in progress (issue 15): generations, handoff at the end, pause.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _backend import Backend
from _factories import store_schedule
from _poll import apoll, wait_run
from _workers import serve_worker
from firecron import admin
from firecron.core.runs import RunState, generation_run_id

APP = Path(__file__).resolve().with_name("_orchestration_app.py")


async def test_generations_hand_over_one_at_a_time_and_pause_stops_the_chain(
    backend: Backend,
) -> None:
    now = datetime.now(UTC)
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        await store_schedule(
            backend.store,
            now,
            id="forever",
            continuous={"window": "1s"},
            target={"url": looper.url, "worker": True},
        )
        d = backend.dispatcher()
        try:
            await d.tick()
        finally:
            await d.aclose()
        # Each generation works its window, returns, and its end starts the next.
        third = generation_run_id("forever", 3)
        await apoll(
            lambda: backend.store.get_run(third),
            lambda r: r is not None and r.state is RunState.running,
            what="generation 3 running",
        )
        stopped = await admin.pause(backend.store, "forever", datetime.now(UTC))
        assert stopped.state.paused
        live = await wait_run(backend.store, third, lambda r: r.is_terminal)
        assert live.state is RunState.cancelled
    runs = await backend.store.list_runs(schedule_id="forever", limit=50)
    generations = sorted((r.generation or 0, r) for r in runs)
    assert [g for g, _ in generations] == [1, 2, 3]  # no successor after the pause
    ended = [r for _, r in generations]
    for before, after in itertools.pairwise(ended):
        assert before.ended_at is not None
        assert after.started_at is not None
        assert before.ended_at <= after.started_at  # never two at once
        assert after.cause_run_id == before.id
    first = ended[0]
    assert first.state is RunState.succeeded
    assert isinstance(first.output, dict)
    assert first.output["generation"] == 1
    assert first.started_at is not None
    assert first.ended_at is not None
    assert first.ended_at - first.started_at >= timedelta(seconds=1)  # it worked its window


async def test_a_lost_generation_hands_over_after_a_backoff_that_grows(backend: Backend) -> None:
    """A generation that never starts is lost (no retry of its own); its successor waits
    the schedule's backoff, which grows with each crash in a row."""
    from _sinks import serve

    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="crashy",
            continuous={"window": "1m"},
            target={"url": sink.url + "/w", "worker": True},
            retry={"backoff": "10s", "max_backoff": "30s", "multiplier": 2},
        )
        clock = [now]
        d = backend.dispatcher()
        d.clock = lambda: clock[0]
        try:
            await d.tick(now)
            g1 = await backend.store.get_run(generation_run_id("crashy", 1))
            assert g1 is not None
            assert g1.state is RunState.dispatched
            clock[0] = now + d.timeouts.start_timeout + timedelta(seconds=1)
            await d.tick(clock[0])
            lost = await backend.store.get_run(g1.id)
            assert lost is not None
            assert lost.state is RunState.lost  # not retried: the successor is the retry
            g2 = await backend.store.get_run(generation_run_id("crashy", 2))
            assert g2 is not None
            assert g2.state is RunState.queued
            assert g2.failures == 1
            assert g2.cause_run_id == g1.id
            [handoff] = g2.events
            assert handoff.type.value == "run.handoff"
            assert handoff.data["generation"] == 2
            assert g2.deadline_at == clock[0] + timedelta(seconds=10)
            clock[0] += timedelta(seconds=11)
            await d.tick(clock[0])
            started = await backend.store.get_run(g2.id)
            assert started is not None
            assert started.state is RunState.dispatched
            clock[0] += d.timeouts.start_timeout + timedelta(seconds=1)
            await d.tick(clock[0])
            g3 = await backend.store.get_run(generation_run_id("crashy", 3))
            assert g3 is not None
            assert g3.failures == 2
            assert g3.deadline_at == clock[0] + timedelta(seconds=20)
        finally:
            await d.aclose()
        assert sink.received == 2


def test_a_window_that_does_not_fit_the_timeout_is_refused_with_one_line(tmp_path: Path) -> None:
    from _cli import run_cli

    bad = tmp_path / "s.yaml"
    bad.write_text(
        "schedules:\n"
        "  - id: tailer\n"
        "    continuous: {window: 10m}\n"
        "    timeout: 10m\n"
        "    target: {function: tail}\n"
        "  - id: fine\n"
        "    continuous: {window: 9m}\n"
        "    timeout: 10m\n"
        "    target: {function: tail}\n"
    )
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "schedules[0] (id=tailer): continuous.window: 10m does not fit the timeout (10m): the "
            "window must be at least 30s shorter, or every generation is stopped before it hands over"
        )
    )
    assert "id=fine" not in result.stderr
