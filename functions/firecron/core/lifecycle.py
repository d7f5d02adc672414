"""The run lifecycle as pure functions: every transition and every watchdog rule.

Each function takes a run as read and ``now`` and returns a :class:`Change`: the states
the run must still be in, and the field changes to apply with ``Store.update_run``.
The dispatcher, the watchdog and the worker SDK all go through these, so the rules
live in one place and the store applies them by compare-and-set.

Every change goes through :func:`_finalize`, which attaches the change's event (if
any) to the run's ``events`` with a pending delivery per routed sink, and derives
``watch_at`` = the earlier of ``deadline_at`` and the next pending delivery.

Deadlines (``deadline_at``) per state:
- ``pending``: ``pending_grace`` after it became pending (or was last sent); then the
  watchdog records the send as ``unknown`` and sends the SAME attempt again (the
  dispatcher died, or its write failed, around the POST), at most
  ``RunTimeouts.blind_sends`` times before the run ends ``lost``.
- ``dispatched``: ``start_timeout`` after the send; then the attempt is lost.
- ``running``: the earliest of the lease's end (the latest renewal, ``heartbeat_at``,
  plus ``heartbeat_timeout``), the SLA (until breached once) and ``timeout``; once
  past ``timeout`` (``timed_out_at`` set, cancel requested), ``heartbeat_timeout``
  after the cancel request. The attempt then ends ``timed_out``
  when the worker records its end, or at that deadline, and only then is it retried:
  two attempts of one run never run at once while their workers honour cancellation.
- ``retry_wait``: ``retry_at``.
- ``queued``: every ``queue_recheck`` until its blocker has ended.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from firecron.core.durations import format_duration
from firecron.core.events import (
    DELIVERY_LEASE,
    Delivery,
    Event,
    EventType,
    LogSink,
    Route,
    next_delivery_at,
)
from firecron.core.models import ChainOn, JsonValue, WaitSpec
from firecron.core.render import rfc3339
from firecron.core.runs import (
    FAILED_STATES,
    SUCCEEDED_STATES,
    Attempt,
    Run,
    RunState,
    Send,
    UpstreamEnd,
    backoff_delay,
)

__all__ = [
    "Change",
    "RunTimeouts",
    "SendOutcome",
    "WatchAction",
    "WatchDecision",
    "attempt_failed",
    "begin_wait",
    "cancel",
    "causes_runs",
    "chain_matches",
    "deferred",
    "derive_watch",
    "end_pipeline",
    "fail_task",
    "finish",
    "heartbeat",
    "make_event",
    "next_attempt",
    "pipeline_verdict",
    "release_task",
    "resend",
    "sent",
    "settled",
    "skip_task",
    "start",
    "start_pipeline",
    "succeed",
    "upstream_end",
    "wait_failed",
    "wait_looked",
    "wait_released",
    "wait_timed_out",
    "watch",
    "without_settle",
]

_S = RunState

_END_EVENTS = {
    _S.failed: EventType.run_failed,
    _S.lost: EventType.run_lost,
    _S.timed_out: EventType.run_timed_out,
}
"""The event of an attempt that ends its run in each outcome :func:`attempt_failed` takes."""


@dataclass(frozen=True)
class RunTimeouts:
    """Deadlines the watchdog enforces (the same for every schedule)."""

    pending_grace: timedelta = timedelta(minutes=2)
    """How long a claimed run may stay unsent; must exceed a tick's budget plus ``ack_timeout``."""
    start_timeout: timedelta = timedelta(minutes=2)
    """How long a worker has to start a dispatched run."""
    heartbeat_timeout: timedelta = timedelta(minutes=5)
    """The lease of a running attempt: once this has passed since its latest renewal
    (``heartbeat_at``, or its start) the attempt is lost. A schedule's
    ``heartbeat_timeout`` overrides it. The worker SDK renews the lease only when at
    most two of its check-in intervals are left (a fifth of the lease each by
    default), so a dead worker is declared lost at most this plus one tick after its
    last renewal (Airflow's zombie threshold is 300 s too)."""
    queue_recheck: timedelta = timedelta(seconds=15)
    """How often a queued run's blocker is looked at."""
    blind_sends: int = 3
    """How many sends of one attempt may go unrecorded (outcome ``unknown``) before the
    run ends ``lost``: a target that kills the dispatcher every time cannot loop forever.
    Independent of the retry policy: these are the dispatcher's failures, not the target's."""

    @classmethod
    def for_tick(cls, tick_budget: timedelta, ack_timeout: timedelta) -> RunTimeouts:
        """Deadlines consistent with a tick's budget and acknowledgement wait.

        A claimed run is re-fired only once no tick could still be sending it: the
        grace exceeds the tick budget plus the acknowledgement wait (plus slack).
        """
        floor = tick_budget + ack_timeout + timedelta(seconds=30)
        return cls(pending_grace=max(cls().pending_grace, floor))


