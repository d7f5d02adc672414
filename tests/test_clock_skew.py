"""Time is the store's (issue 10, item 6): a skewed dispatcher fires nothing, a skewed
worker stamps store time.

Clocks are injected (``Dispatcher(clock=...)``, ``_Runtime.start(clock=...)``): the
local clock is the real one shifted by a fixed skew, the store's is the real one
(SQLite: this machine's; Firestore: the emulator's, on this machine). Times are checked
by brackets read around the call (``before <= stamp <= after``), never by durations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from _factories import make_run
from _sinks import serve
from firecron.core import lifecycle, planning
from firecron.core.models import ScheduleSpec, StoredSchedule
from firecron.core.runs import RunState, RunTrigger
from firecron.dispatch import MAX_CLOCK_SKEW, Dispatcher
from firecron.settings import Settings
from firecron.store.base import Store
from firecron.worker import RunContext, _Execution, _Runtime

SLACK = timedelta(seconds=1)
"""Allowance for the offset measurement (the midpoint of a round trip) and for the
emulator's process reading the same system clock; far below the skews tested."""


def real() -> datetime:
    return datetime.now(UTC)


def skewed(by: timedelta) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + by


def settings() -> Settings:
    return Settings(allow_private_targets=True, ack_timeout=timedelta(seconds=2))


async def due_schedule(store: Store, url: str) -> StoredSchedule:
    """An hourly schedule whose occurrence was due a minute ago (real time)."""
    spec = ScheduleSpec.model_validate({"id": "job", "every": "1h", "target": {"url": url}})
    due = real() - timedelta(minutes=1)
    state = planning.initial_state(spec, due - timedelta(hours=1)).model_copy(
        update={"next_fire_at": due, "next_occurrence": due}
    )
    return await store.put_schedule(spec, state, expect_version=None)


def logged(out: str, event_type: str) -> list[dict[str, object]]:
    return [
        json.loads(line)["cloudevent"]
        for line in out.splitlines()
        if line.startswith("{") and f'"dev.firecron.{event_type}"' in line
    ]


async def test_a_skewed_dispatcher_fires_nothing_and_says_so(
    store: Store, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with serve() as sink:
        stored = await due_schedule(store, sink.url + "/hook")
        stale = make_run(
            "job",
            real() - timedelta(hours=1),
            state=RunState.pending,
            watch_at=real() - timedelta(minutes=5),
            deadline_at=real() - timedelta(minutes=5),
            target={"url": sink.url + "/stale"},
        )
        assert await store.create_run(stale) is not None
        d = Dispatcher(store, settings(), clock=skewed(timedelta(seconds=150)))
        try:
            summary = await d.tick()
        finally:
            await d.aclose()
        assert sink.received == 0
    assert summary.skewed
    assert summary.clock_skew_s is not None
    assert summary.clock_skew_s > 140
    assert (summary.due, summary.claimed, summary.fired, summary.watched) == (0, 0, 0, 0)
    assert summary.events["dispatcher.clock_skew"] == 1
    [line] = summary.errors
    assert line.startswith("clock skew: the dispatcher's clock is +15")
    # Nothing was written: the schedule and the stale run are as they were.
    assert await store.get_schedule("job") == stored
    again = await store.get_run(stale.id)
    assert again is not None
    assert again.state is RunState.pending
    assert again.attempt == stale.attempt
    # One error line in the log, and the event on the log sink.
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "clock skew" in errors[0].getMessage()
    [event] = logged(capsys.readouterr().out, "dispatcher.clock_skew")
    assert event["source"] == "//firecron/dispatcher"
    assert event["data"]["skew_s"] > 140  # type: ignore[index]


async def test_a_dispatcher_behind_the_store_is_refused_too(store: Store) -> None:
    d = Dispatcher(store, settings(), clock=skewed(-timedelta(seconds=100)))
    try:
        summary = await d.tick()
    finally:
        await d.aclose()
    assert summary.skewed
    assert summary.clock_skew_s is not None
    assert summary.clock_skew_s < -90


async def test_within_the_bound_the_tick_runs_at_the_store_time(store: Store) -> None:
    skew = MAX_CLOCK_SKEW - timedelta(seconds=1)
    with serve() as sink:
        await due_schedule(store, sink.url + "/hook")
        d = Dispatcher(store, settings(), clock=skewed(skew))
        try:
            before = real()
            summary = await d.tick()
            after = real()
            sink.wait_for(1)
        finally:
            await d.aclose()
    assert not summary.skewed
    assert summary.errors == []
    assert summary.fired == 1
    assert summary.clock_skew_s is not None
    assert summary.clock_skew_s > 0
    [run] = await store.list_runs(limit=1)
    # Planned at the store's time, not at the dispatcher's (which is `skew` ahead)...
    assert before - SLACK <= run.created_at <= after + SLACK
    # ...and its send stamped with the corrected clock.
    assert run.updated_at <= after + SLACK


# -- workers --------------------------------------------------------------------------


@pytest.fixture
def worker_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Callable[[], datetime]], _Runtime]]:
    """Start in-process worker runtimes on a SQLite store; stopped at teardown."""
    monkeypatch.setenv("FIRECRON_STORE", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.delenv("FIRECRON_NAMESPACE", raising=False)
    monkeypatch.delenv("FIRECRON_SIGNING_SECRET", raising=False)
    started: list[_Runtime] = []

    def start(clock: Callable[[], datetime]) -> _Runtime:
        runtime = _Runtime.start(clock=clock)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.call(runtime.store.close())
        runtime.loop.call_soon_threadsafe(runtime.loop.stop)


def test_a_skewed_worker_stamps_store_time(
    worker_runtime: Callable[[Callable[[], datetime]], _Runtime],
) -> None:
    runtime = worker_runtime(skewed(timedelta(seconds=150)))
    before = real()
    now = runtime.now()
    after = real()
    assert before - SLACK <= now <= after + SLACK

    # A started attempt's heartbeat is stamped at the store's time, so a watchdog at the
    # store's time does not see a heartbeat from 150 s in the future (nor one from the
    # past, for a clock behind).
    created = runtime.call(
        runtime.store.create_run(make_run("job", real(), state=RunState.dispatched))
    )
    assert created is not None
    change = lifecycle.start(created, runtime.now(), runtime.timeouts)
    started = runtime.call(
        runtime.store.update_run(created.id, change.expect, change.changes, current=created)
    )
    assert started is not None
    ctx = RunContext(
        run_id=started.id,
        schedule_id=started.schedule_id,
        scheduled_for=started.scheduled_for,
        trigger=RunTrigger.schedule,
    )
    execution = _Execution(runtime, lambda c: None, ctx, started, timedelta(seconds=5))
    before = real()
    execution.beat()
    after = real()
    beaten = runtime.call(runtime.store.get_run(started.id))
    assert beaten is not None
    assert beaten.heartbeat_at is not None
    assert before - SLACK <= beaten.heartbeat_at <= after + SLACK
    assert started.started_at is not None
    assert started.started_at <= after + SLACK
