"""The pure run lifecycle: transitions, retries with backoff, and every watchdog rule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from _factories import T0
from firecron.core import lifecycle as lc
from firecron.core.events import EventType
from firecron.core.models import RetryPolicy, Target
from firecron.core.runs import (
    TERMINAL_STATES,
    TRANSITIONS,
    Attempt,
    Run,
    RunState,
    backoff_delay,
    can_transition,
)

S = RunState
T = lc.RunTimeouts()
WORKER = Target(function="work")
PLAIN = Target(url="https://example.com/h")


def run(state: RunState = S.pending, **fields: Any) -> Run:
    base: dict[str, Any] = {
        "id": "job@20270101T000000Z",
        "schedule_id": "job",
        "scheduled_for": T0,
        "fire_at": T0,
        "state": state,
        "target": WORKER,
        "created_at": T0,
        "updated_at": T0,
        "attempts": [Attempt(number=1)],
        "watch_at": None if state in TERMINAL_STATES else T0 + T.pending_grace,
    }
    base.update(fields)
    base.setdefault("deadline_at", base["watch_at"])  # no events pending: the two coincide
    return Run.model_validate(base)


def apply(r: Run, change: lc.Change) -> Run:
    assert r.state in change.expect
    new = r.model_copy(update=change.changes)
    assert new.state == r.state or can_transition(r.state, new.state)
    return Run.model_validate(new.model_dump())


def test_transition_table_is_closed_and_terminals_are_final() -> None:
    assert set(TRANSITIONS) == set(RunState)
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
    assert can_transition(S.dispatched, S.running)
    assert not can_transition(S.succeeded, S.running)


def test_sent_worker_is_dispatched_and_watched_for_start() -> None:
    r = apply(run(), lc.sent(run(), T0, lc.SendOutcome.acknowledged, T, status_code=202))
    assert r.state is S.dispatched
    assert r.watch_at == T0 + T.start_timeout
    assert r.attempts[-1].acknowledged is True
    assert r.attempts[-1].status_code == 202


def test_sent_plain_target_is_delivered_and_terminal() -> None:
    base = run(target=PLAIN)
    r = apply(base, lc.sent(base, T0, lc.SendOutcome.unacknowledged, T))
    assert r.state is S.delivered
    assert r.watch_at is None
    assert r.attempts[-1].acknowledged is False


def test_retryable_send_failure_waits_with_backoff_then_fails() -> None:
    policy = RetryPolicy(max_attempts=2, backoff=timedelta(seconds=10))
    base = run(retry=policy)
    change = lc.sent(base, T0, lc.SendOutcome.retryable, T, error="connection refused")
    assert change.event is EventType.run_retrying
    r = apply(base, change)
    assert r.state is S.retry_wait
    assert r.retry_at is not None
    assert T0 <= r.retry_at <= T0 + timedelta(seconds=10)
    assert r.watch_at == r.retry_at
    # The watchdog starts attempt 2 once retry_at has passed.
    assert lc.watch(r, r.retry_at - timedelta(milliseconds=1), T).change is None
    decision = lc.watch(r, r.retry_at, T)
    assert decision.action is lc.WatchAction.fire
    r2 = apply(r, decision.change)  # type: ignore[arg-type]
    assert (r2.state, r2.attempt, [a.number for a in r2.attempts]) == (S.pending, 2, [1, 2])
    last = lc.sent(r2, T0, lc.SendOutcome.retryable, T, error="connection refused")
    assert last.event is EventType.dispatch_failed
    assert apply(r2, last).state is S.failed


def test_permanent_send_failure_fails_at_once() -> None:
    change = lc.sent(run(), T0, lc.SendOutcome.permanent, T, status_code=404, error="HTTP 404")
    r = apply(run(), change)
    assert r.state is S.failed
    assert r.error == "HTTP 404"
    assert r.ended_at == T0


def test_backoff_is_full_jitter_capped_and_deterministic() -> None:
    policy = RetryPolicy(
        backoff=timedelta(seconds=10), max_backoff=timedelta(seconds=40), multiplier=2
    )
    for attempt, ceiling in [(2, 10), (3, 20), (4, 40), (9, 40)]:
        delays = {backoff_delay(f"r{i}", attempt, policy) for i in range(200)}
        assert all(timedelta(0) <= d <= timedelta(seconds=ceiling) for d in delays)
        assert max(delays) > timedelta(seconds=ceiling * 0.8)  # spread over the whole range
    assert backoff_delay("x", 3, policy) == backoff_delay("x", 3, policy)


def test_start_heartbeat_succeed() -> None:
    base = run(S.dispatched, expected_duration=timedelta(seconds=30), timeout=timedelta(minutes=5))
    r = apply(base, lc.start(base, T0, T))
    assert r.state is S.running
    assert r.watch_at == T0 + timedelta(seconds=30)  # the SLA comes before heartbeat expiry
    r = apply(r, lc.heartbeat(r, T0 + timedelta(seconds=10), T))
    assert r.heartbeat_at == T0 + timedelta(seconds=10)
    done = apply(r, lc.succeed(r, T0 + timedelta(seconds=20), {"ok": True}))
    assert (done.state, done.output, done.watch_at) == (S.succeeded, {"ok": True}, None)
    assert done.attempts[-1].outcome is S.succeeded


def test_watchdog_resends_a_stale_pending_run_as_the_same_attempt() -> None:
    # The dispatcher died (or its write failed) around the POST: the outcome is unknown.
    base = run(S.pending, target=PLAIN)
    assert lc.watch(base, T0 + T.pending_grace - timedelta(seconds=1), T).change is None
    at = T0 + T.pending_grace
    decision = lc.watch(base, at, T)
    assert decision.action is lc.WatchAction.fire
    assert decision.change is not None
    assert decision.change.event is None
    r = apply(base, decision.change)
    # Same attempt (so the same key and body), the unknown send recorded, watched again.
    assert (r.state, r.attempt, len(r.attempts)) == (S.pending, 1, 1)
    assert [(x.at, x.outcome) for x in r.attempts[0].sends] == [(at, "unknown")]
    assert r.watch_at == at + T.pending_grace
    # The re-send's outcome is recorded beside it, on the same attempt.
    later = at + timedelta(seconds=1)
    done = apply(r, lc.sent(r, later, lc.SendOutcome.acknowledged, T, status_code=200))
    assert (done.state, done.attempt) == (S.delivered, 1)
    assert [(x.at, x.outcome, x.status_code) for x in done.attempts[0].sends] == [
        (at, "unknown", None),
        (later, "acknowledged", 200),
    ]


def test_blind_resends_of_one_attempt_are_bounded() -> None:
    r = run(S.pending, retry=RetryPolicy(max_attempts=5))
    now = T0
    for _ in range(T.blind_sends - 1):
        now += T.pending_grace
        decision = lc.watch(r, now, T)
        assert decision.action is lc.WatchAction.fire
        r = apply(r, decision.change)  # type: ignore[arg-type]
        assert (r.state, r.attempt) == (S.pending, 1)
    now += T.pending_grace
    final = lc.watch(r, now, T)
    assert final.action is lc.WatchAction.none
    assert final.change is not None
    assert final.change.event is EventType.run_lost
    lost = apply(r, final.change)
    # Lost at once (no retry: a target that kills the dispatcher would kill it again).
    assert (lost.state, lost.attempt, lost.watch_at) == (S.lost, 1, None)
    assert [x.outcome for x in lost.attempts[0].sends] == ["unknown"] * T.blind_sends
    assert lost.error == (
        f"the outcome of {T.blind_sends} sends of attempt 1 was never recorded: "
        "the dispatcher stopped, or could not write, after each"
    )


def test_attempt_grows_only_after_a_known_failure() -> None:
    base = run(S.pending, retry=RetryPolicy(max_attempts=3, backoff=timedelta(seconds=1)))
    failed = apply(base, lc.sent(base, T0, lc.SendOutcome.retryable, T, error="HTTP 503"))
    assert failed.state is S.retry_wait
    [first] = failed.attempts
    assert [(x.outcome, x.error) for x in first.sends] == [("retryable", "HTTP 503")]
    assert failed.retry_at is not None
    decision = lc.watch(failed, failed.retry_at, T)
    second = apply(failed, decision.change)  # type: ignore[arg-type]
    assert (second.state, second.attempt) == (S.pending, 2)
    assert second.attempts[-1].sends == []


def test_watchdog_dispatched_without_start_is_lost_then_retried() -> None:
    base = run(S.dispatched, dispatched_at=T0, watch_at=T0 + T.start_timeout)
    decision = lc.watch(base, T0 + T.start_timeout, T)
    assert decision.change is not None
    assert decision.change.event is EventType.run_retrying
    r = apply(base, decision.change)
    assert r.state is S.retry_wait
    assert r.attempts[-1].outcome is S.lost


def test_watchdog_running_rules() -> None:
    started = run(
        S.running,
        started_at=T0,
        heartbeat_at=T0,
        expected_duration=timedelta(seconds=30),
        timeout=timedelta(minutes=10),
        watch_at=T0 + timedelta(seconds=30),
        retry=RetryPolicy(max_attempts=1),
    )
    # SLA: recorded once, with a new deadline.
    sla = lc.watch(started, T0 + timedelta(seconds=30), T)
    assert sla.change is not None
    assert sla.change.event is EventType.run_sla_breached
    breached = apply(started, sla.change)
    assert breached.state is S.running
    assert breached.sla_breached_at == T0 + timedelta(seconds=30)
    assert breached.watch_at == T0 + T.heartbeat_timeout
    # Heartbeats stopped: lost (no attempts left).
    lost = lc.watch(breached, T0 + T.heartbeat_timeout, T)
    assert lost.change is not None
    assert lost.change.event is EventType.run_lost
    assert apply(breached, lost.change).state is S.lost
    # Past timeout: the worker is asked to stop (the timeout itself is covered below).
    alive = breached.model_copy(
        update={
            "heartbeat_at": T0 + timedelta(minutes=10),
            "watch_at": T0 + timedelta(minutes=10),
            "deadline_at": T0 + timedelta(minutes=10),
        }
    )
    timed = lc.watch(alive, T0 + timedelta(minutes=10), T)
    assert timed.change is not None
    r = apply(alive, timed.change)
    assert (r.state, r.cancel_requested) == (S.running, True)


def timed_out_run(**fields: Any) -> tuple[Run, Any]:
    """A running attempt past its 1-minute timeout, heartbeating, after the watchdog's pass."""
    timeout = timedelta(minutes=1)
    alive = run(
        S.running,
        started_at=T0,
        heartbeat_at=T0 + timeout - timedelta(seconds=5),
        timeout=timeout,
        watch_at=T0 + timeout,
        **fields,
    )
    at = T0 + timeout
    decision = lc.watch(alive, at, T)
    assert decision.change is not None
    return apply(alive, decision.change), at