@dataclass(frozen=True)
class Change:
    """A compare-and-set to apply: ``update_run(run.id, expect, changes)``."""

    expect: tuple[RunState, ...]
    changes: dict[str, Any]
    event: EventType | None = None
    """The event this change is (``run.lost``, ``run.sla_breached``...), if any."""
    finalized: bool = False
    """Set by :func:`_finalize`: the event is attached and ``watch_at`` derived."""

    @property
    def new_state(self) -> RunState | None:
        """The state the change moves to, if it changes state."""
        state = self.changes.get("state")
        return state if isinstance(state, RunState) else None


class SendOutcome(StrEnum):
    """How a dispatch POST ended, as judged by the transport."""

    acknowledged = "acknowledged"
    """A 2xx arrived within ``ack_timeout``."""
    unacknowledged = "unacknowledged"
    """The request was fully written but no response came within ``ack_timeout``."""
    retryable = "retryable"
    """Connection error, 408, 429 or 5xx: try again later."""
    permanent = "permanent"
    """Any other 4xx, or a refused target: retrying cannot help."""


def derive_watch(
    deadline: datetime | None, events: list[Event], settle_at: datetime | None = None
) -> datetime | None:
    """``watch_at``: the earliest of the state deadline, the next pending delivery and,
    for an ended run whose successors are not yet claimed, ``settle_at``."""
    times = [t for t in (deadline, next_delivery_at(events), settle_at) if t is not None]
    return min(times, default=None)


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds(), 3)


def make_event(run: Run, event_type: EventType, now: datetime, routes: list[Route]) -> Event:
    """The event ``event_type`` for ``run`` (as it is after the change), routed by ``routes``.

    The id is stable per run, type and attempt.
    """
    suffix = (
        ""
        if event_type
        in (
            EventType.run_sla_breached,
            EventType.run_skipped,
            EventType.run_missed,
            EventType.run_handoff,
        )
        else f"/{run.attempt}"
    )
    duration = (run.ended_at or now) - run.started_at if run.started_at else None
    data = {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": rfc3339(run.scheduled_for),
        "attempt": run.attempt,
        "max_attempts": run.retry.max_attempts,
        "state": run.state.value,
        "trigger": run.trigger.value,
        "duration_s": _seconds(duration),
        "expected_duration_s": _seconds(run.expected_duration),
        "lateness_s": _seconds(run.started_at - run.scheduled_for) if run.started_at else None,
        "error": run.error,
        "labels": dict(run.labels),
        "params": dict(run.params),
    }
    # Orchestration fields, only where set: older consumers see the data they knew.
    for key in ("pipeline", "task", "parent_run_id", "cause_run_id", "generation"):
        value = getattr(run, key)
        if value is not None:
            data[key] = value
    # The log sink is written in-process by whoever records the event: nothing to track.
    deliveries = [
        Delivery(sink=r.sink_name, next_at=now + DELIVERY_LEASE)
        for r in routes
        if r.wants(event_type) and not isinstance(r.sink, LogSink)
    ]
    return Event(
        id=f"{run.id}/{event_type.value}{suffix}",
        type=event_type,
        source=f"//firecron/schedules/{run.schedule_id}",
        subject=run.id,
        time=now,
        data=data,
        deliveries=deliveries,
    )


def _finalize(run: Run, change: Change, now: datetime) -> Change:
    """Attach the change's event (once) and derive ``watch_at``; idempotent."""
    if change.finalized:
        return change
    changes = dict(change.changes)
    events = list(run.events)
    if change.event is not None:
        after = run.model_copy(update=changes)
        event = make_event(after, change.event, now, run.notify)
        if all(e.id != event.id for e in events):
            events.append(event)
            changes["events"] = events
    changes["watch_at"] = derive_watch(
        changes.get("deadline_at", run.deadline_at),
        events,
        changes.get("settle_at", run.settle_at),
    )
    return replace(change, changes=changes, finalized=True)


_F = TypeVar("_F", bound=Callable[..., Change])


def _finalized(fn: _F) -> _F:
    """Decorate a transition ``fn(run, now, ...) -> Change`` so its result is finalized."""

    @functools.wraps(fn)
    def wrapper(run: Run, now: datetime, *args: Any, **kwargs: Any) -> Change:
        return _finalize(run, fn(run, now, *args, **kwargs), now)

    return wrapper  # type: ignore[return-value]


def _shown(duration: timedelta | None) -> str:
    """A duration as the user wrote it (``90s``), for an error line."""
    return "?" if duration is None else format_duration(duration)


def _hb(run: Run, t: RunTimeouts) -> timedelta:
    """The heartbeat timeout of ``run``: its schedule's, or the watchdog's default."""
    return run.heartbeat_timeout if run.heartbeat_timeout is not None else t.heartbeat_timeout


