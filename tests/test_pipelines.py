"""Pipelines on both stores with plain HTTP targets: rules, conditions, joins, slots, timeout.

Task targets here are plain endpoints on 127.0.0.1 (a task run ends ``delivered`` when
its POST is answered, ``failed`` on a 400), so a whole pipeline runs inside one tick
call and every rule can be driven exactly. The worker paths (functions-framework
processes, retries, ``ctx.upstream``, a join of 8 processes, a killed recorder) are in
``tests/test_orchestration_workers.py``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from _factories import T0
from _sinks import serve
from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec, StoredSchedule
from firecron.core.runs import Run, RunState, RunTrigger, task_run_id
from firecron.dispatch import Dispatcher, TickSummary
from firecron.settings import Settings
from firecron.store.base import Store


class Clock:
    """A settable clock: the dispatcher stamps its writes with it, ticks plan at it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"allow_private_targets": True, "ack_timeout": timedelta(seconds=2)}
    base.update(overrides)
    return Settings(**base)


async def put_pipeline(store: Store, pipeline: dict[str, Any], **fields: Any) -> StoredSchedule:
    """A schedule due at T0 whose target is ``pipeline`` (snapshotted as the parser does)."""
    spec_pipeline = PipelineSpec.model_validate(pipeline)
    spec = ScheduleSpec.model_validate(
        {
            "id": fields.pop("id", "etl"),
            "every": "1h",
            "target": {"pipeline": spec_pipeline.id},
            "pipeline_spec": spec_pipeline,
            **fields,
        }
    )
    state = planning.initial_state(spec, T0 - timedelta(seconds=1))
    return await store.put_schedule(spec, state, expect_version=None)


async def tick(store: Store, at: datetime, **overrides: Any) -> TickSummary:
    d = Dispatcher(store, settings(**overrides), clock=Clock(at))
    try:
        return await d.tick(at)
    finally:
        await d.aclose()


async def tasks_of(store: Store, pipeline_run: Run) -> dict[str, Run]:
    assert pipeline_run.pipeline_spec is not None
    ids = [task_run_id(pipeline_run.id, t.id) for t in pipeline_run.pipeline_spec.tasks]
    return {r.task or "": r for r in await store.get_runs(ids)}


async def the_pipeline_run(store: Store, schedule_id: str = "etl") -> Run:
    runs = [r for r in await store.list_runs(schedule_id=schedule_id, limit=500) if r.task is None]
    assert len(runs) == 1, runs
    return runs[0]


async def test_a_diamond_runs_in_order_within_one_tick(store: Store) -> None:
    with serve() as sink:
        url = sink.url
        await put_pipeline(
            store,
            {
                "id": "diamond",
                "params": {"region": "eu", "size": 1},
                "tasks": [
                    {"id": "a", "target": {"url": f"{url}/a"}},
                    {"id": "b", "target": {"url": f"{url}/b"}, "params": {"size": 2}},
                    {"id": "join", "target": {"url": f"{url}/join"}, "after": ["a", "b"]},
                    {"id": "load", "target": {"url": f"{url}/load"}, "after": ["join"]},
                ],
            },
            params={"size": 5, "day": "mon"},
        )
        summary = await tick(store, T0)
        paths = [r.path for r in sink.requests]
    assert sorted(paths[:2]) == ["/a", "/b"]
    assert paths[2:] == ["/join", "/load"]
    assert not summary.errors
    pipeline = await the_pipeline_run(store)
    assert pipeline.state is RunState.succeeded
    assert pipeline.pipeline == "diamond"
    assert pipeline.params == {"region": "eu", "size": 5, "day": "mon"}
    assert pipeline.settle_at is None
    assert pipeline.watch_at is None
    tasks = await tasks_of(store, pipeline)
    assert {name: run.state for name, run in tasks.items()} == dict.fromkeys(
        ["a", "b", "join", "load"], RunState.delivered
    )
    for name, run in tasks.items():
        assert run.trigger is RunTrigger.pipeline
        assert run.parent_run_id == pipeline.id
        assert run.cause_run_id == pipeline.id
        assert run.pipeline == "diamond"
        assert run.task == name
        assert run.settle_at is None
        assert run.watch_at is None
    # The task's params over the schedule's over the pipeline's.
    assert tasks["b"].params == {"region": "eu", "size": 2, "day": "mon"}
    assert tasks["a"].params == {"region": "eu", "size": 5, "day": "mon"}
    assert set(tasks["join"].upstream) == {"a", "b"}
    assert set(pipeline.upstream) == {"load"}
    # Nothing is left for a later tick.
    later = await tick(store, T0 + timedelta(minutes=5))
    assert later.fired == 0
    assert later.settled == 0


