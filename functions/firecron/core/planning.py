"""Tick planning: what a due schedule fires now, and its new state. Pure; ``now`` is passed in.

:func:`plan` is the heart of a tick. Given a stored schedule, its latest run (or None
when the caller did not need to read it) and ``now``, it returns the runs to create
(``pending``, ``queued`` or ``skipped``) and the schedule's next state; the dispatcher
writes both in one atomic claim.

Misfires. An occurrence is *on time* when the tick sees it at most ``misfire_threshold``
after its fire time; every other due occurrence was *misfired* (its tick was missed).
Occurrences older than ``misfire.grace`` are never fired and are counted as missed.
Of the misfired ones within grace: ``coalesce`` fires only the latest due occurrence
(the others are coalesced into it), ``all`` fires each (at most ``MAX_FIRE_PER_TICK``),
``skip`` fires none and counts them as missed.

Overlap. Judged against the latest run, only for worker targets: a plain URL target
counts as finished once delivered, so its runs never block the next occurrence (and
the dispatcher saves the read). A run fired in this same plan counts as active for the
occurrences after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from firecron.core.durations import format_duration
from firecron.core.events import EventType, next_delivery_at
from firecron.core.lifecycle import RunTimeouts, make_event
from firecron.core.models import (
    JsonValue,
    MisfirePolicyKind,
    OverlapPolicy,
    ScheduleSpec,
    ScheduleState,
    StoredSchedule,
)
from firecron.core.render import one_line
from firecron.core.runs import (
    ACTIVE_STATES,
    Run,
    RunState,
    RunTrigger,
    generation_run_id,
    scheduled_run_id,
)
from firecron.core.triggers import (
    ContinuousTrigger,
    OnDemandTrigger,
    Trigger,
    build_trigger,
    jitter_offset,
)
from firecron.core.waits import render_key

__all__ = [
    "DEFAULT_MISFIRE_THRESHOLD",
    "ERROR_BACKOFF",
    "MAX_FIRE_PER_TICK",
    "MAX_SCAN",
    "Occurrence",
    "Plan",
    "build_run",
    "errored",
    "initial_state",
    "pause",
    "plan",
    "replan",
    "resume",
    "trigger_of",
    "trigger_words",
]

DEFAULT_MISFIRE_THRESHOLD = timedelta(minutes=2)
"""How late an occurrence may be seen and still count as on time (a one-minute tick plus slack)."""
MAX_FIRE_PER_TICK = 100
"""At most this many occurrences of one schedule fire in one plan (``misfire: all``)."""
_ONE_MICROSECOND = timedelta(microseconds=1)
MAX_SCAN = 10_000
"""At most this many occurrences are enumerated per plan; a longer backlog continues next tick."""
ERROR_BACKOFF = timedelta(hours=1)
"""How long a schedule whose tick failed waits before the next try (see :func:`errored`)."""
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Occurrence:
    """One nominal fire time and the instant it becomes due (jitter added)."""

    scheduled_for: datetime
    fire_at: datetime


@dataclass(frozen=True)
class Plan:
    """The outcome of planning one due schedule."""

    runs: list[Run]
    """Runs to create in the claim: ``pending`` (fire now), ``queued`` or ``skipped``."""
    new_state: ScheduleState
    """The schedule's state after this tick."""
    missed: list[datetime] = field(default_factory=list)
    """Occurrences not fired by the misfire policy or grace (their nominal times; capped list)."""
    missed_count: int = 0
    """How many occurrences were missed (may exceed ``len(missed)``)."""
    coalesced: int = 0
    """Misfired occurrences folded into a later one by ``coalesce``."""

    @property
    def to_fire(self) -> list[Run]:
        """The runs to send now."""
        return [r for r in self.runs if r.state is RunState.pending]


def trigger_of(spec: ScheduleSpec) -> Trigger:
    """The trigger of ``spec`` (valid specs always build).

    An on-demand spec (no trigger: none of cron, every, at, a frequency or continuous) has an :class:`OnDemandTrigger`, which
    has no occurrence: its schedule is never due, and never exhausted either.
    """
    if spec.on_demand:
        return OnDemandTrigger(timezone=spec.timezone)
    if spec.continuous is not None:
        return ContinuousTrigger(timezone=spec.timezone)
    return build_trigger(
        cron=spec.cron,
        every=spec.every,
        at=spec.at,
        frequency=spec.frequency,
        timezone=spec.timezone,
        start_at=spec.start_at,
        end_at=spec.end_at,
    )