def causes_runs(run: Run, state: RunState) -> bool:
    """True when ``run`` ending in ``state`` causes other runs, which its recorder then
    claims (``settle_at`` marks the end until they are): a task run (its downstream
    tasks, its pipeline), a pipeline run ending before its tasks did (they are
    cancelled), or a run with a ``then`` step for this end. Skipped, missed and cancelled runs chain
    nothing. Decided from the run alone, so a run that causes nothing costs no read."""
    if run.parent_run_id is not None or run.generation is not None:
        return True  # a task's downstream, a generation's successor
    if run.is_pipeline_run and pipeline_verdict(run) is None:
        return True  # it ends before its tasks did (its timeout): they are cancelled
    return any(chain_matches(step.on, state) for step in run.then)


def chain_matches(on: ChainOn, state: RunState) -> bool:
    """True when a ``then`` step with ``on`` starts after a run ended in ``state``."""
    if state in SUCCEEDED_STATES:
        return on is not ChainOn.failed
    if state in (_S.failed, _S.timed_out, _S.lost):
        return on is not ChainOn.succeeded
    return False


def _ended(run: Run, now: datetime, state: RunState) -> dict[str, Any]:
    """The fields every terminal transition sets: end time, no deadline, expiry, and
    ``settle_at`` when the end causes other runs (:func:`causes_runs`)."""
    expire_at = now + run.retention if run.retention is not None else None
    settle_at = now if causes_runs(run, state) else None
    return {
        "state": state,
        "ended_at": now,
        "deadline_at": None,
        "expire_at": expire_at,
        "settle_at": settle_at,
    }


def _attempts(run: Run, **fields: Any) -> list[Attempt]:
    """The attempt list with the current attempt's fields updated (created if missing)."""
    attempts = [a.model_copy() for a in run.attempts]
    if not attempts or attempts[-1].number != run.attempt:
        attempts.append(Attempt(number=run.attempt))
    attempts[-1] = attempts[-1].model_copy(update=fields)
    return attempts


def _with_send(attempts: list[Attempt], send: Send) -> list[Attempt]:
    """``attempts`` with ``send`` appended to the last (current) attempt's sends."""
    last = attempts[-1]
    return [*attempts[:-1], last.model_copy(update={"sends": [*last.sends, send]})]


def _running_deadline(run: Run, now: datetime, heartbeat_at: datetime, t: RunTimeouts) -> datetime:
    stop_requested = run.timed_out_at or run.cancelled_at
    if stop_requested is not None:
        # Cancel requested: renewals no longer extend anything; the attempt has one
        # heartbeat timeout to stop before the watchdog gives up on it.
        return stop_requested + _hb(run, t)
    started = run.started_at or now
    deadlines = [heartbeat_at + _hb(run, t)]
    if run.expected_duration is not None and run.sla_breached_at is None:
        deadlines.append(started + run.expected_duration)
    if run.timeout is not None:
        deadlines.append(started + run.timeout)
    return min(deadlines)


@_finalized
def sent(
    run: Run,
    now: datetime,
    outcome: SendOutcome,
    t: RunTimeouts,
    *,
    status_code: int | None = None,
    error: str | None = None,
) -> Change:
    """Record the result of sending the current attempt of a ``pending`` run.

    A worker target moves to ``dispatched`` (watched for its start); a plain target is
    ``delivered`` and done. Delivered-but-unacknowledged counts as sent. A retryable
    failure goes to :func:`attempt_failed`; a permanent one fails the run at once.
    Every outcome is appended to the current attempt's ``sends``.
    """
    send = Send(at=now, outcome=outcome.value, status_code=status_code, error=error)
    if outcome in (SendOutcome.acknowledged, SendOutcome.unacknowledged):
        acked = outcome is SendOutcome.acknowledged
        attempts = _attempts(run, dispatched_at=now, acknowledged=acked, status_code=status_code)
        attempts = _with_send(attempts, send)
        if run.target.is_worker:
            changes: dict[str, Any] = {
                "state": _S.dispatched,
                "dispatched_at": now,
                # Handed over ahead of its second (Cloud Tasks' schedule_time): the
                # start is expected from then on.
                "deadline_at": max(now, run.fire_at) + t.start_timeout,
            }
        else:
            # A message (a notify target) is done once sent, a wait target once its wait
            # was released; a plain endpoint reports nothing.
            done = run.target.notify is not None or run.target.wait is not None
            end = _S.succeeded if done else _S.delivered
            attempts[-1] = attempts[-1].model_copy(update={"ended_at": now, "outcome": end})
            changes = {"dispatched_at": now, **_ended(run, now, end)}
            if end is _S.succeeded:
                return Change(
                    (_S.pending,),
                    {**changes, "error": None, "attempts": attempts, "updated_at": now},
                    event=EventType.run_succeeded,
                )
        return Change((_S.pending,), {**changes, "attempts": attempts, "updated_at": now})
    if outcome is SendOutcome.permanent:
        return attempt_failed(
            run, now, _S.failed, error or "dispatch refused", retry=False, send=send
        )
    return attempt_failed(run, now, _S.failed, error or "dispatch failed", send=send)


