"""The pure lifecycle of orchestration: which ends cause runs, marks, verdicts, waits.

The services that apply these (``firecron/causes.py``, ``firecron/waits.py``) are tested
end to end on both stores; this pins each rule on its own, with time passed in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from _factories import T0
from firecron.core import lifecycle as lc
from firecron.core.events import EventType
from firecron.core.models import ChainOn, ChainStep, PipelineSpec, Target, WaitSpec
from firecron.core.runs import Attempt, Run, RunState, UpstreamEnd

S = RunState
T = lc.RunTimeouts()
MINUTE = timedelta(minutes=1)


def run(state: RunState = S.running, **fields: Any) -> Run:
    base: dict[str, Any] = {
        "id": "job@20270101T000000Z",
        "schedule_id": "job",
        "scheduled_for": T0,
        "fire_at": T0,
        "state": state,
        "target": Target(function="work"),
        "created_at": T0,
        "updated_at": T0,
        "started_at": T0,
        "attempts": [Attempt(number=1, started_at=T0)],
    }
    base.update(fields)
    return Run.model_validate(base)


def apply(before: Run, change: lc.Change) -> Run:
    assert before.state in change.expect
    return before.model_copy(update=change.changes)


PIPELINE = PipelineSpec.model_validate(
    {
        "id": "p",
        "tasks": [
            {"id": "a", "target": {"url": "https://example.com/a"}},
            {"id": "b", "target": {"url": "https://example.com/b"}, "after": ["a"]},
            {"id": "c", "target": {"url": "https://example.com/c"}, "after": ["a"]},
        ],
    }
)


@pytest.mark.parametrize(
    ("on", "state", "chains"),
    [
        (ChainOn.succeeded, S.succeeded, True),
        (ChainOn.succeeded, S.delivered, True),
        (ChainOn.succeeded, S.failed, False),
        (ChainOn.failed, S.lost, True),
        (ChainOn.failed, S.timed_out, True),
        (ChainOn.failed, S.succeeded, False),
        (ChainOn.done, S.failed, True),
        (ChainOn.done, S.delivered, True),
        (ChainOn.done, S.skipped, False),
        (ChainOn.done, S.cancelled, False),
        (ChainOn.done, S.missed, False),
    ],
)
def test_which_ends_start_a_then_step(on: ChainOn, state: RunState, chains: bool) -> None:
    assert lc.chain_matches(on, state) is chains
    stepped = run(then=[ChainStep(schedule="next", on=on)])
    assert lc.causes_runs(stepped, state) is chains


def test_an_end_that_causes_nothing_sets_no_settle_at() -> None:
    plain = run()
    ended = apply(plain, lc.succeed(plain, T0 + MINUTE, {"ok": True}))
    assert ended.settle_at is None
    assert ended.watch_at is None


def test_an_end_that_causes_runs_is_watched_until_settled() -> None:
    task = run(parent_run_id="p@1", task="a", downstream=["b"])
    ended = apply(task, lc.succeed(task, T0 + MINUTE, None))
    assert ended.settle_at == T0 + MINUTE
    assert ended.watch_at == T0 + MINUTE
    settled = apply(ended, lc.settled(ended, T0 + 2 * MINUTE))
    assert settled.settle_at is None
    assert settled.watch_at is None


@pytest.mark.parametrize(
    ("state", "upstream", "outcome", "failed_within"),
    [
        (S.delivered, {}, "succeeded", False),
        (S.succeeded, {"x": UpstreamEnd(outcome="failed", failed_within=True)}, "succeeded", True),
        (S.timed_out, {}, "failed", True),
        (S.cancelled, {}, "failed", True),
        (
            S.skipped,
            {"x": UpstreamEnd(outcome="failed", failed_within=True)},
            "upstream_failed",
            True,
        ),
        (S.skipped, {"x": UpstreamEnd(outcome="skipped")}, "skipped", False),
    ],
)
def test_the_mark_a_task_leaves_below_it(
    state: RunState, upstream: dict[str, UpstreamEnd], outcome: str, failed_within: bool
) -> None:
    mark = lc.upstream_end(run(state, upstream=upstream))
    assert mark.outcome == outcome
    assert mark.state == state.value
    assert mark.failed_within is failed_within


def test_a_pipeline_run_is_decided_once_every_leaf_has_marked_it() -> None:
    pipeline = run(S.running, pipeline_spec=PIPELINE, target=Target(pipeline="p"))
    ok = UpstreamEnd(outcome="succeeded")
    assert lc.pipeline_verdict(pipeline.model_copy(update={"upstream": {"b": ok}})) is None
    both = {"b": ok, "c": UpstreamEnd(outcome="skipped", failed_within=True)}
    assert lc.pipeline_verdict(pipeline.model_copy(update={"upstream": both})) is S.failed
    clean = {"b": ok, "c": UpstreamEnd(outcome="skipped")}
    decided = pipeline.model_copy(update={"upstream": clean})
    assert lc.pipeline_verdict(decided) is S.succeeded
    # A pipeline run that ended with its tasks has nothing to settle; one that ended
    # before them (its timeout) must cancel them.
    assert lc.causes_runs(decided, S.succeeded) is False
    assert lc.causes_runs(pipeline, S.failed) is True
    ended = apply(decided, lc.end_pipeline(decided, T0 + MINUTE, S.succeeded))
    assert ended.state is S.succeeded
    assert ended.settle_at is None
    assert ended.events[-1].type is EventType.run_succeeded


def test_cancel_stops_a_running_attempt_cooperatively_and_ends_the_others_at_once() -> None:
    running = run()
    asked = lc.cancel(running, T0 + MINUTE, T, "pipeline timed out")
    assert asked is not None
    requested = apply(running, asked)
    assert requested.state is S.running
    assert requested.cancel_requested is True
    assert requested.deadline_at == T0 + MINUTE + T.heartbeat_timeout
    # Its end, whatever it returned, is `cancelled`.
    ended = apply(requested, lc.finish(requested, T0 + 2 * MINUTE, T, output={"partial": 1}))
    assert ended.state is S.cancelled
    # Silent past the heartbeat timeout after the request: the watchdog ends it.
    late = T0 + MINUTE + T.heartbeat_timeout
    decision = lc.watch(requested.model_copy(update={"heartbeat_at": T0}), late, T)
    assert decision.change is not None
    assert decision.change.changes["state"] is S.cancelled
    waiting = run(S.waiting, attempts=[])
    done = lc.cancel(waiting, T0, T, "pipeline timed out")
    assert done is not None
    assert apply(waiting, done).state is S.cancelled
    assert lc.cancel(apply(waiting, done), T0, T, "again") is None


def test_a_send_that_ends_its_run_can_be_recorded_without_settle_at() -> None:
    plain = run(
        S.pending, target=Target(url="https://example.com/h"), then=[ChainStep(schedule="n")]
    )
    change = lc.sent(plain, T0, lc.SendOutcome.acknowledged, T)
    assert change.changes["settle_at"] == T0
    recorded = apply(plain, lc.without_settle(plain, change))
    assert recorded.state is S.delivered
    assert recorded.settle_at is None
    assert recorded.watch_at is None


WAIT = WaitSpec(key="orders/{date}", every=timedelta(seconds=30), timeout=timedelta(minutes=10))


def waiting(**fields: Any) -> Run:
    return run(
        S.waiting,
        attempts=[],
        wait=WAIT,
        wait_key="orders/2027-01-01",
        wait_until=T0 + 10 * MINUTE,
        deadline_at=T0 + timedelta(seconds=30),
        **fields,
    )


def test_a_wait_looks_every_every_until_its_timeout() -> None:
    w = waiting()
    looked = apply(w, lc.wait_looked(w, T0 + timedelta(seconds=30), {"rows": 0}))
    assert looked.state is S.waiting
    assert looked.wait_value == {"rows": 0}
    assert looked.deadline_at == T0 + MINUTE
    near_end = apply(w, lc.wait_looked(w, T0 + timedelta(minutes=9, seconds=50), None))
    assert near_end.deadline_at == T0 + 10 * MINUTE  # never past the timeout
    decision = lc.watch(looked, T0 + MINUTE, T)
    assert decision.action is lc.WatchAction.look


def test_a_wait_is_released_timed_out_or_failed() -> None:
    w = waiting()
    released = apply(w, lc.wait_released(w, T0 + MINUTE, {"rows": 3}, T))
    assert released.state is S.pending
    assert released.wait_key is None
    assert released.deadline_at == T0 + MINUTE + T.pending_grace
    timed_out = apply(w, lc.wait_timed_out(w, T0 + 10 * MINUTE, None))
    assert timed_out.state is S.timed_out
    assert timed_out.wait_key is None
    assert (
        timed_out.error
        == "waited 10m on orders/2027-01-01 until value != null; the last value was null"
    )
    assert timed_out.events[-1].type is EventType.run_timed_out
    failed = apply(w, lc.wait_failed(w, T0 + MINUTE, "x", "no such key: rows"))
    assert failed.state is S.failed
    assert failed.error == "wait on orders/2027-01-01 until value != null: no such key: rows"


def test_a_run_left_for_the_dispatcher_is_due_at_once() -> None:
    pending = run(S.pending, deadline_at=T0 + T.pending_grace)
    deferred = apply(pending, lc.deferred(pending, T0 + MINUTE))
    assert deferred.state is S.pending
    assert deferred.watch_at == T0 + MINUTE