def trigger_words(spec: ScheduleSpec) -> str:
    """``spec``'s trigger in words, naming its zone when the words do not (what the
    console and the dev view show: ``weekly on Monday and Friday at 09:00 (Europe/Berlin)``)."""
    text = trigger_of(spec).describe()
    return text if spec.timezone in text else f"{text} ({spec.timezone})"


def _occurrence(spec: ScheduleSpec, scheduled_for: datetime) -> Occurrence:
    return Occurrence(
        scheduled_for, scheduled_for + jitter_offset(spec.id, scheduled_for, spec.jitter)
    )


def _with_next(
    spec: ScheduleSpec, state: ScheduleState, nxt: datetime | None, now: datetime
) -> ScheduleState:
    """``state`` pointing at occurrence ``nxt`` (or idle/exhausted when there is none).

    An on-demand schedule has no occurrence (``nxt`` is None) and is not exhausted by that:
    it stays ``active`` with ``next_fire_at`` None, so the due query never reads it.
    """
    limit_hit = spec.max_runs is not None and state.run_count >= spec.max_runs
    exhausted = (nxt is None and not spec.on_demand) or limit_hit
    active = spec.enabled and not state.paused and not exhausted
    occ = _occurrence(spec, nxt) if nxt is not None and active else None
    return state.model_copy(
        update={
            "next_occurrence": occ.scheduled_for if occ else None,
            "next_fire_at": occ.fire_at if occ else None,
            "exhausted": exhausted,
            "updated_at": now,
        }
    )


def initial_state(spec: ScheduleSpec, now: datetime) -> ScheduleState:
    """State of a newly applied schedule: first occurrence strictly after ``now``.

    Except a one-shot ``at`` applied after its instant but within ``misfire.grace``: it
    points at that instant, so the next tick's misfire policy decides, as for a missed
    tick (``coalesce``/``all`` fire it, ``skip`` records it missed unless it is still on
    time). A one-shot applied a few seconds late must not vanish silently; ``validate``
    refuses those older than the grace (:mod:`firecron.core.refusals`). Recurring
    triggers never fire occurrences from before they existed. An on-demand schedule
    gets no next occurrence and is not exhausted (it is never due).
    """
    base = ScheduleState(created_at=now, updated_at=now)
    trigger = trigger_of(spec)
    after = now
    if spec.at is not None and now - spec.misfire.grace <= spec.at <= now:
        after = spec.at - _ONE_MICROSECOND
    return _with_next(spec, base, trigger.next_after(after), now)


def replan(
    spec: ScheduleSpec, old: ScheduleSpec, state: ScheduleState, now: datetime
) -> ScheduleState:
    """State after the definition changed from ``old`` to ``spec``.

    Counters, pause and history are kept. If nothing that decides *when* it fires
    changed, the next fire time is kept too; otherwise the next occurrence is
    recomputed strictly after ``now`` (never re-firing an already handled occurrence).
    """
    if spec.trigger_fields() == old.trigger_fields():
        return state
    after = max(now, state.last_occurrence) if state.last_occurrence else now
    return _with_next(spec, state, trigger_of(spec).next_after(after), now)


def pause(spec: ScheduleSpec, state: ScheduleState, now: datetime) -> ScheduleState:
    """Paused state: idle, remembering when (for the misfire policy on resume)."""
    if state.paused:
        return state
    paused = state.model_copy(update={"paused": True, "paused_at": now})
    return _with_next(spec, paused, None, now).model_copy(update={"exhausted": state.exhausted})


def resume(spec: ScheduleSpec, state: ScheduleState, now: datetime) -> ScheduleState:
    """Resumed state: the occurrences missed while paused become due again.

    The next occurrence is the first after the last handled one (or after the pause
    instant), so the next tick's misfire policy decides what to fire of them.
    """
    if not state.paused:
        return state
    since = state.last_occurrence or state.paused_at or now
    resumed = state.model_copy(update={"paused": False, "paused_at": None})
    return _with_next(spec, resumed, trigger_of(spec).next_after(since), now)