@_finalized
def attempt_failed(
    run: Run,
    now: datetime,
    outcome: RunState,
    error: str,
    *,
    retry: bool = True,
    send: Send | None = None,
    extra: dict[str, Any] | None = None,
) -> Change:
    """End the current attempt with ``outcome`` (failed, lost, timed_out).

    If ``retry`` and attempts remain, the run waits in ``retry_wait`` for a full-jitter
    backoff; otherwise it ends in ``outcome``. ``send`` is the failed send that ends it
    (the run was ``pending``), recorded in the attempt's sends, rather than a failed
    execution.
    """
    dispatch = send is not None
    attempts = _attempts(run, ended_at=now, outcome=outcome, error=error)
    if send is not None:
        attempts[-1] = attempts[-1].model_copy(
            update={"dispatched_at": attempts[-1].dispatched_at or now}
        )
        attempts = _with_send(attempts, send)
    expect = (_S.pending,) if dispatch else (run.state,)
    base = {"attempts": attempts, "error": error, "updated_at": now, **(extra or {})}
    if retry and run.attempt < run.retry.max_attempts:
        retry_at = now + backoff_delay(run.id, run.attempt + 1, run.retry)
        return Change(
            expect,
            {**base, "state": _S.retry_wait, "retry_at": retry_at, "deadline_at": retry_at},
            event=EventType.run_retrying,
        )
    event = _END_EVENTS[outcome] if not dispatch else EventType.dispatch_failed
    return Change(expect, {**base, **_ended(run, now, outcome)}, event=event)


@_finalized
def next_attempt(run: Run, now: datetime, t: RunTimeouts) -> Change:
    """Start the next attempt of a run in ``retry_wait`` (or re-fire a stale ``pending`` one)."""
    number = run.attempt + 1
    attempts = [a.model_copy() for a in run.attempts] + [Attempt(number=number)]
    return Change(
        (run.state,),
        {
            "state": _S.pending,
            "attempt": number,
            "attempts": attempts,
            "retry_at": None,
            "dispatched_at": None,
            "started_at": None,
            "heartbeat_at": None,
            "cancel_requested": False,
            "timed_out_at": None,
            "deadline_at": now + t.pending_grace,
            "updated_at": now,
        },
    )


@_finalized
def deferred(run: Run, now: datetime) -> Change:
    """A ``pending`` run a process could not send (it lacks the dispatcher's settings):
    due at once, so the next tick's watchdog sends it (:func:`resend`)."""
    return Change((_S.pending,), {"deadline_at": now, "updated_at": now})


@_finalized
def resend(run: Run, now: datetime, t: RunTimeouts) -> Change:
    """Send a ``pending`` run's current attempt again: its last send was never recorded.

    The same attempt (same key, same body): the earlier POST may have reached the
    target, so a new key would make one occurrence look like two. The unrecorded send
    is appended to the attempt's sends as ``unknown``; past ``t.blind_sends`` of them
    the run ends ``lost`` instead (see :func:`watch`).
    """
    attempts = _with_send(_attempts(run), Send(at=now, outcome="unknown"))
    return Change(
        (_S.pending,),
        {"attempts": attempts, "deadline_at": now + t.pending_grace, "updated_at": now},
    )


def _unknown_sends(run: Run) -> int:
    current = run.attempts[-1] if run.attempts else None
    if current is None or current.number != run.attempt:
        return 0
    return sum(1 for s in current.sends if s.outcome == "unknown")


@_finalized
def start(run: Run, now: datetime, t: RunTimeouts) -> Change:
    """The worker starts the current attempt: ``pending|dispatched -> running``."""
    started = run.model_copy(update={"started_at": now})
    return Change(
        (_S.pending, _S.dispatched),
        {
            "state": _S.running,
            "started_at": now,
            "heartbeat_at": now,
            "dispatched_at": run.dispatched_at or now,
            "attempts": _attempts(run, started_at=now, dispatched_at=run.dispatched_at or now),
            "deadline_at": _running_deadline(started, now, now, t),
            "updated_at": now,
        },
        event=EventType.run_started,
    )


@_finalized
def heartbeat(run: Run, now: datetime, t: RunTimeouts) -> Change:
    """A renewal of a running attempt's lease: ``heartbeat_at`` becomes ``now``, which
    pushes the loss deadline to ``now`` plus the heartbeat timeout (capped by the SLA
    and the ``timeout``; not extended at all once a stop was requested)."""
    return Change(
        (_S.running,),
        {
            "heartbeat_at": now,
            "deadline_at": _running_deadline(run, now, now, t),
            "updated_at": now,
        },
    )