def test_timeout_requests_cancellation_and_waits_for_the_attempt_to_stop() -> None:
    r, at = timed_out_run(retry=RetryPolicy(max_attempts=2))
    # Still running: no retry is scheduled while the old attempt may still run.
    assert (r.state, r.cancel_requested, r.timed_out_at) == (S.running, True, at)
    assert r.retry_at is None
    assert r.watch_at == at + T.heartbeat_timeout
    # Heartbeats of the cancelled attempt go on but never extend its deadline.
    beat = apply(r, lc.heartbeat(r, at + timedelta(seconds=30), T))
    assert beat.watch_at == at + T.heartbeat_timeout
    # A watchdog pass before that deadline changes nothing of the state.
    early = lc.watch(beat, at + T.heartbeat_timeout - timedelta(seconds=1), T)
    assert early.change is None or early.change.new_state is None
    # The worker records its end after honouring the cancel: timed out, then retried.
    end = at + timedelta(seconds=31)
    change = lc.finish(beat, end, T, output={"cancelled": True})
    assert change.event is EventType.run_retrying
    done = apply(beat, change)
    assert done.state is S.retry_wait
    assert done.attempts[-1].outcome is S.timed_out
    assert done.attempts[-1].ended_at == end
    assert done.error == "timed out after 1m"
    assert done.retry_at is not None
    assert done.retry_at >= end
    # The next attempt starts clean.
    nxt = apply(done, lc.watch(done, done.retry_at, T).change)  # type: ignore[arg-type]
    assert (nxt.attempt, nxt.cancel_requested, nxt.timed_out_at) == (2, False, None)