def errored(state: ScheduleState, now: datetime, error: str) -> ScheduleState:
    """State of a schedule that could not be planned, claimed or fired at ``now``.

    Records ``error`` (made one line, at most 500 characters, and encodable: a lone
    surrogate becomes its escape) as ``last_error`` and moves ``next_fire_at`` to
    ``now + ERROR_BACKOFF``, so a poison schedule costs one try per backoff, not one per
    tick. ``next_occurrence`` is kept: when a later plan succeeds, the occurrences due
    meanwhile are handled by the misfire policy, and that plan clears the error.
    """
    line = one_line(error.encode("utf-8", "backslashreplace").decode("utf-8"), _MAX_ERROR_CHARS)
    return state.model_copy(
        update={
            "last_error": line,
            "last_error_at": now,
            "next_fire_at": now + ERROR_BACKOFF,
            "updated_at": now,
        }
    )


def build_run(
    spec: ScheduleSpec,
    run_id: str,
    occurrence: Occurrence,
    now: datetime,
    *,
    trigger: RunTrigger = RunTrigger.schedule,
    state: RunState = RunState.pending,
    params: Mapping[str, JsonValue] | None = None,
    pending_grace: timedelta = RunTimeouts.pending_grace,
    blocked_by: str | None = None,
    default_retention: timedelta | None = None,
    error: str | None = None,
    cause_run_id: str | None = None,
    gate: bool = True,
    generation: int | None = None,
    failures: int = 0,
) -> Run:
    """A new run of ``spec`` with the policy snapshot it needs.

    A ``pending`` run is watched at ``now + pending_grace`` (re-fired if the dispatcher
    died before sending it); a ``queued`` run is watched every tick until its blocker
    ends; a ``skipped`` or ``missed`` run is terminal, born with its event, and watched
    only while that event has deliveries pending.
    """
    # A run to fire of a gated schedule (a `wait`, or a wait target) waits on its key
    # first; `gate=False` (a manual trigger told not to wait) fires it at once.
    wait = spec.wait or spec.target.wait
    waits = state is RunState.pending and wait is not None and (gate or spec.wait is None)
    deadline: datetime | None = None
    if waits:
        state = RunState.waiting
    if state is RunState.pending:
        deadline = now + pending_grace
    elif state is RunState.queued:
        deadline = now
    terminal = state in (RunState.skipped, RunState.missed)
    retention = spec.retention if spec.retention is not None else default_retention
    # A pipeline's params are defaults under the schedule's, which are under the run's own.
    merged = dict(spec.pipeline_spec.params) if spec.pipeline_spec is not None else {}
    merged.update(spec.params)
    if params:
        merged.update(params)
    wait_fields: dict[str, Any] = {}
    if waits and wait is not None:
        # The claimer looks at the key right after the claim; the watchdog looks at
        # the deadline if it does not.
        deadline = now + min(wait.every, wait.timeout)
        wait_fields = {
            "wait": wait,
            "wait_key": render_key(wait.key, merged, occurrence.scheduled_for, spec.timezone),
            "wait_until": now + wait.timeout,
        }
    run = Run(
        id=run_id,
        schedule_id=spec.id,
        scheduled_for=occurrence.scheduled_for,
        fire_at=occurrence.fire_at,
        trigger=trigger,
        state=state,
        params=merged,
        target=spec.target,
        # A generation is never retried itself: its successor is the retry, after the
        # schedule's backoff when it crashed (plan_handoff).
        retry=spec.retry
        if generation is None
        else spec.retry.model_copy(update={"max_attempts": 1}),
        timeout=spec.timeout,
        expected_duration=spec.expected_duration,
        labels=spec.labels,
        retention=retention,
        expire_at=now + retention if terminal and retention is not None else None,
        created_at=now,
        updated_at=now,
        ended_at=now if terminal else None,
        deadline_at=deadline,
        watch_at=deadline,
        blocked_by=blocked_by,
        error=error,
        notify=list(spec.notify),
        then=list(spec.then),
        pipeline=spec.pipeline_spec.id if spec.pipeline_spec is not None else None,
        pipeline_spec=spec.pipeline_spec,
        cause_run_id=cause_run_id,
        timezone=spec.timezone,
        heartbeat_timeout=spec.heartbeat_timeout,
        generation=generation,
        window=spec.continuous.window if generation is not None and spec.continuous else None,
        failures=failures,
        **wait_fields,
    )
    if terminal:
        # Born terminal: its event is recorded in the same claim that creates it.
        kind = EventType.run_skipped if state is RunState.skipped else EventType.run_missed
        event = make_event(run, kind, now, run.notify)
        run = run.model_copy(update={"events": [event], "watch_at": next_delivery_at([event])})
    return run