@_finalized
def succeed(run: Run, now: datetime, output: JsonValue) -> Change:
    """The worker function returned: ``running -> succeeded`` with its output."""
    return Change(
        (_S.running,),
        {
            "output": output,
            "error": None,
            **_ended(run, now, _S.succeeded),
            "attempts": _attempts(run, ended_at=now, outcome=_S.succeeded),
            "updated_at": now,
        },
        event=EventType.run_succeeded,
    )


@_finalized
def finish(
    run: Run,
    now: datetime,
    t: RunTimeouts,
    *,
    output: JsonValue = None,
    error: str | None = None,
    retry: bool = True,
) -> Change:
    """The worker records the end of its running attempt.

    After a timeout (``timed_out_at`` set) the attempt ends ``timed_out`` whatever the
    function did: this is the acknowledgement the retry waits for. Otherwise no
    ``error`` is :func:`succeed` with ``output``, and an error fails the attempt
    (``retry`` False: no further attempt, e.g. an output that cannot be stored).
    """
    if run.cancelled_at is not None:
        return _cancelled(run, now, run.error or "cancelled")
    if run.timed_out_at is not None:
        reason = f"timed out after {_shown(run.timeout)}" + (f"; then {error}" if error else "")
        return attempt_failed(run, now, _S.timed_out, reason)
    if error is None:
        return succeed(run, now, output)
    return attempt_failed(run, now, _S.failed, error, retry=retry)


# --- orchestration: ends that cause runs, pipelines, cancellation -------------------


def _cancelled(run: Run, now: datetime, reason: str) -> Change:
    # The current attempt ends cancelled unless it had ended already (a run waiting in
    # retry_wait keeps its failed attempt's outcome: nothing of the next one began).
    current = run.attempts[-1] if run.attempts else None
    open_attempt = current is not None and current.ended_at is None
    attempts = (
        _attempts(run, ended_at=now, outcome=_S.cancelled)
        if open_attempt
        else [a.model_copy() for a in run.attempts]
    )
    changes: dict[str, Any] = {
        **_ended(run, now, _S.cancelled),
        "attempts": attempts,
        "error": reason,
        "cancel_requested": run.state is _S.running,
        "retry_at": None,
        "updated_at": now,
    }
    if run.wait_key is not None:
        changes["wait_key"] = None  # it no longer waits: a write to the key must not find it
    return Change((run.state,), changes)


def cancel(run: Run, now: datetime, t: RunTimeouts, reason: str) -> Change | None:
    """Stop a run that has not ended: ``cancelled`` at once, or, for a running attempt, a
    cancel request (``cancel_requested``, ``cancelled_at``) that its worker sees in its
    next heartbeat reply; the attempt then ends ``cancelled`` when it records its end, or
    ``heartbeat_timeout`` after the request (see :func:`watch`). None for an ended run
    or one whose cancel was already requested."""
    if run.is_terminal or run.cancelled_at is not None:
        return None
    if run.state is _S.running and not run.is_pipeline_run:
        change = Change(
            (_S.running,),
            {
                "cancel_requested": True,
                "cancelled_at": now,
                "error": reason,
                "deadline_at": now + _hb(run, t),
                "updated_at": now,
            },
        )
    else:
        change = _cancelled(run, now, reason)
    return _finalize(run, change, now)


@_finalized
def settled(run: Run, now: datetime) -> Change:
    """The runs an ended run causes are all claimed: clear ``settle_at``."""
    return Change((run.state,), {"settle_at": None, "updated_at": now})


@_finalized
def start_pipeline(run: Run, now: datetime, slots: list[str], ready: list[str]) -> Change:
    """A pipeline run starts (``pending -> running``), in the same write that creates its
    task runs. Its only deadline is the pipeline's ``timeout``: it has no worker and no
    heartbeat; its leaf tasks' ends decide it (:func:`end_pipeline`)."""
    spec = run.pipeline_spec
    timeout = spec.timeout if spec is not None else None
    return Change(
        (_S.pending,),
        {
            "state": _S.running,
            "started_at": now,
            "dispatched_at": now,
            "attempts": _attempts(run, started_at=now, dispatched_at=now),
            "slots": slots,
            "ready": ready,
            "deadline_at": now + timeout if timeout is not None else None,
            "updated_at": now,
        },
        event=EventType.run_started,
    )


def pipeline_verdict(run: Run) -> RunState | None:
    """``succeeded`` or ``failed`` once every leaf task of the pipeline run has marked its
    end on it, else None. Failed when any task failed, error paths included."""
    spec = run.pipeline_spec
    if spec is None:
        return None
    from firecron.core.pipelines import leaves

    marks = run.upstream
    wanted = leaves(spec)
    if any(task not in marks for task in wanted):
        return None
    failed = any(marks[task].failed_within for task in wanted)
    return _S.failed if failed else _S.succeeded