def test_timeout_ends_the_attempt_once_it_missed_its_heartbeats() -> None:
    r, at = timed_out_run(retry=RetryPolicy(max_attempts=1))
    decision = lc.watch(r, at + T.heartbeat_timeout, T)
    assert decision.change is not None
    assert decision.change.event is EventType.run_timed_out
    done = apply(r, decision.change)
    assert done.state is S.timed_out
    assert done.error is not None
    assert "did not stop within" in done.error
    # A worker end that comes later finds the run ended: its compare-and-set fails.
    assert done.state not in lc.finish(r, at + T.heartbeat_timeout, T).expect


def test_timeout_of_a_silent_attempt_ends_it_at_once() -> None:
    timeout = timedelta(minutes=5)
    silent = run(S.running, started_at=T0, heartbeat_at=T0, timeout=timeout, watch_at=T0 + timeout)
    decision = lc.watch(silent, T0 + timeout, T)
    assert decision.change is not None
    assert apply(silent, decision.change).state is S.retry_wait


def test_finish_without_a_timeout() -> None:
    r = run(S.running, started_at=T0, heartbeat_at=T0)
    assert apply(r, lc.finish(r, T0, T, output=[1])).state is S.succeeded
    failed = apply(r, lc.finish(r, T0, T, error="boom"))
    assert (failed.state, failed.error) == (S.retry_wait, "boom")
    assert apply(r, lc.finish(r, T0, T, error="bad output", retry=False)).state is S.failed