def _is_active(run: Run | None) -> bool:
    return run is not None and (run.state in ACTIVE_STATES or run.state is RunState.queued)


def plan(
    stored: StoredSchedule,
    latest_run: Run | None,
    now: datetime,
    *,
    misfire_threshold: timedelta = DEFAULT_MISFIRE_THRESHOLD,
    pending_grace: timedelta = RunTimeouts.pending_grace,
    default_retention: timedelta | None = None,
    lookahead: timedelta = timedelta(0),
) -> Plan:
    """Plan one tick for a schedule (see the module docstring for the policies).

    ``latest_run`` must be the run named by ``stored.state.last_run_id`` when the target
    is a worker and ``overlap`` is not ``allow``; otherwise it is ignored and may be None.
    A schedule that is not due (``next_fire_at`` None or in the future) plans nothing.

    ``lookahead`` (Cloud Tasks delivery: the tick's interval) also plans every
    occurrence whose fire time is before ``now + lookahead``, as a ``pending`` run with
    its own ``fire_at``, so it can be handed over now and sent at its exact second. The
    misfire policy judges only the occurrences already due (those ahead are on time by
    definition); the overlap policy judges all of them at this tick, a run planned ahead
    counting as active for the ones after it. Continuous schedules ignore it.
    """
    spec, state = stored.spec, stored.state
    if spec.continuous is not None:
        lookahead = timedelta(0)
    if (
        state.next_occurrence is None
        or state.next_fire_at is None
        or (state.next_fire_at > now and state.next_fire_at >= now + lookahead)
    ):
        return Plan(runs=[], new_state=state)
    if spec.continuous is not None:
        return _plan_generation(stored, latest_run, now, pending_grace, default_retention)
    trigger = trigger_of(spec)
    horizon = now - spec.misfire.grace

    # Enumerate due occurrences, splitting those older than grace (missed) from the rest.
    missed: list[datetime] = []
    missed_count = 0
    due: list[Occurrence] = []
    ahead: list[Occurrence] = []
    nxt: datetime | None = state.next_occurrence
    scanned = 0
    while nxt is not None and scanned < MAX_SCAN:
        occ = _occurrence(spec, nxt)
        if occ.fire_at > now:
            if occ.fire_at >= now + lookahead or len(ahead) >= MAX_FIRE_PER_TICK:
                break
            ahead.append(occ)
        elif occ.scheduled_for < horizon:
            missed_count += 1
            if len(missed) < MAX_FIRE_PER_TICK:
                missed.append(occ.scheduled_for)
        else:
            due.append(occ)
        scanned += 1
        nxt = trigger.next_after(nxt)
    backlog_left = nxt is not None and _occurrence(spec, nxt).fire_at <= now

    on_time = bool(due) and not backlog_left and now - due[-1].fire_at <= misfire_threshold
    policy = spec.misfire.policy
    coalesced = 0
    if policy is MisfirePolicyKind.all:
        chosen = due[:MAX_FIRE_PER_TICK]
        if len(due) > MAX_FIRE_PER_TICK:
            # Continue the backlog next tick from the first occurrence not fired.
            nxt = due[MAX_FIRE_PER_TICK].scheduled_for
    elif policy is MisfirePolicyKind.coalesce:
        chosen = due[-1:]
        coalesced = max(0, len(due) - 1)
    else:  # skip: only an on-time occurrence fires
        chosen = due[-1:] if on_time else []
        skipped_late = due[:-1] if on_time else due
        missed_count += len(skipped_late)
        missed.extend(o.scheduled_for for o in skipped_late[: MAX_FIRE_PER_TICK - len(missed)])

    if ahead:
        if policy is MisfirePolicyKind.all and len(due) > MAX_FIRE_PER_TICK:
            # A backlog still to fire: the occurrences ahead wait for it (nxt points into it).
            ahead = []
        else:
            ahead = ahead[: MAX_FIRE_PER_TICK - len(chosen)]
            chosen = [*chosen, *ahead]
            if ahead:
                nxt = trigger.next_after(ahead[-1].scheduled_for)

    if spec.max_runs is not None:
        chosen = chosen[: max(0, spec.max_runs - state.run_count)]

    def new_run(run_id: str, occ: Occurrence, **kw: Any) -> Run:
        return build_run(spec, run_id, occ, now, default_retention=default_retention, **kw)

    runs: list[Run] = []
    fired = queued = skipped = 0
    last_run_id = state.last_run_id
    checks_overlap = spec.target.tracks_end and spec.overlap is not OverlapPolicy.allow
    blocker_active = checks_overlap and _is_active(latest_run)
    blocker_id = latest_run.id if latest_run is not None else None
    queue_full = blocker_active and latest_run is not None and latest_run.state is RunState.queued
    for occ in chosen:
        run_id = scheduled_run_id(spec.id, occ.scheduled_for)
        if not blocker_active:
            runs.append(new_run(run_id, occ, pending_grace=pending_grace))
            fired += 1
            blocker_active, blocker_id, last_run_id = checks_overlap, run_id, run_id
        elif spec.overlap is OverlapPolicy.queue_one and not queue_full:
            runs.append(new_run(run_id, occ, state=RunState.queued, blocked_by=blocker_id))
            queued += 1
            queue_full, last_run_id = True, run_id
        else:
            runs.append(new_run(run_id, occ, state=RunState.skipped))
            skipped += 1

    if missed_count:
        # One record per plan stands for every occurrence it missed (not one per occurrence:
        # a long pause of a per-second schedule must not write thousands of documents).
        latest_missed = max(missed)
        note = (
            f"{missed_count} occurrence(s) not fired by the misfire policy "
            f"({spec.misfire.policy.value}, grace {format_duration(spec.misfire.grace)})"
        )
        runs.append(
            new_run(
                scheduled_run_id(spec.id, latest_missed),
                _occurrence(spec, latest_missed),
                state=RunState.missed,
                error=note,
            )
        )

    last_handled = max(
        [o.scheduled_for for o in (*due, *ahead)]
        + missed
        + ([state.last_occurrence] if state.last_occurrence else []),
        default=None,
    )
    if policy is MisfirePolicyKind.all and len(due) > MAX_FIRE_PER_TICK:
        last_handled = due[MAX_FIRE_PER_TICK - 1].scheduled_for
    counted = state.model_copy(
        update={
            "last_occurrence": last_handled,
            "last_run_id": last_run_id,
            "run_count": state.run_count + fired + queued,
            "skipped_count": state.skipped_count + skipped,
            "missed_count": state.missed_count + missed_count,
            # A successful plan ends an earlier failure (see ``errored``).
            "last_error": None,
            "last_error_at": None,
        }
    )
    return Plan(
        runs=runs,
        new_state=_with_next(spec, counted, nxt, now),
        missed=missed,
        missed_count=missed_count,
        coalesced=coalesced,
    )