@_finalized
def end_pipeline(run: Run, now: datetime, verdict: RunState, error: str | None = None) -> Change:
    """A pipeline run ends with ``verdict`` (from :func:`pipeline_verdict`, or ``failed``
    on its timeout, with ``error`` saying so)."""
    if verdict is _S.failed and error is None:
        error = "a task failed"
    event = EventType.run_succeeded if verdict is _S.succeeded else EventType.run_failed
    return Change(
        (_S.pending, _S.running),
        {
            **_ended(run, now, verdict),
            "attempts": _attempts(run, ended_at=now, outcome=verdict, error=error),
            "error": error,
            "updated_at": now,
        },
        event=event,
    )


@_finalized
def release_task(run: Run, now: datetime, t: RunTimeouts, *, queued: bool = False) -> Change:
    """A waiting task whose rule holds becomes ``pending`` (fire it), or ``queued`` when
    its pipeline's ``max_parallel`` slots are all taken (the end of a running task hands
    its slot on; the watchdog looks again every ``queue_recheck``)."""
    if queued:
        return Change(
            (_S.waiting,),
            {"state": _S.queued, "deadline_at": now + t.queue_recheck, "updated_at": now},
        )
    return Change(
        (run.state,),
        {
            "state": _S.pending,
            "attempts": [Attempt(number=1)],
            "deadline_at": now + t.pending_grace,
            "updated_at": now,
        },
    )


@_finalized
def skip_task(run: Run, now: datetime, reason: str) -> Change:
    """A waiting task whose rule or ``if`` does not hold ends ``skipped``."""
    return Change(
        (_S.waiting,),
        {**_ended(run, now, _S.skipped), "error": reason, "updated_at": now},
        event=EventType.run_skipped,
    )


@_finalized
def fail_task(run: Run, now: datetime, reason: str) -> Change:
    """A waiting task whose ``if`` cannot be evaluated (a CEL error) fails, unretried."""
    return Change(
        (_S.waiting,),
        {**_ended(run, now, _S.failed), "error": reason, "updated_at": now},
        event=EventType.run_failed,
    )


def upstream_end(run: Run) -> UpstreamEnd:
    """The mark an ended task run leaves on its downstream tasks (or its pipeline run)."""
    state = run.state
    failed_above = any(m.failed_within for m in run.upstream.values())
    if state in SUCCEEDED_STATES:
        return UpstreamEnd(outcome="succeeded", state=state.value, failed_within=failed_above)
    if state in FAILED_STATES:
        return UpstreamEnd(outcome="failed", state=state.value, failed_within=True)
    below_failure = any(m.outcome in ("failed", "upstream_failed") for m in run.upstream.values())
    outcome = "upstream_failed" if below_failure else "skipped"
    return UpstreamEnd(outcome=outcome, state=state.value, failed_within=failed_above)


def without_settle(run: Run, change: Change) -> Change:
    """``change`` (a finalized end) with no ``settle_at``: what it causes is already
    claimed (a plain target's end is settled before it is recorded)."""
    changes = dict(change.changes)
    changes["settle_at"] = None
    changes["watch_at"] = derive_watch(
        changes.get("deadline_at", run.deadline_at),
        changes.get("events", run.events),
        None,
    )
    return replace(change, changes=changes)


# --- waits ---------------------------------------------------------------------------


def _waited(run: Run) -> str:
    wait = run.wait
    until = wait.until if wait is not None else "?"
    return f"{run.wait_key} until {until}"


@_finalized
def begin_wait(run: Run, now: datetime, wait: WaitSpec, key: str) -> Change:
    """A run starts waiting on ``key`` (a pipeline ``wait`` task whose rule held): it is
    indexed by the key and looked at every ``wait.every`` until ``wait.timeout``."""
    return Change(
        (_S.waiting,),
        {
            "wait": wait,
            "wait_key": key,
            "wait_until": now + wait.timeout,
            "deadline_at": min(now + wait.every, now + wait.timeout),
            "updated_at": now,
        },
    )


@_finalized
def wait_looked(run: Run, now: datetime, value: JsonValue) -> Change:
    """The wait's condition does not hold yet: remember the value, look again later."""
    wait = run.wait
    every = wait.every if wait is not None else timedelta(seconds=30)
    until = run.wait_until or now + every
    return Change(
        (_S.waiting,),
        {
            "wait_value": value,
            "wait_checked_at": now,
            "deadline_at": min(now + every, until),
            "updated_at": now,
        },
    )


