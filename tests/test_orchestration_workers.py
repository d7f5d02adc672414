"""Chains and pipelines with real workers: functions-framework processes on both stores.

The workers (``tests/_orchestration_app.py``) record their runs' ends and settle them
(claim and fire what the ends cause) in their own processes, as deployed workers do.
Ticks get their planning instant passed in; waits poll the store (``tests/_poll.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _backend import Backend
from _factories import store_schedule
from _poll import apoll, wait_run
from _sinks import serve
from _workers import serve_worker, serve_workers
from firecron.core.runs import Run, RunState, RunTrigger, caused_run_id, task_run_id

APP = Path(__file__).resolve().with_name("_orchestration_app.py")


async def put(backend: Backend, now: datetime, **fields: Any) -> None:
    """:func:`store_schedule` on the backend's store."""
    await store_schedule(backend.store, now, **fields)


async def put_worker_chain(backend: Backend, now: datetime, worker_url: str, sink_url: str) -> None:
    """An hourly ``first`` (a worker run, due at ``now``) whose end chains to the on-demand
    ``next`` (a plain POST to ``sink_url/next``)."""
    await put(backend, now, id="next", target={"url": sink_url + "/next"})
    await put(
        backend,
        now,
        id="first",
        every="1h",
        target={"url": worker_url, "worker": True},
        then=[{"schedule": "next"}],
    )


async def tick(backend: Backend, at: datetime) -> None:
    d = backend.dispatcher()
    try:
        summary = await d.tick(at)
    finally:
        await d.aclose()
    assert not summary.errors, summary.errors


async def only_run(backend: Backend, schedule_id: str, **filters: Any) -> Run:
    runs = [
        r
        for r in await backend.store.list_runs(schedule_id=schedule_id, limit=200)
        if all(getattr(r, k) == v for k, v in filters.items())
    ]
    assert len(runs) == 1, runs
    return runs[0]