QUICK_END = timedelta(seconds=5)
"""A generation that ends sooner than this after it started counts as a crash (backoff)."""


def _plan_generation(
    stored: StoredSchedule,
    latest_run: Run | None,
    now: datetime,
    pending_grace: timedelta,
    default_retention: timedelta | None,
) -> Plan:
    """A due continuous schedule (just applied or resumed) starts its next generation,
    unless one is alive: then that one hands over when it ends, and nothing is planned."""
    spec, state = stored.spec, stored.state
    idle = state.model_copy(
        update={"next_fire_at": None, "next_occurrence": None, "updated_at": now}
    )
    if _is_active(latest_run):
        return Plan(runs=[], new_state=idle)
    generation = state.run_count + 1
    run = _generation_run(spec, generation, now, pending_grace, default_retention)
    new_state = idle.model_copy(
        update={
            "run_count": generation,
            "last_run_id": run.id,
            "last_occurrence": now,
            "last_error": None,
            "last_error_at": None,
        }
    )
    return Plan(runs=[run], new_state=new_state)


def _generation_run(
    spec: ScheduleSpec,
    generation: int,
    now: datetime,
    pending_grace: timedelta,
    default_retention: timedelta | None,
    *,
    failures: int = 0,
    cause_run_id: str | None = None,
) -> Run:
    """Generation ``generation`` of continuous ``spec``, due now (its occurrence is now)."""
    return build_run(
        spec,
        generation_run_id(spec.id, generation),
        Occurrence(now, now),
        now,
        pending_grace=pending_grace,
        default_retention=default_retention,
        generation=generation,
        failures=failures,
        cause_run_id=cause_run_id,
    )