@_finalized
def wait_released(run: Run, now: datetime, value: JsonValue, t: RunTimeouts) -> Change:
    """The condition holds: the run leaves the key's index and becomes ``pending`` (fire it)."""
    return Change(
        (_S.waiting,),
        {
            "state": _S.pending,
            "wait_key": None,
            "wait_value": value,
            "wait_checked_at": now,
            "attempts": [Attempt(number=1)],
            "deadline_at": now + t.pending_grace,
            "updated_at": now,
        },
    )


@_finalized
def wait_timed_out(run: Run, now: datetime, value: JsonValue) -> Change:
    """The wait's timeout passed with the condition still false: ``timed_out``."""
    wait = run.wait
    timeout = format_duration(wait.timeout) if wait is not None else "?"
    shown = json.dumps(value, separators=(",", ":"))
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return Change(
        (_S.waiting,),
        {
            **_ended(run, now, _S.timed_out),
            "wait_key": None,
            "wait_value": value,
            "wait_checked_at": now,
            "error": f"waited {timeout} on {_waited(run)}; the last value was {shown}",
            "updated_at": now,
        },
        event=EventType.run_timed_out,
    )


@_finalized
def wait_failed(run: Run, now: datetime, value: JsonValue, error: str) -> Change:
    """The condition cannot be evaluated (a CEL error): ``failed``, not retried."""
    return Change(
        (_S.waiting,),
        {
            **_ended(run, now, _S.failed),
            "wait_key": None,
            "wait_value": value,
            "wait_checked_at": now,
            "error": f"wait on {_waited(run)}: {error}",
            "updated_at": now,
        },
        event=EventType.run_failed,
    )


class WatchAction(StrEnum):
    """What the watchdog must do after applying a decision's change."""

    none = "none"
    """Nothing beyond the change."""
    fire = "fire"
    """Send the run's (new) current attempt."""
    check_blocker = "check_blocker"
    """Read ``blocked_by``; call :func:`watch` again with ``blocker_ended`` known."""
    settle = "settle"
    """The run ended but the runs it causes may not all be claimed: settle it."""
    look = "look"
    """A run waiting on a state key is due to look at it again (or has timed out)."""
    judge = "judge"
    """A waiting pipeline task past its deadline (a root with an ``if`` whose starter
    died): judge it now."""


@dataclass(frozen=True)
class WatchDecision:
    """The watchdog's verdict on one run."""

    change: Change | None
    action: WatchAction = WatchAction.none
    notes: list[str] = field(default_factory=list)


def watch(
    run: Run, now: datetime, t: RunTimeouts, *, blocker_ended: bool | None = None
) -> WatchDecision:
    """Apply the watchdog rules (see :func:`_watch_rules`) and finalize the change."""
    decision = _watch_rules(run, now, t, blocker_ended=blocker_ended)
    if decision.change is None:
        return decision
    return replace(decision, change=_finalize(run, decision.change, now))