async def test_every_rule_and_condition_outcome(store: Store) -> None:
    with serve() as ok, serve(status=400) as bad:
        once = {"max_attempts": 1}
        await put_pipeline(
            store,
            {
                "id": "rules",
                "params": {"region": "eu"},
                "tasks": [
                    {"id": "ok", "target": {"url": f"{ok.url}/ok"}},
                    {"id": "bad", "target": {"url": f"{bad.url}/bad"}, "retry": once},
                    {"id": "off", "target": {"url": f"{ok.url}/off"}, "if": "false"},
                    {"id": "all-ok", "target": {"url": f"{ok.url}/1"}, "after": ["ok"]},
                    {"id": "all-bad", "target": {"url": f"{ok.url}/2"}, "after": ["ok", "bad"]},
                    {"id": "all-off", "target": {"url": f"{ok.url}/3"}, "after": ["ok", "off"]},
                    {
                        "id": "none-off",
                        "target": {"url": f"{ok.url}/4"},
                        "after": ["ok", "off"],
                        "when": "none_failed",
                    },
                    {
                        "id": "none-bad",
                        "target": {"url": f"{ok.url}/5"},
                        "after": ["ok", "bad"],
                        "when": "none_failed",
                    },
                    {
                        "id": "any-bad",
                        "target": {"url": f"{ok.url}/6"},
                        "after": ["ok", "bad"],
                        "when": "any_failed",
                    },
                    {
                        "id": "any-off",
                        "target": {"url": f"{ok.url}/7"},
                        "after": ["ok", "off"],
                        "when": "any_failed",
                    },
                    {
                        "id": "done",
                        "target": {"url": f"{ok.url}/8"},
                        "after": ["bad", "off"],
                        "when": "all_done",
                    },
                    {
                        "id": "if-true",
                        "target": {"url": f"{ok.url}/9"},
                        "after": ["ok"],
                        "if": 'params.region == "eu" && tasks["ok"].state == "delivered"',
                    },
                    {
                        "id": "if-false",
                        "target": {"url": f"{ok.url}/10"},
                        "after": ["ok"],
                        "if": 'params.region == "us"',
                    },
                    {
                        "id": "if-error",
                        "target": {"url": f"{ok.url}/11"},
                        "after": ["ok"],
                        "if": 'tasks["ok"].output.rows > 1',
                    },
                    {
                        # Below a task skipped because of a failure: the failure counts.
                        "id": "below",
                        "target": {"url": f"{ok.url}/12"},
                        "after": ["all-bad"],
                        "when": "any_failed",
                    },
                ],
            },
        )
        summary = await tick(store, T0)
    assert not summary.errors, summary.errors
    pipeline = await the_pipeline_run(store, "etl")
    tasks = await tasks_of(store, pipeline)
    states = {name: run.state.value for name, run in tasks.items()}
    assert states == {
        "ok": "delivered",
        "bad": "failed",
        "off": "skipped",
        "all-ok": "delivered",
        "all-bad": "skipped",
        "all-off": "skipped",
        "none-off": "delivered",
        "none-bad": "skipped",
        "any-bad": "delivered",
        "any-off": "skipped",
        "done": "delivered",
        "if-true": "delivered",
        "if-false": "skipped",
        "if-error": "failed",
        "below": "delivered",
    }
    assert tasks["off"].error is not None
    assert "false" in tasks["off"].error
    assert tasks["all-bad"].error is not None
    assert "bad" in tasks["all-bad"].error
    assert tasks["if-error"].error is not None
    assert tasks["if-error"].error.startswith("if: ")
    assert len(tasks["if-error"].attempts) == 0  # a condition error is not retried
    # A task failed (an error path ran too): the pipeline run fails, naming them.
    assert pipeline.state is RunState.failed
    assert pipeline.error == "tasks failed: bad, if-error"
    assert all(run.settle_at is None for run in tasks.values())


