"""Cancel, re-run and backfill (``firecron.operations``) on both stores.

Runs in states a worker never holds for long (pending, queued, waiting...) are stored
as the dispatcher would have left them; plain HTTP targets (a local sink) end
``delivered`` within the call that sends them, so pipelines and backfills of them run
inside one call. Where a run must really be running, a functions-framework worker
process runs it (``backend`` fixture). Waits poll the store (``tests/_poll.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _backend import Backend
from _factories import make_run, store_schedule
from _poll import apoll, wait_run
from _sinks import Sink, serve
from _workers import MAIN_SOURCE, serve_worker
from firecron import admin, operations
from firecron.core import backfill as core_backfill
from firecron.core.models import ScheduleSpec, ScheduleState, WaitSpec
from firecron.core.runs import (
    Attempt,
    RunState,
    RunTrigger,
    generation_run_id,
    scheduled_run_id,
    task_run_id,
)
from firecron.dispatch import Dispatcher
from firecron.errors import InvalidInputError, NotFoundError
from firecron.settings import Settings
from firecron.store.base import Store

APP = Path(__file__).resolve().with_name("_orchestration_app.py")
HOUR = timedelta(hours=1)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with serve() as running:
        yield running


def dispatcher(store: Store) -> Dispatcher:
    return Dispatcher(store, Settings(allow_private_targets=True, ack_timeout=timedelta(seconds=5)))


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


# -- cancel ---------------------------------------------------------------------------------


async def test_runs_not_started_are_cancelled_at_once_and_keep_their_history(store: Store) -> None:
    now = datetime.now(UTC)
    failed = Attempt(
        number=1, dispatched_at=now, ended_at=now, outcome=RunState.failed, error="boom"
    )
    runs = [
        make_run("job", now, state=RunState.pending, run_id="job@p", attempts=[Attempt(number=1)]),
        make_run(
            "job",
            now,
            state=RunState.dispatched,
            run_id="job@d",
            attempts=[Attempt(number=1, dispatched_at=now)],
        ),
        make_run("job", now, state=RunState.queued, run_id="job@q", blocked_by="job@p"),
        make_run(
            "job",
            now,
            state=RunState.waiting,
            run_id="job@w",
            wait=WaitSpec(key="orders/ready"),
            wait_key="orders/ready",
            wait_until=now + HOUR,
        ),
        make_run(
            "job",
            now,
            state=RunState.retry_wait,
            run_id="job@r",
            attempts=[failed],
            retry_at=now + HOUR,
            error="boom",
        ),
    ]
    for run in runs:
        assert await store.create_run(run) is not None
    assert [r.id for r in await store.waiting_on("orders/ready", 10)] == ["job@w"]
    for run in runs:
        done = await operations.cancel_run(store, run.id, now, reason="not today")
        assert done.state is RunState.cancelled, run.id
        assert done.error == "not today"
        assert done.ended_at == now
        assert done.watch_at is None  # never looked at again
    retried = await store.get_run("job@r")
    assert retried is not None
    # The failed attempt keeps its own outcome: nothing of a next attempt began.
    assert [(a.outcome, a.error) for a in retried.attempts] == [(RunState.failed, "boom")]
    assert retried.retry_at is None
    # A write to the key no longer finds the cancelled waiter.
    assert await store.waiting_on("orders/ready", 10) == []
    pending = await store.get_run("job@p")
    assert pending is not None
    assert pending.attempts[-1].outcome is RunState.cancelled


async def test_an_ended_or_unknown_run_is_refused_with_one_line(store: Store) -> None:
    now = datetime.now(UTC)
    await store.create_run(make_run("job", now, state=RunState.succeeded, run_id="job@s"))
    with pytest.raises(InvalidInputError, match=r"^run job@s already ended \(succeeded\)$"):
        await operations.cancel_run(store, "job@s", now)
    with pytest.raises(NotFoundError, match=r"^unknown run 'job@nope'$"):
        await operations.cancel_run(store, "job@nope", now)


async def test_a_running_worker_is_asked_to_stop_and_its_run_ends_cancelled(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        await store_schedule(
            backend.store,
            now,
            id="long",
            every="1h",
            target={"url": step.url, "worker": True},
            params={"wait_for": str(tmp_path / "never")},
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            run_id = scheduled_run_id("long", now)
            await wait_run(backend.store, run_id, lambda r: r.state is RunState.running)
            asked = await operations.cancel_run(
                backend.store, run_id, datetime.now(UTC), dispatcher=d
            )
            assert asked.state is RunState.running  # a request: the worker stops it
            assert asked.cancel_requested
            assert asked.cancelled_at is not None
            # Asking again changes nothing.
            again = await operations.cancel_run(backend.store, run_id, datetime.now(UTC))
            assert again.cancelled_at == asked.cancelled_at
            done = await wait_run(backend.store, run_id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert done.state is RunState.cancelled
    assert done.error == "cancelled by an operator"
    assert done.attempt == 1  # not retried
    assert done.attempts[-1].outcome is RunState.cancelled


async def test_cancelling_a_pipeline_run_cancels_its_open_tasks(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        worker = {"url": step.url, "worker": True}
        await store_schedule(
            backend.store,
            now,
            id="etl",
            every="1h",
            pipeline={
                "id": "two",
                "tasks": [
                    {"id": "first", "target": worker, "params": {"wait_for": str(tmp_path / "x")}},
                    {"id": "second", "target": worker, "after": ["first"]},
                ],
            },
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            pipeline_id = scheduled_run_id("etl", now)
            first_id = task_run_id(pipeline_id, "first")
            await wait_run(backend.store, first_id, lambda r: r.state is RunState.running)
            cancelled = await operations.cancel_run(
                backend.store, pipeline_id, datetime.now(UTC), dispatcher=d
            )
            assert cancelled.state is RunState.cancelled  # no worker: at once
            second = await backend.store.get_run(task_run_id(pipeline_id, "second"))
            assert second is not None
            assert second.state is RunState.cancelled
            first = await wait_run(backend.store, first_id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert first.state is RunState.cancelled
    assert first.error == "pipeline run ended cancelled: cancelled by an operator"
    assert cancelled.settle_at is None  # settled by the dispatcher given


async def test_a_cancelled_task_waiting_for_a_slot_never_takes_one(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    barrier = tmp_path / "go"
    with serve_worker("step", env=backend.env(), source=APP) as step:
        worker = {"url": step.url, "worker": True}
        await store_schedule(
            backend.store,
            now,
            id="etl",
            every="1h",
            pipeline={
                "id": "one-at-a-time",
                "max_parallel": 1,
                "tasks": [
                    {"id": name, "target": worker, "params": {"wait_for": str(barrier)}}
                    for name in ("a", "b", "c")
                ],
            },
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            pipeline_id = scheduled_run_id("etl", now)
            await wait_run(
                backend.store, task_run_id(pipeline_id, "a"), lambda r: r.state is RunState.running
            )
            b = await operations.cancel_run(
                backend.store, task_run_id(pipeline_id, "b"), datetime.now(UTC), dispatcher=d
            )
            assert b.state is RunState.cancelled
            pipeline = await backend.store.get_run(pipeline_id)
            assert pipeline is not None
            assert pipeline.ready == ["c"]
            barrier.touch()
            # a's end hands its slot to c, not to the cancelled b: c runs, the run ends.
            done = await wait_run(backend.store, pipeline_id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert done.state is RunState.failed  # b was cancelled
    c = await backend.store.get_run(task_run_id(pipeline_id, "c"))
    assert c is not None
    assert c.state is RunState.succeeded


async def test_cancelling_a_generation_pauses_its_schedule_so_no_successor_starts(
    backend: Backend,
) -> None:
    now = datetime.now(UTC)
    with serve_worker("looper", env=backend.env(), source=APP) as looper:
        await store_schedule(
            backend.store,
            now,
            id="forever",
            continuous={"window": "1h"},
            target={"url": looper.url, "worker": True},
        )
        d = backend.dispatcher()
        try:
            await d.tick()
            first = generation_run_id("forever", 1)
            await wait_run(backend.store, first, lambda r: r.state is RunState.running)
            await operations.cancel_run(backend.store, first, datetime.now(UTC), dispatcher=d)
            stored = await backend.store.get_schedule("forever")
            assert stored is not None
            assert stored.state.paused
            done = await wait_run(backend.store, first, lambda r: r.is_terminal)
            assert done.state is RunState.cancelled
            await d.tick()  # nothing more: no generation 2 while paused
            assert await backend.store.get_run(generation_run_id("forever", 2)) is None
            await admin.resume(backend.store, "forever", datetime.now(UTC))
            await d.tick()
            await apoll(
                lambda: backend.store.get_run(generation_run_id("forever", 2)),
                lambda r: r is not None,
                what="generation 2 after resume",
            )
        finally:
            await d.aclose()


# -- re-run ---------------------------------------------------------------------------------


async def test_a_rerun_is_a_manual_run_with_the_old_params_overridden(
    store: Store, sink: Sink
) -> None:
    now = datetime.now(UTC)
    await store_schedule(store, now, id="hook", target={"url": sink.url + "/hook"}, params={"a": 1})
    d = dispatcher(store)
    try:
        first = await d.trigger("hook", {"b": 2})
        again = await operations.rerun(d, first.id, params={"b": 3, "c": "x"})
    finally:
        await d.aclose()
    assert again.id != first.id
    assert again.trigger is RunTrigger.manual
    assert again.cause_run_id == first.id
    assert again.params == {"a": 1, "b": 3, "c": "x"}
    assert again.state is RunState.delivered
    assert sink.received == 2


async def test_a_generation_cannot_be_rerun(store: Store) -> None:
    now = datetime.now(UTC)
    await store.create_run(
        make_run("f", now, state=RunState.lost, run_id=generation_run_id("f", 3), generation=3)
    )
    d = dispatcher(store)
    try:
        with pytest.raises(InvalidInputError, match=r"resume the schedule instead"):
            await operations.rerun(d, generation_run_id("f", 3))
        with pytest.raises(NotFoundError, match="unknown run"):
            await operations.rerun(d, "f@nope")
    finally:
        await d.aclose()


def _chain(url: str, **first: Any) -> dict[str, Any]:
    """a -> b -> c, and x on its own: plain targets on the sink."""
    return {
        "id": "chain",
        "tasks": [
            {"id": "a", "target": {"url": f"{url}/a"}, **first},
            {"id": "b", "target": {"url": f"{url}/b"}, "after": ["a"]},
            {"id": "c", "target": {"url": f"{url}/c"}, "after": ["b"]},
            {"id": "x", "target": {"url": f"{url}/x"}},
        ],
    }


async def test_rerun_from_a_task_runs_it_and_below_and_reuses_the_rest(
    store: Store, sink: Sink
) -> None:
    now = datetime.now(UTC)
    await store_schedule(store, now, id="p", pipeline=_chain(sink.url))
    d = dispatcher(store)
    try:
        old = await d.trigger("p")
        old = await wait_run(store, old.id, lambda r: r.is_terminal)
        assert old.state is RunState.succeeded
        sink.requests.clear()
        new = await operations.rerun(d, old.id, from_task="b")
        new = await wait_run(store, new.id, lambda r: r.is_terminal)
    finally:
        await d.aclose()
    assert new.state is RunState.succeeded
    assert new.cause_run_id == old.id
    assert new.trigger is RunTrigger.manual
    assert sorted(r.path for r in sink.requests) == ["/b", "/c"]  # a and x were not sent
    tasks = {r.task: r for r in await store.get_runs([task_run_id(new.id, t) for t in "abcx"])}
    for name in "ax":
        reused = tasks[name]
        assert reused.reused_from == task_run_id(old.id, name)
        assert reused.state is RunState.delivered
        assert reused.attempts == []
        assert reused.watch_at is None
    for name in "bc":
        assert tasks[name].reused_from is None
        assert tasks[name].state is RunState.delivered
        assert len(tasks[name].attempts) == 1
    # A task run names its pipeline run: re-running it is re-running from it.
    d = dispatcher(store)
    try:
        sink.requests.clear()
        third = await operations.rerun(d, task_run_id(old.id, "c"))
        third = await wait_run(store, third.id, lambda r: r.is_terminal)
    finally:
        await d.aclose()
    assert third.state is RunState.succeeded
    assert [r.path for r in sink.requests] == ["/c"]


async def test_rerun_from_refuses_what_cannot_be_reused(store: Store) -> None:
    now = datetime.now(UTC)
    with serve(status=400) as bad:
        await store_schedule(
            store, now, id="p", pipeline=_chain(bad.url, retry={"max_attempts": 1})
        )
        await store_schedule(store, now, id="plain", target={"url": bad.url + "/p"})
        d = dispatcher(store)
        try:
            old = await d.trigger("p")
            old = await wait_run(store, old.id, lambda r: r.is_terminal)
            assert old.state is RunState.failed
            with pytest.raises(
                InvalidInputError, match=r"^from_task: upstream task 'a' ended failed in run "
            ):
                await operations.rerun(d, old.id, from_task="c")
            with pytest.raises(
                InvalidInputError,
                match=r"^from_task: pipeline 'chain' has no task 'z' \(its tasks: a, b, c, x\)$",
            ):
                await operations.rerun(d, old.id, from_task="z")
            plain = await d.trigger("plain")
            with pytest.raises(InvalidInputError, match=r"is not a pipeline run$"):
                await operations.rerun(d, plain.id, from_task="a")
            # From the failed task itself: allowed, and it runs again (and fails again).
            new = await operations.rerun(d, old.id, from_task="a")
            new = await wait_run(store, new.id, lambda r: r.is_terminal)
            assert new.state is RunState.failed
            # a and x, the plain run, then a alone: x is not below a, so it is reused.
            assert [r.path for r in bad.requests][3:] == ["/a"]
        finally:
            await d.aclose()


async def test_rerun_from_a_task_hands_it_the_reused_upstream_outputs(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        worker = {"url": step.url, "worker": True}
        await store_schedule(
            backend.store,
            now,
            id="etl",
            every="1h",
            pipeline={
                "id": "three",
                "tasks": [
                    {"id": "extract", "target": worker, "params": {"rows": 7}},
                    {"id": "join", "target": worker, "after": ["extract"]},
                    {"id": "load", "target": worker, "after": ["join"]},
                ],
            },
        )
        d = backend.dispatcher()
        try:
            await d.tick(now)
            old = await wait_run(
                backend.store, scheduled_run_id("etl", now), lambda r: r.is_terminal
            )
            assert old.state is RunState.succeeded
            new = await operations.rerun(d, old.id, params={"day": "tue"}, from_task="join")
            new = await wait_run(backend.store, new.id, lambda r: r.is_terminal)
        finally:
            await d.aclose()
    assert new.state is RunState.succeeded
    [old_extract] = await backend.store.get_runs([task_run_id(old.id, "extract")])
    extract, join = await backend.store.get_runs(
        [task_run_id(new.id, "extract"), task_run_id(new.id, "join")]
    )
    assert extract.reused_from == old_extract.id
    assert extract.output == old_extract.output
    assert isinstance(join.output, dict)
    assert join.output["upstream"] == {"extract": old_extract.output}
    assert join.output["params"] == {"day": "tue"}


# -- backfill -------------------------------------------------------------------------------


async def test_backfill_creates_each_past_occurrence_once_and_resumes(
    store: Store, sink: Sink
) -> None:
    now = datetime.now(UTC)
    top = _hour(now)
    await store_schedule(store, now, id="hourly", cron="0 * * * *", target={"url": sink.url + "/h"})
    d = dispatcher(store)
    try:
        start, end = top - 5 * HOUR, top - 3 * HOUR
        dry = await operations.backfill(d, "hourly", start, end, dry_run=True)
        assert dry.dry_run
        assert dry.planned == [top - 5 * HOUR, top - 4 * HOUR, top - 3 * HOUR]
        assert dry.to_create == [scheduled_run_id("hourly", t) for t in dry.planned]
        assert dry.created == []
        assert sink.received == 0
        assert await store.list_runs(schedule_id="hourly") == []
        seen: list[tuple[int, int]] = []
        first = await operations.backfill(
            d, "hourly", start, end, progress=lambda done, total: seen.append((done, total))
        )
        assert first.created == dry.to_create
        assert first.existing == []
        assert seen[0] == (0, 3)
        assert seen[-1] == (3, 3)
        # Wider: the three are reported, the two new ones created; nothing is doubled.
        wider = await operations.backfill(d, "hourly", top - 6 * HOUR, top - 2 * HOUR)
    finally:
        await d.aclose()
    assert wider.existing == first.created
    assert wider.existing_states == {i: RunState.delivered for i in first.created}
    assert wider.created == [
        scheduled_run_id("hourly", top - 6 * HOUR),
        scheduled_run_id("hourly", top - 2 * HOUR),
    ]
    assert sink.received == 5
    runs = await store.list_runs(schedule_id="hourly", limit=50)
    assert len(runs) == 5
    for run in runs:
        assert run.trigger is RunTrigger.backfill
        assert run.state is RunState.delivered
        assert run.id == scheduled_run_id("hourly", run.scheduled_for)


async def test_occurrences_the_schedule_fires_itself_are_left_to_it(
    store: Store, sink: Sink
) -> None:
    now = datetime.now(UTC)
    top = _hour(now)
    await store_schedule(store, now, id="hourly", cron="0 * * * *", target={"url": sink.url})
    stored = await store.get_schedule("hourly")
    assert stored is not None
    nxt = stored.state.next_occurrence
    assert nxt is not None
    d = dispatcher(store)
    try:
        report = await operations.backfill(d, "hourly", nxt - 2 * HOUR, top + 3 * HOUR)
        summary = await d.tick(nxt + timedelta(seconds=1))  # the schedule's own claim holds
    finally:
        await d.aclose()
    assert report.planned == [nxt - 2 * HOUR, nxt - HOUR]
    assert report.later[0] == nxt
    assert summary.claimed == 1
    assert summary.lost_claims == 0


async def test_a_paused_schedule_resumes_after_what_was_backfilled(
    store: Store, sink: Sink
) -> None:
    now = datetime.now(UTC)
    top = _hour(now)
    await store_schedule(store, now, id="hourly", cron="0 * * * *", target={"url": sink.url})
    paused = await admin.pause(store, "hourly", top - 10 * HOUR)
    assert paused.state.last_occurrence is None
    d = dispatcher(store)
    try:
        report = await operations.backfill(d, "hourly", top - 6 * HOUR, top - HOUR)
        stored = await store.get_schedule("hourly")
        assert stored is not None
        assert stored.state.last_occurrence == top - HOUR
        await admin.resume(store, "hourly", now)
        summary = await d.tick(now)
    finally:
        await d.aclose()
    assert len(report.created) == 6
    # Resume starts after the backfilled hours: the claim (of the current hour) holds.
    assert summary.lost_claims == 0
    assert summary.claimed == 1


async def test_a_pipeline_schedule_is_backfilled_as_pipeline_runs(store: Store, sink: Sink) -> None:
    now = datetime.now(UTC)
    top = _hour(now)
    await store_schedule(store, now, id="p", cron="0 * * * *", pipeline=_chain(sink.url))
    d = dispatcher(store)
    try:
        report = await operations.backfill(d, "p", top - 2 * HOUR, top - HOUR)
    finally:
        await d.aclose()
    assert len(report.created) == 2
    for run_id in report.created:
        run = await wait_run(store, run_id, lambda r: r.is_terminal)
        assert run.state is RunState.succeeded
        assert run.trigger is RunTrigger.backfill
        assert run.pipeline == "chain"
    assert sink.received == 2 * 4


async def test_backfill_refusals_are_one_line(store: Store) -> None:
    now = datetime.now(UTC)
    first = now.replace(microsecond=0) - 5 * HOUR
    await store_schedule(
        store, now, id="often", every="1s", start_at=first, target={"url": "https://e.x/h"}
    )
    await store_schedule(store, now, id="later", target={"url": "https://e.x/h"})
    await store_schedule(
        store,
        now,
        id="forever",
        continuous={"window": "1h"},
        target={"url": "https://e.x/w", "worker": True},
    )
    d = dispatcher(store)
    try:
        with pytest.raises(InvalidInputError, match=r"^end .* is before start "):
            await operations.backfill(d, "often", now - HOUR, now - 2 * HOUR)
        # 10,001 occurrences, one a second: refused; 10,000 are not (a dry run writes nothing).
        with pytest.raises(
            InvalidInputError, match=r"holds more than 10,000 occurrences; backfill it in smaller"
        ):
            await operations.backfill(d, "often", first, first + timedelta(seconds=10_000))
        ok = await operations.backfill(
            d, "often", first, first + timedelta(seconds=9_999), dry_run=True
        )
        assert len(ok.planned) == 10_000
        with pytest.raises(InvalidInputError, match=r"^schedule 'later' is on demand: "):
            await operations.backfill(d, "later", now - HOUR, now)
        with pytest.raises(InvalidInputError, match=r"^schedule 'forever' is continuous: "):
            await operations.backfill(d, "forever", now - HOUR, now)
        with pytest.raises(NotFoundError, match=r"^unknown schedule 'nope'$"):
            await operations.backfill(d, "nope", now - HOUR, now)
        with pytest.raises(InvalidInputError, match=r"^max_parallel must be at least 1, got 0$"):
            await operations.backfill(d, "often", now - HOUR, now, max_parallel=0)
    finally:
        await d.aclose()
    assert await store.list_runs() == []


async def test_max_parallel_never_lets_more_runs_than_that_overlap(backend: Backend) -> None:
    now = datetime.now(UTC)
    top = _hour(now)
    with serve_worker("sleep", env=backend.env(), source=MAIN_SOURCE) as sleeper:
        await store_schedule(
            backend.store,
            now,
            id="nap",
            cron="0 * * * *",
            target={"url": sleeper.url, "worker": True},
            params={"seconds": 0.3},
        )
        d = backend.dispatcher()
        try:
            report = await operations.backfill(d, "nap", top - 3 * HOUR, top - HOUR, max_parallel=1)
            runs = [
                await wait_run(backend.store, i, lambda r: r.is_terminal) for i in report.created
            ]
        finally:
            await d.aclose()
    assert len(runs) == 3
    spans = sorted((r.started_at, r.ended_at) for r in runs)
    for run in runs:
        assert run.state is RunState.succeeded
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert ended is not None
        assert started is not None
        assert ended <= started  # one at a time


# -- the pure parts -------------------------------------------------------------------------


def test_a_date_bound_is_the_whole_day_in_the_schedule_zone() -> None:
    start = core_backfill.parse_bound("2027-03-28", "Europe/Berlin", end=False)
    end = core_backfill.parse_bound("2027-03-28", "Europe/Berlin", end=True)
    assert start == datetime(2027, 3, 27, 23, 0, tzinfo=UTC)
    # The DST day is 23 hours long; the end is the instant before the next midnight.
    assert end == datetime(2027, 3, 28, 21, 59, 59, 999999, tzinfo=UTC)
    assert core_backfill.parse_bound("2027-01-04T10:00:00Z", "Europe/Berlin", end=True) == (
        datetime(2027, 1, 4, 10, tzinfo=UTC)
    )
    with pytest.raises(ValueError, match=r"^invalid date '2027-13-01': write it like"):
        core_backfill.parse_bound("2027-13-01", "UTC", end=False)


def test_the_range_bounds_are_both_included() -> None:
    spec = ScheduleSpec.model_validate(
        {"id": "h", "cron": "0 * * * *", "target": {"url": "https://e.x"}}
    )
    state = ScheduleState(next_occurrence=datetime(2027, 1, 2, tzinfo=UTC))
    t = datetime(2027, 1, 1, 10, tzinfo=UTC)
    plan = core_backfill.plan_backfill(spec, state, t, t + 2 * HOUR, t + 5 * HOUR)
    assert plan.planned == [t, t + HOUR, t + 2 * HOUR]
    # After now: later, whatever the next occurrence says.
    late = core_backfill.plan_backfill(spec, state, t, t + 2 * HOUR, t + HOUR)
    assert late.planned == [t, t + HOUR]
    assert late.later == [t + 2 * HOUR]
