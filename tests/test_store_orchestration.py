"""The Store contract of orchestration (issue 13): ``spawn`` and ``mark_upstream``, and the
round trip of pipeline and task runs, on every backend.

Each test runs once per ``store_factory`` param (``sqlite``, ``firestore`` on the
emulator). Times are fixed (``T0``); nothing reads the clock or asserts on timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from _factories import MINUTE, T0, make_run, make_state
from firecron.core import lifecycle
from firecron.core.models import ChainOn, ChainStep, PipelineSpec, ScheduleSpec
from firecron.core.pipelines import build_task_runs
from firecron.core.runs import Run, RunState, RunTrigger, UpstreamEnd, task_run_id
from firecron.errors import InvalidInputError
from firecron.store.base import Store

PIPELINE = PipelineSpec.model_validate(
    {
        "id": "etl",
        "description": "nightly load — with unicode ✓",
        "params": {"day": "2027-01-01", "limit": 10},
        "max_parallel": 2,
        "timeout": "1h",
        "tasks": [
            {"id": "extract", "target": {"function": "extract"}},
            {
                "id": "load-2",
                "target": {"url": "https://example.com/load", "worker": True},
                "params": {"table": "t", "nested": [1, {"a": None}]},
                "after": ["extract"],
                "when": "none_failed",
                "if": "params.day != '' && tasks.extract.state == 'succeeded'",
                "retry": {"max_attempts": 3, "backoff": "2s", "max_backoff": "1m"},
                "timeout": "10m",
                "expected_duration": "5m",
            },
            {
                "id": "0-report",
                "notify": {"sink": "ops", "text": "done {pipeline_run_id}"},
                "after": ["extract", "load-2"],
                "when": "all_done",
            },
        ],
    }
)
"""Every kind of task: a function, a URL worker with every policy and an ``if``, a notify
task; ids with ``-`` and a leading digit (quoted as Firestore field paths)."""

GRACE = timedelta(minutes=5)
OK = UpstreamEnd(outcome="succeeded")
FAILED = UpstreamEnd(outcome="failed", failed_within=True)


def pipeline_run(**overrides: Any) -> Run:
    """A pending run of a schedule whose target is the pipeline :data:`PIPELINE`."""
    fields: dict[str, Any] = {
        "target": {"pipeline": "etl"},
        "pipeline": "etl",
        "pipeline_spec": PIPELINE,
        "then": [ChainStep(schedule="report", on=ChainOn.done, params={"x": 1})],
    }
    fields.update(overrides)
    return make_run("nightly", T0, **fields)


def task_run(task: str, upstream: dict[str, UpstreamEnd] | None = None) -> Run:
    """A ``waiting`` task run of the pipeline run of :func:`pipeline_run`."""
    parent = pipeline_run().id
    return make_run(
        "nightly",
        T0,
        run_id=task_run_id(parent, task),
        state=RunState.waiting,
        watch_at=None,
        trigger=RunTrigger.pipeline,
        parent_run_id=parent,
        cause_run_id=parent,
        pipeline="etl",
        task=task,
        upstream=upstream or {},
    )


async def created(store: Store, run: Run) -> Run:
    """``run`` as stored by :meth:`Store.create_run` (with its version)."""
    stored = await store.create_run(run)
    assert stored is not None
    assert stored.version is not None
    return stored


async def start(store: Store, run: Run) -> tuple[Run, list[Run]]:
    """Start pipeline run ``run`` as the dispatcher does: spawn its task runs."""
    tasks, slots, ready = build_task_runs(run, T0, pending_grace=GRACE)
    change = lifecycle.start_pipeline(run, T0, slots, ready)
    result = await store.spawn(run, change.expect, change.changes, tasks)
    assert result is not None
    return result


# -- spawn -------------------------------------------------------------------------------


async def test_spawn_updates_and_creates_in_one_write_with_versions(store: Store) -> None:
    run = await created(store, pipeline_run())
    tasks, slots, ready = build_task_runs(run, T0, pending_grace=GRACE)
    change = lifecycle.start_pipeline(run, T0, slots, ready)
    store.stats.reset()

    result = await store.spawn(run, change.expect, change.changes, tasks)

    assert result is not None
    updated, spawned = result
    # Billed as one write per document, and nothing read.
    assert (store.stats.reads, store.stats.writes) == (0, 1 + len(tasks))
    assert updated.state is RunState.running
    assert updated.slots == slots
    assert updated.version not in (None, run.version)
    assert [r.id for r in spawned] == [t.id for t in tasks]
    assert spawned == tasks
    # Every run comes back with the version a read then gives: the next write needs no read.
    assert await store.get_run(run.id) == updated
    assert (await store.get_run(run.id) or run).version == updated.version
    for got, want in zip(await store.get_runs([t.id for t in tasks]), spawned, strict=True):
        assert got == want
        assert got.version == want.version
    # The version really is the compare-and-set token of the next write.
    assert await store.update_run(run.id, [RunState.running], {"error": "x"}, current=updated)


async def test_spawn_with_no_runs_is_a_plain_version_cas(store: Store) -> None:
    run = await created(store, pipeline_run())
    result = await store.spawn(run, [RunState.pending], {"error": "e"}, [])
    assert result is not None
    updated, spawned = result
    assert (updated.error, spawned) == ("e", [])
    assert await store.get_run(run.id) == updated


async def test_spawn_from_a_stale_version_writes_nothing(store: Store) -> None:
    run = await created(store, pipeline_run())
    moved = await store.update_run(run.id, [RunState.pending], {"error": "first"}, current=run)
    assert moved is not None
    tasks, slots, ready = build_task_runs(run, T0, pending_grace=GRACE)
    change = lifecycle.start_pipeline(run, T0, slots, ready)
    store.stats.reset()

    assert await store.spawn(run, change.expect, change.changes, tasks) is None

    assert store.stats.writes == 0
    assert await store.get_run(run.id) == moved
    assert await store.get_runs([t.id for t in tasks]) == []


async def test_spawn_is_all_or_nothing_when_one_run_exists(store: Store) -> None:
    run = await created(store, pipeline_run())
    tasks, slots, ready = build_task_runs(run, T0, pending_grace=GRACE)
    existing = await created(store, tasks[1].model_copy(update={"error": "already here"}))
    change = lifecycle.start_pipeline(run, T0, slots, ready)

    assert await store.spawn(run, change.expect, change.changes, tasks) is None

    # The update was not applied either: same record, same version.
    unchanged = await store.get_run(run.id)
    assert unchanged == run
    assert unchanged is not None
    assert unchanged.version == run.version
    assert await store.get_runs([t.id for t in tasks]) == [existing]
    # So the spawn can still go through once the clash is gone (here: without it).
    kept = [t for t in tasks if t.id != existing.id]
    assert await store.spawn(run, change.expect, change.changes, kept) is not None


async def test_spawn_from_a_state_not_expected_writes_nothing(store: Store) -> None:
    run = await created(store, pipeline_run())
    tasks, _, _ = build_task_runs(run, T0, pending_grace=GRACE)
    assert await store.spawn(run, [RunState.running], {"error": "no"}, tasks) is None
    assert await store.get_run(run.id) == run
    assert await store.get_runs([t.id for t in tasks]) == []


@pytest.mark.parametrize(
    ("count", "twice", "message"),
    [
        (500, False, "spawn 'nightly@20270101T000000Z': 500 runs, at most 499 per spawn"),
        (2, True, "spawn 'nightly@20270101T000000Z': run 'nightly@x1' appears twice"),
    ],
)
async def test_spawn_refuses_too_many_or_repeated_runs_and_writes_nothing(
    store: Store, count: int, twice: bool, message: str
) -> None:
    run = await created(store, pipeline_run())
    runs = [make_run("nightly", T0, run_id=f"nightly@x{i}") for i in range(count)]
    if twice:
        runs[0] = runs[1]
    with pytest.raises(InvalidInputError) as caught:
        await store.spawn(run, [RunState.pending], {"error": "no"}, runs)
    assert str(caught.value) == message
    assert await store.get_run(run.id) == run
    assert await store.list_runs(limit=10) == [run]


async def test_spawn_of_the_most_runs_one_commit_holds(store: Store) -> None:
    run = await created(store, pipeline_run())
    runs = [make_run("nightly", T0, run_id=f"nightly@x{i:03d}") for i in range(499)]
    result = await store.spawn(run, [RunState.pending], {"state": RunState.running}, runs)
    assert result is not None
    assert len(result[1]) == 499
    assert len(await store.list_runs(limit=1000)) == 500


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"upstream": {"extract": OK}}, "upstream is written by mark_upstream only"),
        ({"nope": 1}, "unknown run field(s) nope"),
        ({"attempt": "two"}, "invalid changes: attempt: Input should be a valid integer"),
    ],
)
async def test_spawn_refuses_bad_changes_and_writes_nothing(
    store: Store, changes: dict[str, object], problem: str
) -> None:
    run = await created(store, pipeline_run())
    tasks, _, _ = build_task_runs(run, T0, pending_grace=GRACE)
    with pytest.raises(InvalidInputError) as caught:
        await store.spawn(run, [RunState.pending], changes, tasks)
    assert str(caught.value).startswith(f"spawn 'nightly@20270101T000000Z': {problem}")
    assert await store.list_runs(limit=10) == [run]


# -- mark_upstream -----------------------------------------------------------------------


async def test_mark_upstream_writes_one_mark_and_returns_the_run(store: Store) -> None:
    join = await created(store, task_run("0-report"))
    store.stats.reset()

    marked = await store.mark_upstream(join.id, "load-2", FAILED)

    assert marked is not None
    assert (store.stats.reads, store.stats.writes) == (1, 1)
    assert marked.upstream == {"load-2": FAILED}
    assert marked.model_dump(exclude={"upstream"}) == join.model_dump(exclude={"upstream"})
    assert marked.version not in (None, join.version)
    got = await store.get_run(join.id)
    assert got == marked
    assert got is not None
    assert got.version == marked.version


async def test_mark_upstream_again_changes_nothing_but_the_version(store: Store) -> None:
    join = await created(store, task_run("0-report"))
    first = await store.mark_upstream(join.id, "extract", OK)
    again = await store.mark_upstream(join.id, "extract", OK)
    assert first is not None
    assert again is not None
    assert again == first
    assert again.upstream == {"extract": OK}
    assert again.version != first.version
    # So a compare-and-set computed from the first mark's run now fails.
    assert (
        await store.update_run(join.id, [RunState.waiting], {"error": "x"}, current=first) is None
    )


async def test_mark_upstream_on_a_missing_run_writes_nothing(store: Store) -> None:
    store.stats.reset()
    assert await store.mark_upstream("nightly@20270101T000000Z.gone", "extract", OK) is None
    assert store.stats.writes == 0
    assert await store.get_run("nightly@20270101T000000Z.gone") is None


@pytest.mark.parametrize("task", ["", "Extract", "a.b", "a b", "a`b", 'a"b', "x" * 64, "a\n"])
async def test_mark_upstream_refuses_an_invalid_task_id(store: Store, task: str) -> None:
    join = await created(store, task_run("0-report"))
    with pytest.raises(InvalidInputError) as caught:
        await store.mark_upstream(join.id, task, OK)
    assert str(caught.value).startswith(f"mark_upstream {join.id!r}: invalid task id {task!r}")
    assert await store.get_run(join.id) == join


async def test_a_cas_computed_before_a_mark_fails(store: Store) -> None:
    join = await created(store, task_run("0-report"))
    assert await store.mark_upstream(join.id, "extract", OK)
    assert await store.update_run(join.id, [RunState.waiting], {"error": "x"}, current=join) is None
    assert await store.spawn(join, [RunState.waiting], {"error": "x"}, []) is None
    got = await store.get_run(join.id)
    assert got is not None
    assert (got.error, got.upstream) == (None, {"extract": OK})


async def test_marks_survive_every_other_write(store: Store) -> None:
    join = await created(store, task_run("0-report", upstream={"extract": OK}))
    assert join.upstream == {"extract": OK}  # a run may be created with marks
    marked = await store.mark_upstream(join.id, "load-2", FAILED)
    assert marked is not None
    both = {"extract": OK, "load-2": FAILED}
    assert marked.upstream == both

    # update_run, read path: the run it returns and the record both keep the marks.
    read = await store.update_run(join.id, [RunState.waiting], {"error": "a"})
    assert read is not None
    assert read.upstream == both
    # update_run, version path.
    cas = await store.update_run(join.id, [RunState.waiting], {"error": "b"}, current=read)
    assert cas is not None
    assert cas.upstream == both
    # spawn.
    spawned = await store.spawn(cas, [RunState.waiting], {"state": RunState.pending}, [])
    assert spawned is not None
    assert spawned[0].upstream == both
    got = await store.get_run(join.id)
    assert got == spawned[0]
    assert got is not None
    assert (got.state, got.error, got.upstream) == (RunState.pending, "b", both)
    # A mark after all those still adds to them.
    last = await store.mark_upstream(join.id, "extract", FAILED)
    assert last is not None
    assert last.upstream == {"extract": FAILED, "load-2": FAILED}


async def test_update_run_refuses_changes_to_the_marks(store: Store) -> None:
    join = await created(store, task_run("0-report"))
    for current in (None, join):
        with pytest.raises(InvalidInputError) as caught:
            await store.update_run(
                join.id, [RunState.waiting], {"upstream": {"extract": OK}}, current=current
            )
        assert (
            str(caught.value)
            == f"update_run {join.id!r}: upstream is written by mark_upstream only"
        )
    assert await store.get_run(join.id) == join


# Ids that need quoting as Firestore field paths (a '-', a leading digit) and plain ones.
JOINED = [f"up-{i}" if i % 3 == 0 else f"{i}up" if i % 3 == 1 else f"up_{i}" for i in range(8)]


def all_marks() -> dict[str, UpstreamEnd]:
    return {task: FAILED if i % 2 else OK for i, task in enumerate(JOINED)}


async def test_concurrent_marks_are_all_kept_and_one_caller_sees_them_all(
    store_factory: Callable[[], Store],
) -> None:
    join = await created(store_factory(), task_run("join"))
    stores = [store_factory() for _ in JOINED]  # each its own connection/client
    marks = all_marks()

    results = await asyncio.gather(
        *(
            s.mark_upstream(join.id, task, marks[task])
            for s, task in zip(stores, JOINED, strict=True)
        )
    )

    final = await store_factory().get_run(join.id)
    assert final is not None
    assert final.upstream == marks
    seen = [r.upstream for r in results if r is not None]
    assert len(seen) == len(JOINED)
    # Each caller sees its own mark, and at least one sees every mark: the join is judged.
    assert all(task in upstream for task, upstream in zip(JOINED, seen, strict=True))
    assert marks in seen


async def test_concurrent_marks_from_threads_are_all_kept(
    store_factory: Callable[[], Store],
) -> None:
    """As above, each caller on its own thread and event loop, as separate processes would."""
    join = await created(store_factory(), task_run("join"))
    stores = [store_factory() for _ in JOINED]
    marks = all_marks()
    barrier = threading.Barrier(len(JOINED))
    results: dict[str, Run | None] = {}

    def mark(store: Store, task: str) -> None:
        async def mark_and_close() -> Run | None:
            try:
                return await store.mark_upstream(join.id, task, marks[task])
            finally:
                await store.close()  # on the loop it used

        barrier.wait()  # all start together, to contend
        results[task] = asyncio.run(mark_and_close())

    threads = [
        threading.Thread(target=mark, args=(s, task))
        for s, task in zip(stores, JOINED, strict=True)
    ]
    for thread in threads:
        thread.start()
    await asyncio.gather(*(asyncio.to_thread(thread.join) for thread in threads))

    final = await store_factory().get_run(join.id)
    assert final is not None
    assert final.upstream == marks
    assert sorted(results) == sorted(JOINED)
    seen = [r.upstream for r in results.values() if r is not None]
    assert len(seen) == len(JOINED)
    assert marks in seen


# -- round trips -------------------------------------------------------------------------


async def test_pipeline_run_round_trips_through_every_write_and_read(store: Store) -> None:
    spec = ScheduleSpec.model_validate(
        {
            "id": "nightly",
            "target": {"pipeline": "etl"},
            "pipeline_spec": PIPELINE.model_dump(by_alias=True),
            "then": [{"schedule": "report", "on": "failed", "params": {"why": "x"}}],
        }
    )
    assert spec.on_demand
    stored = await store.put_schedule(spec, make_state(None), expect_version=None)
    got = await store.get_schedule("nightly")
    assert got == stored
    assert got is not None
    assert got.spec.pipeline_spec == PIPELINE
    assert got.spec.pipeline_spec.task("load-2").if_ == PIPELINE.task("load-2").if_

    # A claim creates the pipeline run (with marks already, to cover that path too).
    run = pipeline_run(
        upstream={"0-report": FAILED},
        settle_at=T0 + MINUTE,
        watch_at=T0 + MINUTE,
        cancelled_at=T0 + timedelta(seconds=30),
        holds_slot=True,
        downstream=["a", "b-2"],
        slots=["extract"],
        ready=["load-2"],
        cause_run_id="other@c0123456789abcdef0123",
        parent_run_id="outer@20270101T000000Z",
        task="inner",
    )
    claim = await store.claim(got, make_state(None), [run])
    assert claim is not None
    [claimed] = claim
    assert claimed.version is not None
    for read in (
        await store.get_run(run.id),
        *(await store.get_runs([run.id])),
        *(await store.list_runs(schedule_id="nightly")),
        *(await store.due_watches(T0 + MINUTE, 10)),
    ):
        assert read == run
        assert read is not None
        assert read.pipeline_spec == PIPELINE
        assert read.upstream == {"0-report": FAILED}
        assert read.version == claimed.version

    # Its task runs, spawned, include every state a pipeline uses.
    reread = await store.get_run(run.id)
    assert reread is not None
    updated, tasks = await start(store, reread)
    assert {t.state for t in tasks} == {RunState.pending, RunState.waiting}
    assert await store.get_runs([t.id for t in tasks]) == tasks
    cancelled = await store.update_run(
        tasks[-1].id,
        [RunState.waiting],
        {"state": RunState.cancelled, "ended_at": T0, "settle_at": T0, "watch_at": T0},
    )
    assert cancelled is not None
    assert await store.get_run(cancelled.id) == cancelled
    assert await store.list_runs(states=[RunState.cancelled]) == [cancelled]
    # Newest first, ties (all were created at T0) by id, descending.
    assert await store.list_runs(states=[RunState.waiting]) == sorted(
        (t for t in tasks if t.state is RunState.waiting and t.id != cancelled.id),
        key=lambda t: t.id,
        reverse=True,
    )
    assert updated.upstream == {"0-report": FAILED}