async def test_max_parallel_bounds_the_tasks_in_flight(store: Store) -> None:
    with serve(hold=True) as sink:
        await put_pipeline(
            store,
            {
                "id": "bounded",
                "max_parallel": 2,
                "tasks": [{"id": f"t{i}", "target": {"url": f"{sink.url}/{i}"}} for i in range(6)],
            },
        )
        # A held request is delivered once its acknowledgement wait ends: a short wait
        # keeps each task in flight for a moment, so the bound is what limits them.
        summary = await tick(store, T0, ack_timeout=timedelta(seconds=0.3))
        peak, received = sink.peak_open, sink.received
    assert not summary.errors, summary.errors
    assert received == 6
    assert peak == 2
    pipeline = await the_pipeline_run(store)
    assert pipeline.state is RunState.succeeded
    assert pipeline.slots == []
    assert pipeline.ready == []


async def test_the_pipeline_timeout_cancels_unfinished_tasks_and_fails_the_run(
    store: Store,
) -> None:
    with serve() as sink:
        await put_pipeline(
            store,
            {
                "id": "slow",
                "timeout": "1m",
                "tasks": [
                    # A worker target that never starts: its run stays dispatched.
                    {"id": "stuck", "target": {"url": f"{sink.url}/stuck", "worker": True}},
                    {"id": "next", "target": {"url": f"{sink.url}/next"}, "after": ["stuck"]},
                ],
            },
        )
        await tick(store, T0)
        pipeline = await the_pipeline_run(store)
        assert pipeline.state is RunState.running
        early = await tick(store, T0 + timedelta(seconds=30))
        assert early.events.get("run.failed", 0) == 0
        late = await tick(store, T0 + timedelta(seconds=61))
        assert not late.errors, late.errors
        assert [r.path for r in sink.requests] == ["/stuck"]
    pipeline = await the_pipeline_run(store)
    assert pipeline.state is RunState.failed
    assert pipeline.error is not None
    assert "timed out after" in pipeline.error
    tasks = await tasks_of(store, pipeline)
    assert tasks["stuck"].state is RunState.cancelled
    assert tasks["next"].state is RunState.cancelled
    assert all(run.settle_at is None for run in [pipeline, *tasks.values()])


async def test_an_error_path_notifies_through_a_sink(store: Store) -> None:
    with serve(status=400) as bad, serve() as hooks:
        slack = {"type": "webhook", "url": hooks.url + "/slack", "format": "slack"}
        await put_pipeline(
            store,
            {
                "id": "alerting",
                "tasks": [
                    {
                        "id": "load",
                        "target": {"url": f"{bad.url}/load"},
                        "retry": {"max_attempts": 1},
                    },
                    {
                        "id": "alert",
                        "notify": {
                            "sink": "ops",
                            "text": "load failed in {pipeline_run_id} <{param.who}>",
                            "sink_config": slack,
                        },
                        "after": ["load"],
                        "when": "any_failed",
                    },
                ],
            },
            params={"who": "<!channel>"},
        )
        summary = await tick(store, T0)
        bodies = [r.body for r in hooks.requests]
    assert not summary.errors, summary.errors
    pipeline = await the_pipeline_run(store)
    assert len(bodies) == 1
    # The message's own markup stays; what comes from the run is escaped for Slack.
    assert json.loads(bodies[0]) == {"text": f"load failed in {pipeline.id} <&lt;!channel&gt;>"}
    tasks = await tasks_of(store, pipeline)
    assert tasks["alert"].state is RunState.succeeded
    assert tasks["load"].state is RunState.failed
    assert pipeline.state is RunState.failed