def test_watchdog_queued_waits_for_its_blocker() -> None:
    q = run(S.queued, blocked_by="job@prev", watch_at=T0, attempts=[])
    assert lc.watch(q, T0, T).action is lc.WatchAction.check_blocker
    later = lc.watch(q, T0, T, blocker_ended=False)
    assert later.change is not None
    assert later.change.changes["watch_at"] == T0 + T.queue_recheck
    go = lc.watch(q, T0, T, blocker_ended=True)
    assert go.action is lc.WatchAction.fire
    r = apply(q, go.change)  # type: ignore[arg-type]
    assert (r.state, r.attempt) == (S.pending, 1)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_watchdog_clears_stray_deadlines_on_terminal_runs(state: RunState) -> None:
    decision = lc.watch(run(state, watch_at=T0), T0, T)
    assert decision.change is not None
    assert decision.change.changes["watch_at"] is None


def test_terminal_transitions_set_expiry_from_retention() -> None:
    kept = run(S.running, started_at=T0, heartbeat_at=T0, retention=timedelta(days=7))
    done = apply(kept, lc.succeed(kept, T0, None))
    assert done.expire_at == T0 + timedelta(days=7)
    forever = run(S.running, started_at=T0, heartbeat_at=T0)
    assert apply(forever, lc.succeed(forever, T0, None)).expire_at is None
    plain = run(target=PLAIN, retention=timedelta(days=1))
    assert apply(
        plain, lc.sent(plain, T0, lc.SendOutcome.acknowledged, T)
    ).expire_at == T0 + timedelta(days=1)
    retrying = apply(plain, lc.sent(plain, T0, lc.SendOutcome.retryable, T))
    assert retrying.expire_at is None


def test_pending_grace_outlasts_a_tick_and_its_ack_wait() -> None:
    short = lc.RunTimeouts.for_tick(timedelta(seconds=50), timedelta(seconds=5))
    assert short.pending_grace == timedelta(minutes=2)  # the default already covers it
    long = lc.RunTimeouts.for_tick(timedelta(minutes=5), timedelta(seconds=30))
    assert long.pending_grace == timedelta(minutes=6)
    assert long.heartbeat_timeout == lc.RunTimeouts().heartbeat_timeout


def test_change_events_are_event_types_and_attempt_failed_needs_no_timeouts() -> None:
    """``Change.event`` is an :class:`EventType`; the retry wait comes from the run's policy."""
    base = run(S.running, retry=RetryPolicy(max_attempts=1))
    change = lc.attempt_failed(base, T0, S.lost, "gone")
    assert change.event is EventType.run_lost
    assert [e.type for e in apply(base, change).events] == [EventType.run_lost]


def test_planning_defaults_to_the_watchdog_pending_grace() -> None:
    """A run planned without an explicit grace is watched after ``RunTimeouts().pending_grace``."""
    from _factories import make_spec
    from firecron.core.planning import Occurrence, build_run

    new = build_run(make_spec("job"), "job@1", Occurrence(T0, T0), T0)
    assert new.deadline_at == T0 + lc.RunTimeouts().pending_grace