MIN_CRASH_BACKOFF = timedelta(seconds=1)
"""The least a crash's successor waits, whatever the retry policy says: with a backoff
of 0, a worker that fails at once would otherwise burn through generations as fast as
the store can write them."""


def _crashed(ended: Run) -> bool:
    """Whether a generation's end is a crash, which makes its successor wait a backoff.

    It failed (its function raised, or its dispatch failed) or timed out; or it returned
    less than :data:`QUICK_END` (or its window, when that is shorter) after it started.
    A ``lost`` generation is never a crash: the silence that lost it lasted the
    heartbeat timeout (or the start timeout), which throttles a loop of deaths by
    itself, so its successor starts at once, within ``heartbeat_timeout`` plus one tick
    of the death.
    """
    if ended.state in (RunState.failed, RunState.timed_out):
        return True
    if ended.state is RunState.lost:
        return False
    if ended.started_at is None or ended.ended_at is None:
        return True
    quick = min(QUICK_END, ended.window) if ended.window is not None else QUICK_END
    return ended.ended_at - ended.started_at < quick


def plan_handoff(
    stored: StoredSchedule,
    ended: Run,
    now: datetime,
    *,
    pending_grace: timedelta,
    default_retention: timedelta | None = None,
) -> Plan | None:
    """The generation after ``ended`` (which has ended) and the schedule's new state, or
    None when there must be none: the schedule is paused, disabled or no longer
    continuous, or ``ended`` is not its live generation (a newer one exists already).

    A crash (:func:`_crashed`) makes the successor wait (``queued``, released at its
    deadline) for the schedule's retry backoff, growing with each crash in a row up to
    ``max_backoff`` (and at least :data:`MIN_CRASH_BACKOFF`); a generation that ran its
    course, or was lost, resets it and its successor is fired at once.
    """
    spec, state = stored.spec, stored.state
    if spec.continuous is None or not spec.enabled or state.paused:
        return None
    if state.last_run_id != ended.id or ended.generation is None:
        return None
    failures = ended.failures + 1 if _crashed(ended) else 0
    generation = ended.generation + 1
    run = _generation_run(
        spec,
        generation,
        now,
        pending_grace,
        default_retention,
        failures=failures,
        cause_run_id=ended.id,
    )
    policy = spec.retry
    ceiling = max(
        MIN_CRASH_BACKOFF,
        min(policy.max_backoff, policy.backoff * policy.multiplier ** max(failures - 1, 0)),
    )
    if failures:
        run = run.model_copy(
            update={
                "state": RunState.queued,
                "blocked_by": ended.id,
                "deadline_at": now + ceiling,
                "watch_at": now + ceiling,
                "attempts": [],
            }
        )
    # The successor is born with the handoff's event (recorded in the same claim).
    event = make_event(run, EventType.run_handoff, now, run.notify)
    run = run.model_copy(
        update={
            "events": [event],
            "watch_at": min(
                [t for t in (run.watch_at, next_delivery_at([event])) if t is not None],
                default=None,
            ),
        }
    )
    new_state = state.model_copy(
        update={"run_count": generation, "last_run_id": run.id, "updated_at": now}
    )
    return Plan(runs=[run], new_state=new_state)