def _watch_rules(
    run: Run, now: datetime, t: RunTimeouts, *, blocker_ended: bool | None = None
) -> WatchDecision:
    """Apply the watchdog rules to a run whose ``watch_at`` has passed.

    - ``pending`` past its grace: its send went unrecorded; send the same attempt
      again (:func:`resend`), or end ``lost`` once ``t.blind_sends`` sends of it are
      unknown.
    - ``dispatched`` past ``start_timeout``: the attempt is lost; retry.
    - ``running``: past ``timeout`` -> a cancel request (``timed_out_at``); the attempt
      ends ``timed_out`` when its worker records the end, or ``heartbeat_timeout``
      after the request, and only then may it be retried. Heartbeat expired -> lost.
      Past ``expected_duration`` -> SLA breach recorded once.
    - ``retry_wait`` due: the next attempt.
    - ``queued``: fire once the blocker has ended (``blocker_ended``), else look again later.
    """
    if run.is_terminal and run.settle_at is not None and run.settle_at <= now:
        return WatchDecision(None, WatchAction.settle)
    if run.deadline_at is None or run.deadline_at > now:
        # Nothing of the state is due (the visit may be for event deliveries); make sure a
        # stale watch_at does not bring the run back every tick.
        expected = derive_watch(run.deadline_at, run.events, run.settle_at)
        if run.watch_at != expected and (expected is None or expected > now):
            return WatchDecision(
                Change((run.state,), {"watch_at": expected, "updated_at": now}, finalized=True)
            )
        return WatchDecision(None)
    state = run.state
    if run.is_pipeline_run:
        return _watch_pipeline(run, now, t)
    if state is _S.pending:
        unknown = _unknown_sends(run) + 1
        if unknown >= t.blind_sends:
            noted = run.model_copy(
                update={"attempts": _with_send(_attempts(run), Send(at=now, outcome="unknown"))}
            )
            return WatchDecision(
                attempt_failed(
                    noted,
                    now,
                    _S.lost,
                    f"the outcome of {unknown} sends of attempt {run.attempt} was never "
                    "recorded: the dispatcher stopped, or could not write, after each",
                    retry=False,
                )
            )
        return WatchDecision(resend(run, now, t), WatchAction.fire)
    if state is _S.dispatched:
        return WatchDecision(
            attempt_failed(run, now, _S.lost, f"worker did not start within {t.start_timeout}")
        )
    if state is _S.waiting:
        if run.wait_key is not None:
            return WatchDecision(None, WatchAction.look)
        return WatchDecision(None, WatchAction.judge)
    if state is _S.retry_wait:
        if run.retry_at is not None and run.retry_at > now:
            return WatchDecision(Change((state,), {"deadline_at": run.retry_at, "updated_at": now}))
        return WatchDecision(next_attempt(run, now, t), WatchAction.fire)
    if state is _S.queued:
        if blocker_ended is None:
            return WatchDecision(None, WatchAction.check_blocker)
        if not blocker_ended:
            return WatchDecision(
                Change((state,), {"deadline_at": now + t.queue_recheck, "updated_at": now})
            )
        return WatchDecision(
            Change(
                (state,),
                {
                    "state": _S.pending,
                    "attempts": [Attempt(number=1)],
                    "deadline_at": now + t.pending_grace,
                    "updated_at": now,
                },
            ),
            WatchAction.fire,
        )
    if state is _S.running:
        started = run.started_at or run.updated_at
        heartbeat_at = run.heartbeat_at or started
        silent = now >= heartbeat_at + _hb(run, t)
        if run.cancelled_at is not None:
            stop_by = run.cancelled_at + _hb(run, t)
            if now < stop_by:
                return WatchDecision(Change((state,), {"deadline_at": stop_by, "updated_at": now}))
            return WatchDecision(_cancelled(run, now, run.error or "cancelled"))
        if run.timed_out_at is not None:
            stop_by = run.timed_out_at + _hb(run, t)
            if now < stop_by:
                return WatchDecision(Change((state,), {"deadline_at": stop_by, "updated_at": now}))
            return WatchDecision(
                attempt_failed(
                    run,
                    now,
                    _S.timed_out,
                    f"timed out after {_shown(run.timeout)}; the attempt did not stop "
                    f"within {format_duration(_hb(run, t))} of the cancel request",
                )
            )
        if run.timeout is not None and now >= started + run.timeout:
            if silent:
                # Already silent for a heartbeat timeout: nothing is left to wait for.
                return WatchDecision(
                    attempt_failed(
                        run, now, _S.timed_out, f"timed out after {format_duration(run.timeout)}"
                    )
                )
            # Ask the attempt to stop (its next check-in sees it) and wait for it:
            # the retry goes out only once it has stopped or gone silent.
            return WatchDecision(
                Change(
                    (state,),
                    {
                        "cancel_requested": True,
                        "timed_out_at": now,
                        "deadline_at": now + _hb(run, t),
                        "updated_at": now,
                    },
                ),
                notes=["cancel requested"],
            )
        if silent:
            return WatchDecision(
                attempt_failed(
                    run, now, _S.lost, f"no heartbeat for {format_duration(_hb(run, t))}"
                )
            )
        if (
            run.expected_duration is not None
            and run.sla_breached_at is None
            and now >= started + run.expected_duration
        ):
            breached = run.model_copy(update={"sla_breached_at": now})
            return WatchDecision(
                Change(
                    (state,),
                    {
                        "sla_breached_at": now,
                        "deadline_at": _running_deadline(breached, now, heartbeat_at, t),
                        "updated_at": now,
                    },
                    event=EventType.run_sla_breached,
                )
            )
        return WatchDecision(
            Change(
                (state,),
                {"deadline_at": _running_deadline(run, now, heartbeat_at, t), "updated_at": now},
            )
        )
    # Terminal states have no deadline; clear a stray one.
    return WatchDecision(Change((state,), {"deadline_at": None, "updated_at": now}))


def _watch_pipeline(run: Run, now: datetime, t: RunTimeouts) -> WatchDecision:
    """A pipeline run's deadlines: ``pending`` past its grace was never started (start it
    again: its start is one atomic write, so nothing is doubled); ``running`` past the
    pipeline's ``timeout`` fails, and settling it cancels the unfinished tasks."""
    if run.state is _S.pending:
        return WatchDecision(
            Change((_S.pending,), {"deadline_at": now + t.pending_grace, "updated_at": now}),
            WatchAction.fire,
        )
    if run.state is _S.running:
        spec = run.pipeline_spec
        timeout = spec.timeout if spec is not None else None
        error = f"pipeline timed out after {timeout}; its unfinished tasks are cancelled"
        return WatchDecision(end_pipeline(run, now, _S.failed, error))
    return WatchDecision(Change((run.state,), {"deadline_at": None, "updated_at": now}))