async def test_a_pipeline_of_workers_passes_params_and_upstream_outputs(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        await put(
            backend,
            now,
            id="etl",
            every="1h",
            params={"day": "mon"},
            pipeline={
                "id": "two",
                "params": {"region": "eu", "day": "sun"},
                "tasks": [
                    {
                        "id": "extract",
                        "target": {"url": step.url, "worker": True},
                        "params": {"rows": 7},
                    },
                    {
                        "id": "load",
                        "target": {"url": step.url, "worker": True},
                        "after": ["extract"],
                        "if": 'tasks["extract"].output.rows > 5',
                    },
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend, "etl", task=None)
        done = await wait_run(backend.store, pipeline.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    [extract, load] = await backend.store.get_runs(
        [task_run_id(done.id, "extract"), task_run_id(done.id, "load")]
    )
    assert extract.output == {
        "task": "extract",
        "attempt": 1,
        "params": {"region": "eu", "day": "mon", "rows": 7},
        "upstream": {},
        "rows": 7,
    }
    assert isinstance(load.output, dict)
    assert load.output["upstream"] == {"extract": extract.output}
    assert load.trigger is RunTrigger.pipeline
    assert load.state is RunState.succeeded


async def test_retries_inside_a_pipeline_then_the_downstream_task_runs(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        target = {"url": step.url, "worker": True}
        await put(
            backend,
            now,
            id="flaky",
            every="1h",
            pipeline={
                "id": "retrying",
                "tasks": [
                    {
                        "id": "shaky",
                        "target": target,
                        "params": {"fail_attempts": 1},
                        "retry": {"max_attempts": 2, "backoff": "1s"},
                    },
                    {"id": "after", "target": target, "after": ["shaky"]},
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend, "flaky", task=None)
        shaky_id = task_run_id(pipeline.id, "shaky")
        waiting = await wait_run(backend.store, shaky_id, lambda r: r.state is RunState.retry_wait)
        assert waiting.retry_at is not None
        await tick(backend, waiting.retry_at + timedelta(seconds=1))
        done = await wait_run(backend.store, pipeline.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    shaky = await backend.store.get_run(shaky_id)
    assert shaky is not None
    assert shaky.attempt == 2
    assert [a.outcome for a in shaky.attempts] == [RunState.failed, RunState.succeeded]


async def test_a_join_of_eight_processes_ending_at_once_fires_exactly_once(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    barrier = tmp_path / "go"
    names = [f"w{i}" for i in range(8)]
    with serve() as sink, serve_workers(names, env=backend.env(), source=APP) as workers:
        await put(
            backend,
            now,
            id="fan",
            every="1h",
            pipeline={
                "id": "fan-in",
                "tasks": [
                    *(
                        {
                            "id": name,
                            "target": {"url": workers[name].url, "worker": True},
                            "params": {"wait_for": str(barrier)},
                        }
                        for name in names
                    ),
                    {"id": "join", "target": {"url": sink.url + "/join"}, "after": names},
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend, "fan", task=None)
        ids = [task_run_id(pipeline.id, name) for name in names]
        # Every upstream task runs, each in its own process, held at the barrier...
        await apoll(
            lambda: backend.store.get_runs(ids),
            lambda runs: [r.state for r in runs] == [RunState.running] * 8,
            what="the eight upstream tasks running",
        )
        # ...then all eight end at the same instant and race to judge the join.
        barrier.touch()
        done = await wait_run(backend.store, pipeline.id, lambda r: r.is_terminal)
        join_requests = [r for r in sink.requests if r.path == "/join"]
    assert done.state is RunState.succeeded
    assert len(join_requests) == 1
    join = await backend.store.get_run(task_run_id(pipeline.id, "join"))
    assert join is not None
    assert join.state is RunState.delivered
    assert len(join.attempts) == 1
    assert len(join.attempts[0].sends) == 1
    assert set(join.upstream) == set(names)


async def test_max_parallel_holds_the_other_tasks_until_a_slot_frees(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    barrier = tmp_path / "go"
    with serve_worker("step", env=backend.env(), source=APP) as step:
        await put(
            backend,
            now,
            id="bounded",
            every="1h",
            pipeline={
                "id": "two-at-a-time",
                "max_parallel": 2,
                "tasks": [
                    {
                        "id": f"t{i}",
                        "target": {"url": step.url, "worker": True},
                        "params": {"wait_for": str(barrier)},
                    }
                    for i in range(4)
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend, "bounded", task=None)
        ids = [task_run_id(pipeline.id, f"t{i}") for i in range(4)]
        runs = await apoll(
            lambda: backend.store.get_runs(ids),
            lambda runs: sum(r.state is RunState.running for r in runs) == 2,
            what="two tasks running",
        )
        assert sorted(r.state.value for r in runs) == ["queued", "queued", "running", "running"]
        barrier.touch()
        done = await wait_run(backend.store, pipeline.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    tasks = await backend.store.get_runs(ids)
    assert {r.state for r in tasks} == {RunState.succeeded}
    # A queued task started only after a slot was handed on by an end.
    ends = sorted(r.ended_at for r in tasks if r.ended_at is not None)
    late = sorted(r.started_at for r in tasks if r.started_at is not None)[2:]
    assert all(start >= ends[0] for start in late)


async def test_the_pipeline_timeout_cancels_a_running_worker(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    with serve_worker("step", env=backend.env(), source=APP) as step:
        await put(
            backend,
            now,
            id="slow",
            every="1h",
            pipeline={
                "id": "too-slow",
                "timeout": "10s",
                "tasks": [
                    {
                        "id": "forever",
                        "target": {"url": step.url, "worker": True},
                        "params": {"wait_for": str(tmp_path / "never")},
                    },
                    {
                        "id": "after",
                        "target": {"url": step.url, "worker": True},
                        "after": ["forever"],
                    },
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend, "slow", task=None)
        forever_id = task_run_id(pipeline.id, "forever")
        await wait_run(backend.store, forever_id, lambda r: r.state is RunState.running)
        # Well past the timeout, which counts from the start the worker stamped.
        await tick(backend, now + timedelta(seconds=40))
        forever = await wait_run(backend.store, forever_id, lambda r: r.is_terminal)
    assert forever.state is RunState.cancelled
    done = await backend.store.get_run(pipeline.id)
    assert done is not None
    assert done.state is RunState.failed
    after = await backend.store.get_run(task_run_id(pipeline.id, "after"))
    assert after is not None
    assert after.state is RunState.cancelled


async def test_submit_from_a_worker_runs_once_per_key(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve() as sink, serve_worker("submitter", env=backend.env(), source=APP) as worker:
        await put(backend, now, id="child", target={"url": sink.url + "/child"}, params={"x": 1})
        await put(
            backend,
            now,
            id="parent",
            every="1h",
            target={"url": worker.url, "worker": True},
            params={"schedule": "child"},
        )
        await tick(backend, now)
        parent = await only_run(backend, "parent")
        done = await wait_run(backend.store, parent.id, lambda r: r.is_terminal)
        await apoll(lambda: sink.received, lambda n: n >= 2, what="the two submitted runs")
        await tick(backend, now + timedelta(minutes=5))  # a sweep adds nothing
        paths = [r.path for r in sink.requests]
    assert done.state is RunState.succeeded
    assert isinstance(done.output, dict)
    assert done.output["first"] == done.output["again"] == caused_run_id("child", done.id, "k")
    assert done.output["keyless"] == caused_run_id("child", done.id, "submit:child:1")
    assert paths == ["/child", "/child"]
    children = await backend.store.list_runs(schedule_id="child")
    assert {r.id for r in children} == {done.output["first"], done.output["keyless"]}
    keyed = next(r for r in children if r.id == done.output["first"])
    assert keyed.params == {"x": 1, "from": done.id}
    assert keyed.trigger is RunTrigger.chained
    assert keyed.cause_run_id == done.id


async def test_a_recorder_killed_between_the_end_and_the_claim_is_healed_by_the_next_tick(
    backend: Backend,
) -> None:
    now = datetime.now(UTC)
    env = backend.env(TEST_EXIT_AFTER_END="1")
    with serve() as sink, serve_worker("step", env=env, source=APP) as step:
        await put_worker_chain(backend, now, step.url, sink.url)
        await tick(backend, now)
        first = await only_run(backend, "first")
        ended = await wait_run(backend.store, first.id, lambda r: r.is_terminal)
        assert ended.state is RunState.succeeded
        assert ended.settle_at is not None  # the process died before settling
        assert await backend.store.list_runs(schedule_id="next") == []
        await tick(backend, now + timedelta(minutes=1))
        await tick(backend, now + timedelta(minutes=2))
        paths = [r.path for r in sink.requests]
    assert paths == ["/next"]
    chained = await only_run(backend, "next")
    assert chained.cause_run_id == first.id
    assert chained.state is RunState.delivered
    healed = await backend.store.get_run(first.id)
    assert healed is not None
    assert healed.settle_at is None


async def test_two_ticks_and_the_worker_race_to_claim_the_successor(
    backend: Backend, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    go = tmp_path / "go"
    env = backend.env(TEST_HOLD_BEFORE_SETTLE=str(go))
    with serve() as sink, serve_worker("step", env=env, source=APP) as step:
        await put_worker_chain(backend, now, step.url, sink.url)
        await tick(backend, now)
        first = await only_run(backend, "first")
        # The end is recorded; the worker holds before settling it.
        await wait_run(backend.store, first.id, lambda r: r.is_terminal)
        go.touch()
        later = now + timedelta(minutes=1)
        await asyncio.gather(tick(backend, later), tick(backend, later))
        await apoll(
            lambda: backend.store.get_run(first.id),
            lambda r: r is not None and r.settle_at is None,
            what="the end settled",
        )
        # A settler that lost the claim clears settle_at at once, while the winner may
        # still be sending: wait for the send, then check that nothing more comes.
        await apoll(lambda: sink.received, lambda n: n >= 1, what="the successor's POST")
        await tick(backend, later + timedelta(minutes=1))
        paths = [r.path for r in sink.requests]
    assert paths == ["/next"]
    chained = await only_run(backend, "next")
    assert chained.id == caused_run_id("next", first.id, "then/0")
