"""Continuous schedules (exactly one instance, 24/7): generations and their handoff,
pause, resume, delete and prune, the crash backoff, the window's validation, the
``tail`` example and the SDK's view (``ctx.generation``, ``fence_headers``, fencing).

The guarantees under process faults (SIGKILL, SIGSTOP, racing settlers) are proven in
``test_continuous_processes.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _backend import Backend
from _factories import store_schedule
from _generations import pause_and_stop
from _poll import apoll, wait_run
from _workers import MAIN_SOURCE, serve_worker
from firecron import admin
from firecron.core.models import ScheduleSpec
from firecron.core.runs import RunState, generation_run_id

APP = Path(__file__).resolve().with_name("_orchestration_app.py")


async def start_forever(backend: Backend, url: str, window: str) -> ScheduleSpec:
    """Store the continuous schedule ``forever`` on the worker at ``url`` and tick once:
    generation 1 is sent."""
    spec = await store_schedule(
        backend.store,
        datetime.now(UTC),
        id="forever",
        continuous={"window": window},
        target={"url": url, "worker": True},
    )
    d = backend.dispatcher()
    try:
        await d.tick()
    finally:
        await d.aclose()
    return spec


async def test_generations_hand_over_one_at_a_time_and_pause_stops_the_chain(
    backend: Backend,
) -> None:
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        await start_forever(backend, looper.url, "1s")
        # Each generation works its window, returns, and its end starts the next.
        third = generation_run_id("forever", 3)
        await apoll(
            lambda: backend.store.get_run(third),
            lambda r: r is not None and r.state is RunState.running,
            what="generation 3 running",
        )
        live = await pause_and_stop(backend.store, "forever")
        assert live.state is RunState.cancelled
        assert live.generation is not None
        assert live.generation >= 3
    runs = await backend.store.list_runs(schedule_id="forever", limit=50)
    generations = sorted((r.generation or 0, r) for r in runs)
    # No successor after the pause: the cancelled one is the last.
    assert [g for g, _ in generations] == list(range(1, live.generation + 1))
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


async def test_a_lost_generation_hands_over_at_once(backend: Backend) -> None:
    """A generation that never starts is lost after the start timeout (no retry of its
    own: its successor is the retry), and its successor is sent at the same tick: the
    silence that lost it throttles a loop of deaths by itself."""
    from _sinks import serve

    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="silent",
            continuous={"window": "1m"},
            target={"url": sink.url + "/w", "worker": True},
            retry={"backoff": "10s", "max_backoff": "30s", "multiplier": 2},
        )
        clock = [now]
        d = backend.dispatcher()
        d.clock = lambda: clock[0]
        try:
            await d.tick(now)
            g1 = await backend.store.get_run(generation_run_id("silent", 1))
            assert g1 is not None
            assert g1.state is RunState.dispatched
            clock[0] = now + d.timeouts.start_timeout + timedelta(seconds=1)
            await d.tick(clock[0])
        finally:
            await d.aclose()
        lost = await backend.store.get_run(g1.id)
        assert lost is not None
        assert lost.state is RunState.lost
        g2 = await backend.store.get_run(generation_run_id("silent", 2))
        assert g2 is not None
        assert g2.state is RunState.dispatched  # sent at once, no backoff
        assert (g2.failures, g2.blocked_by, g2.cause_run_id) == (0, None, g1.id)
        [handoff] = [e for e in g2.events if e.type.value == "run.handoff"]
        assert handoff.data["generation"] == 2
        assert sink.received == 2


async def test_a_crash_loop_waits_a_backoff_that_grows(backend: Backend) -> None:
    """A generation whose dispatch fails ends ``failed`` at once: a crash. Its successor
    waits the schedule's backoff, growing with each crash in a row; a backoff of 0 still
    waits MIN_CRASH_BACKOFF, so a crash loop never spins."""
    from _sinks import closed_port
    from firecron.core.planning import MIN_CRASH_BACKOFF

    now = datetime.now(UTC)
    dead_end = f"http://127.0.0.1:{closed_port()}/w"
    await store_schedule(
        backend.store,
        now,
        id="crashy",
        continuous={"window": "1m"},
        target={"url": dead_end, "worker": True},
        retry={"backoff": "10s", "max_backoff": "30s", "multiplier": 2},
    )
    await store_schedule(
        backend.store,
        now,
        id="spinner",
        continuous={"window": "1m"},
        target={"url": dead_end, "worker": True},
        retry={"backoff": "0s", "max_backoff": "0s"},
    )
    clock = [now]
    d = backend.dispatcher()
    d.clock = lambda: clock[0]
    try:
        await d.tick(now)
        g1 = await backend.store.get_run(generation_run_id("crashy", 1))
        assert g1 is not None
        assert g1.state is RunState.failed
        g2 = await backend.store.get_run(generation_run_id("crashy", 2))
        assert g2 is not None
        assert (g2.state, g2.failures, g2.blocked_by) == (RunState.queued, 1, g1.id)
        assert g2.deadline_at == now + timedelta(seconds=10)
        spun = await backend.store.get_run(generation_run_id("spinner", 2))
        assert spun is not None
        assert spun.state is RunState.queued
        assert spun.deadline_at == now + MIN_CRASH_BACKOFF
        clock[0] = now + timedelta(seconds=11)
        await d.tick(clock[0])
        failed = await backend.store.get_run(g2.id)
        assert failed is not None
        assert failed.state is RunState.failed
        g3 = await backend.store.get_run(generation_run_id("crashy", 3))
        assert g3 is not None
        assert g3.failures == 2
        assert g3.deadline_at == clock[0] + timedelta(seconds=20)
    finally:
        await d.aclose()


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


def test_a_window_that_does_not_fit_the_deployed_function_timeout_is_refused(
    tmp_path: Path,
) -> None:
    from _cli import clean_env, run_cli

    schedules = tmp_path / "s.yaml"
    schedules.write_text(
        "schedules:\n  - id: tailer\n    continuous: {window: 9m}\n    target: {function: tail}\n"
    )
    env = clean_env()
    assert run_cli("validate", str(schedules), env=env).returncode == 0  # timeout unknown
    env["FIRECRON_FUNCTION_TIMEOUTS"] = '{"tail": 540, "other": 60}'
    refused = run_cli("validate", str(schedules), env=env)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "schedules[0] (id=tailer): continuous.window: 9m does not fit the deployed timeout of "
            "function 'tail' (9m): the window must be at least 30s shorter, or every generation "
            "is stopped before it hands over"
        )
    )
    env["FIRECRON_FUNCTION_TIMEOUTS"] = '{"tail": 600}'
    assert run_cli("validate", str(schedules), env=env).returncode == 0
    env["FIRECRON_FUNCTION_TIMEOUTS"] = "[540]"
    bad = run_cli("validate", str(schedules), env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: FIRECRON_FUNCTION_TIMEOUTS: expected a JSON object of seconds by function "
        'name, e.g. {"tail": 540}'
    )


def test_continuous_needs_a_worker_and_a_sane_heartbeat_timeout() -> None:
    import pytest
    from pydantic import ValidationError

    base = {"id": "t", "continuous": {"window": "1m"}}
    with pytest.raises(ValidationError, match="a continuous schedule needs a worker target"):
        ScheduleSpec.model_validate({**base, "target": {"url": "https://example.com/x"}})
    with pytest.raises(ValidationError, match="set at most one of 'cron', 'every', 'at', 'hourly'"):
        ScheduleSpec.model_validate({**base, "every": "1m", "target": {"function": "tail"}})
    with pytest.raises(ValidationError, match="window must be at least 1s"):
        ScheduleSpec.model_validate(
            {**base, "continuous": {"window": "500ms"}, "target": {"function": "tail"}}
        )
    for bad in ("2s", "2d"):
        with pytest.raises(ValidationError, match="heartbeat_timeout must be between 3s and 1d"):
            ScheduleSpec.model_validate(
                {**base, "heartbeat_timeout": bad, "target": {"function": "tail"}}
            )


async def test_resume_starts_the_next_generation_and_delete_stops_the_live_one(
    backend: Backend,
) -> None:
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        await start_forever(backend, looper.url, "1h")
        d = backend.dispatcher()
        try:
            first = await wait_run(
                backend.store,
                generation_run_id("forever", 1),
                lambda r: r.state is RunState.running,
            )
            await admin.pause(backend.store, "forever", datetime.now(UTC))
            stopped = await wait_run(backend.store, first.id, lambda r: r.is_terminal)
            assert stopped.state is RunState.cancelled
            assert stopped.error == "schedule paused"
            await d.tick()
            assert await backend.store.get_run(generation_run_id("forever", 2)) is None
            # Resumed: the next generation starts at the next tick, and only one.
            await admin.resume(backend.store, "forever", datetime.now(UTC))
            await asyncio.gather(d.tick(), d.tick())
            second = await wait_run(
                backend.store,
                generation_run_id("forever", 2),
                lambda r: r.state is RunState.running,
            )
            assert second.cause_run_id is None  # started by the tick, not a handoff
            await admin.delete(backend.store, "forever", datetime.now(UTC))
            gone = await wait_run(backend.store, second.id, lambda r: r.is_terminal)
            assert gone.state is RunState.cancelled
            await d.tick()
        finally:
            await d.aclose()
    runs = await backend.store.list_runs(schedule_id="forever")
    assert sorted(r.generation or 0 for r in runs) == [1, 2]  # nothing after the delete
    assert await backend.store.get_schedule("forever") is None


async def test_prune_stops_the_live_generation(backend: Backend) -> None:
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        spec = await start_forever(backend, looper.url, "1h")
        live = await wait_run(
            backend.store, generation_run_id("forever", 1), lambda r: r.state is RunState.running
        )
        other = spec.model_copy(
            update={"id": "other", "continuous": None, "every": timedelta(hours=1)}
        )
        await admin.apply_schedules(
            backend.store, [other], datetime.now(UTC), prune=True, dry_run=False, confirmed=True
        )
        stopped = await wait_run(backend.store, live.id, lambda r: r.is_terminal)
    assert stopped.state is RunState.cancelled
    assert await backend.store.get_run(generation_run_id("forever", 2)) is None


async def test_the_tail_example_hands_its_offset_over_with_fenced_writes(backend: Backend) -> None:
    """``functions/main.py``'s ``tail``: each generation picks up the offset where the
    one before it left it, so the stream is consumed once, in order, across handoffs."""
    now = datetime.now(UTC)
    with serve_worker("tail", env=backend.env(), source=MAIN_SOURCE) as tail:
        await store_schedule(
            backend.store,
            now,
            id="tail-stream",
            continuous={"window": "1s"},
            heartbeat_timeout="3s",
            target={"url": tail.url, "worker": True},
            params={"batch": 5, "poll_seconds": 0.05},
        )
        d = backend.dispatcher()
        try:
            await d.tick()
        finally:
            await d.aclose()
        await apoll(
            lambda: backend.store.get_run(generation_run_id("tail-stream", 4)),
            lambda r: r is not None and r.state is RunState.running,
            what="generation 4 running",
        )
        last = await pause_and_stop(backend.store, "tail-stream")
    runs = sorted(
        await backend.store.list_runs(schedule_id="tail-stream"), key=lambda r: r.generation or 0
    )
    assert last.generation is not None
    assert last.generation >= 4
    assert [r.state for r in runs] == [RunState.succeeded] * (len(runs) - 1) + [RunState.cancelled]
    # A cancelled run's output is not kept: those that ran their window.
    outputs: list[dict[str, Any]] = [r.output for r in runs[:-1] if isinstance(r.output, dict)]
    assert len(outputs) == len(runs) - 1
    assert outputs[0]["from"] == 0
    for before, after in itertools.pairwise(outputs):
        assert after["from"] == before["to"]  # picked up exactly where the one before stopped
    assert all(o["batches"] > 0 and o["fenced"] is False for o in outputs)
    entry = await backend.store.get_state("tail/tail-stream/offset")
    assert entry is not None
    value: Any = entry.value
    assert value["offset"] >= outputs[-1]["to"]
    assert value["generation"] in (last.generation - 1, last.generation)


def test_the_sdk_tells_a_generation_its_fence() -> None:
    import pytest

    import firecron

    def generation(window_end: datetime) -> firecron.RunContext:
        return firecron.RunContext(
            run_id="tail@g0000000007",
            schedule_id="tail",
            scheduled_for=datetime(2020, 1, 1, tzinfo=UTC),
            generation=7,
            window_end=window_end,
        )

    now = datetime.now(UTC)
    ctx = generation(now + timedelta(hours=1))
    assert ctx.fence_headers() == {"firecron-fence": "7"}
    assert firecron.FENCE_HEADER == "firecron-fence"
    assert ctx.keep_going()  # built directly (a unit test of a worker): the window decides
    assert not generation(now - timedelta(seconds=1)).keep_going()
    plain = firecron.RunContext(
        run_id="r", schedule_id="s", scheduled_for=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert plain.fence_headers() == {}
    assert plain.keep_going()
    with pytest.raises(RuntimeError, match="needs a run started by the firecron worker SDK"):
        _ = plain.state


async def test_disabling_by_apply_stops_the_live_generation(backend: Backend) -> None:
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        spec = await start_forever(backend, looper.url, "1h")
        d = backend.dispatcher()
        try:
            live = await wait_run(
                backend.store,
                generation_run_id("forever", 1),
                lambda r: r.state is RunState.running,
            )
            disabled = spec.model_copy(update={"enabled": False})
            await admin.apply_schedules(
                backend.store, [disabled], datetime.now(UTC), prune=False, dry_run=False
            )
            stopped = await wait_run(backend.store, live.id, lambda r: r.is_terminal)
            await d.tick()
        finally:
            await d.aclose()
    assert stopped.state is RunState.cancelled
    assert await backend.store.get_run(generation_run_id("forever", 2)) is None


def test_keep_going_is_false_once_the_lease_lapsed() -> None:
    """An instance whose last recorded heartbeat is ``heartbeat_timeout`` old may have
    been declared lost: it stops by itself, before any heartbeat reply tells it. Its
    heartbeats come at least three times per ``heartbeat_timeout``, whatever the
    decorator asked for."""
    from typing import cast

    import firecron
    from _factories import T0, make_run
    from firecron.core.lifecycle import RunTimeouts
    from firecron.worker import _Execution

    class Runtime:  # what an execution reads of its runtime here: the clock, the timeouts
        def __init__(self) -> None:
            self.at = T0
            self.timeouts = RunTimeouts()

        def now(self) -> datetime:
            return self.at

    run = make_run(
        "tail",
        T0,
        run_id=generation_run_id("tail", 1),
        state=RunState.running,
        started_at=T0,
        heartbeat_at=T0,
        generation=1,
        window=timedelta(hours=1),
        heartbeat_timeout=timedelta(seconds=3),
    )
    ctx = firecron.RunContext(
        run_id=run.id,
        schedule_id="tail",
        scheduled_for=T0,
        generation=1,
        window_end=T0 + timedelta(hours=1),
    )
    runtime = Runtime()
    execution = _Execution(cast(Any, runtime), lambda _: None, ctx, run, timedelta(seconds=15))
    assert execution.interval == timedelta(seconds=1)
    runtime.at = T0 + timedelta(seconds=2.9)
    assert ctx.keep_going()
    runtime.at = T0 + timedelta(seconds=3)
    assert not ctx.keep_going()  # the lease lapsed: the watchdog may have declared it lost
    execution.run = run.model_copy(update={"heartbeat_at": T0 + timedelta(seconds=2)})
    assert ctx.keep_going()  # a recorded heartbeat renewed it
    execution.lose_lease()  # a fenced write was refused
    assert not ctx.keep_going()


def test_a_continuous_that_is_not_a_mapping_is_one_plain_line(tmp_path: Path) -> None:
    from _cli import run_cli

    bad = tmp_path / "s.yaml"
    bad.write_text(
        "schedules:\n"
        "  - id: tailer\n"
        "    continuous: 10m\n"
        "    retry: 5\n"
        "    target: {function: tail}\n"
    )
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert sorted(result.stderr.strip().splitlines()[-2:]) == [
        f"{bad}: schedules[0] (id=tailer): continuous: must be a mapping (key: value) (got '10m')",
        f"{bad}: schedules[0] (id=tailer): retry: must be a mapping (key: value) (got 5)",
    ]


def test_a_fenced_write_needs_a_run(tmp_path: Path) -> None:
    import pytest

    import firecron

    with firecron.State(f"sqlite:///{tmp_path / 'f.db'}") as state:
        with pytest.raises(RuntimeError, match="fence=True needs a run started by the firecron"):
            state.set("offset", 1, fence=True)
        with pytest.raises(RuntimeError, match="fence=True needs a run started by the firecron"):
            state.delete("offset", fence=True)
        assert state.get("offset") is None  # nothing written
        assert state.set("offset", 1).version == 1  # unfenced, it is any program's write


async def test_a_successor_claimed_by_a_settler_that_died_is_sent_by_the_next_tick(
    backend: Backend,
) -> None:
    """An instance killed between its successor's claim and its POST leaves the
    successor ``pending`` and its own end unsettled: the next tick's sweep sends it,
    instead of the watchdog after the pending grace (minutes)."""
    from _sinks import serve
    from firecron.core import planning

    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="tail",
            continuous={"window": "1m"},
            target={"url": sink.url + "/w", "worker": True},
        )
        clock = [now]
        d = backend.dispatcher()
        d.clock = lambda: clock[0]
        try:
            await d.tick(now)
            first = await backend.store.get_run(generation_run_id("tail", 1))
            assert first is not None
            assert first.state is RunState.dispatched
            # Generation 1 worked its window and recorded its end, leaving settle_at...
            ended_at = now + timedelta(minutes=1)
            ended = await backend.store.update_run(
                first.id,
                [RunState.dispatched],
                {
                    "state": RunState.succeeded,
                    "started_at": now,
                    "heartbeat_at": ended_at,
                    "ended_at": ended_at,
                    "settle_at": ended_at,
                    "watch_at": ended_at,
                    "deadline_at": None,
                },
            )
            assert ended is not None
            # ...claimed generation 2, and died before sending it.
            stored = await backend.store.get_schedule("tail")
            assert stored is not None
            plan = planning.plan_handoff(
                stored, ended, ended_at, pending_grace=d.timeouts.pending_grace
            )
            assert plan is not None
            assert await backend.store.claim(stored, plan.new_state, plan.runs)
            assert sink.received == 1
            clock[0] = ended_at + timedelta(seconds=1)
            await d.tick(clock[0])
        finally:
            await d.aclose()
        second = await backend.store.get_run(generation_run_id("tail", 2))
        assert second is not None
        assert second.state is RunState.dispatched  # sent by the sweep, not after the grace
        assert sink.received == 2
    settled = await backend.store.get_run(first.id)
    assert settled is not None
    assert settled.settle_at is None
