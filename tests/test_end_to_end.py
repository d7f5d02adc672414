"""The whole loop with real parts: dispatcher ticks -> functions-framework workers -> store.

Runs on both stores: SQLite (a shared file) and Firestore (the emulator), with the
workers as separate processes writing run state, exactly as in the cloud. Ticks get
their planning instant passed in, so the watchdog's deadlines are reached without
waiting for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _backend import Backend
from _poll import wait_run
from _workers import TEST_SOURCE, serve_worker
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.runs import Run, RunState
from firecron.store import Store


async def add(backend: Backend, schedule_id: str, url: str, now: datetime, **fields: Any) -> None:
    # Anchored at `now` (``every`` counts from the epoch otherwise): the first occurrence
    # is due at `now` and the next one an hour later, whatever the time of day, so the
    # test's later ticks (up to a few minutes ahead) fire nothing new.
    spec = ScheduleSpec.model_validate(
        {
            "id": schedule_id,
            "every": "1h",
            "start_at": now,
            "target": {"url": url, "worker": True},
            **fields,
        }
    )
    state = planning.initial_state(spec, now - timedelta(hours=1))
    await backend.store.put_schedule(spec, state, expect_version=None)


async def request_cancel(store: Store, run_id: str, now: datetime) -> None:
    """Ask a running worker to stop, as the watchdog does past a run's ``timeout``."""
    asked = await store.update_run(
        run_id, [RunState.running], {"cancel_requested": True, "updated_at": now}
    )
    assert asked is not None, f"run {run_id} is no longer running"


def retry_wait_after(attempt: int) -> Callable[[Run], bool]:
    """The run waits for its retry after attempt ``attempt``."""
    return lambda r: r.state is RunState.retry_wait and r.attempt == attempt


async def test_worker_run_succeeds_with_output(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("hello", env=backend.env()) as hello:
        await add(backend, "greet", hello.url, now, params={"name": "e2e"})
        d = backend.dispatcher()
        try:
            summary = await d.tick(now)
        finally:
            await d.aclose()
        [run] = await backend.store.list_runs(schedule_id="greet")
        done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
    assert summary.outcomes["acknowledged"] == 1
    assert done.state is RunState.succeeded
    assert done.output == {"greeting": "hello e2e"}
    # The worker records its start before it acknowledges, so the start stands for the ack.
    assert done.attempts[-1].started_at is not None


async def test_failing_worker_retries_then_fails(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("fail", env=backend.env()) as fail:
        await add(
            backend,
            "broken",
            fail.url,
            now,
            params={"message": "boom"},
            retry={"max_attempts": 3, "backoff": "1s"},
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            [run] = await backend.store.list_runs(schedule_id="broken")
            for attempt in (1, 2):
                waiting = await wait_run(backend.store, run.id, retry_wait_after(attempt))
                assert waiting.retry_at is not None
                await d.tick(waiting.retry_at)  # the watchdog sends the next attempt
            final = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert final.state is RunState.failed
    assert final.error == "RuntimeError: boom"
    assert [a.outcome for a in final.attempts] == [RunState.failed] * 3


async def test_crash_between_claim_and_post_executes_once(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("hello", env=backend.env()) as hello:
        await add(backend, "crashy", hello.url, now)
        d = backend.dispatcher()
        stored = await backend.store.get_schedule("crashy")
        assert stored is not None
        plan = planning.plan(stored, None, now, pending_grace=d.timeouts.pending_grace)
        assert (
            await backend.store.claim(stored, plan.new_state, plan.runs) is not None
        )  # ...and the dispatcher dies
        [run] = plan.runs
        other = backend.dispatcher()
        try:
            assert (await d.tick(now + timedelta(seconds=10))).fired == 0
            later = now + d.timeouts.pending_grace + timedelta(seconds=1)
            # Two overlapping ticks at the deadline: exactly one re-fires.
            summaries = await asyncio.gather(d.tick(later), other.tick(later))
            done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
            await other.aclose()
    assert sum(s.fired for s in summaries) == 1
    assert done.state is RunState.succeeded
    # Re-sent as the same attempt (same key): its first send's outcome is unknown.
    assert done.attempt == 1
    [attempt] = done.attempts
    assert attempt.outcome is RunState.succeeded  # executed once
    assert attempt.sends[0].outcome == "unknown"


async def test_killed_worker_run_is_lost_then_retried_and_succeeds(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    env = backend.env()
    d = backend.dispatcher()
    try:
        with serve_worker("sleep", env=env) as sleeper:
            await add(
                backend,
                "napper",
                sleeper.url,
                now,
                params={"seconds": 30},
                retry={"max_attempts": 2, "backoff": "1s"},
            )
            await d.tick(now)
            [run] = await backend.store.list_runs(schedule_id="napper")
            await wait_run(backend.store, run.id, lambda r: r.state is RunState.running)
            sleeper.kill()  # the instance dies mid-run
        # A replacement instance on a new port: point the schedule's run at it.
        with serve_worker("sleep", env=env) as replacement:
            stale = await backend.store.get_run(run.id)
            assert stale is not None
            assert stale.state is RunState.running
            moved = await backend.store.update_run(
                run.id,
                [RunState.running],
                {
                    "target": stale.target.model_copy(update={"url": replacement.url}),
                    "params": {"seconds": 0.2},
                },
            )
            assert moved is not None
            lost_at = now + d.timeouts.heartbeat_timeout + timedelta(seconds=60)
            summary = await d.tick(lost_at)
            assert summary.events["run.retrying"] == 1
            waiting = await wait_run(
                backend.store, run.id, lambda r: r.state is RunState.retry_wait
            )
            assert waiting.attempts[0].outcome is RunState.lost
            assert waiting.retry_at is not None
            await d.tick(max(waiting.retry_at, lost_at))
            done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
    finally:
        await d.aclose()
    assert done.state is RunState.succeeded
    assert done.attempt == 2
    assert [a.outcome for a in done.attempts] == [RunState.lost, RunState.succeeded]


async def test_sla_breach_is_recorded_once(backend: Backend) -> None:
    now = datetime.now(UTC)
    # The worker runs until cancelled, so the ticks past the SLA see it running however
    # slowly they come.
    with serve_worker("sleepy", env=backend.env(), source=TEST_SOURCE) as sleeper:
        await add(
            backend, "slow", sleeper.url, now, params={"seconds": 600}, expected_duration="1s"
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            [run] = await backend.store.list_runs(schedule_id="slow")
            running = await wait_run(backend.store, run.id, lambda r: r.state is RunState.running)
            assert running.started_at is not None
            breach_time = running.started_at + timedelta(seconds=1, milliseconds=100)
            first = await d.tick(breach_time)
            second = await d.tick(breach_time + timedelta(milliseconds=200))
            await request_cancel(backend.store, run.id, breach_time + timedelta(seconds=1))
            done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert first.events["run.sla_breached"] + second.events["run.sla_breached"] == 1
    assert done.state is RunState.succeeded
    assert done.sla_breached_at is not None
    assert isinstance(done.output, dict)
    assert done.output["cancelled"] is True
