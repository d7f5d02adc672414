"""Runs, attempts and the run state machine.

A run is the record of one occurrence (or one manual trigger). Its id is deterministic
for scheduled runs (:func:`scheduled_run_id`), which is what makes a claim idempotent:
two dispatchers that plan the same occurrence try to create the same document and
only one can.

The run carries a snapshot of the policies it needs (retry, timeout, expected
duration) so that the watchdog and workers never read the schedule.

Transitions are the one table :data:`TRANSITIONS`; stores apply them by
compare-and-set on ``state`` (``Store.update_run(run_id, expect_states, changes)``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from firecron.core.events import Event, Route
from firecron.core.models import (
    ChainStep,
    Duration,
    JsonValue,
    PipelineSpec,
    RetryPolicy,
    Target,
    TaskRule,
    WaitSpec,
)

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "SUCCEEDED_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Attempt",
    "Run",
    "RunState",
    "RunTrigger",
    "Send",
    "SendRecord",
    "UpstreamEnd",
    "backoff_delay",
    "can_transition",
    "caused_run_id",
    "generation_run_id",
    "manual_run_id",
    "scheduled_run_id",
    "task_run_id",
]


class RunState(StrEnum):
    """Where a run is in its life. Terminal states have no ``watch_at``."""

    pending = "pending"
    """Claimed and not yet sent, or sent with no outcome recorded yet (a new attempt included)."""
    dispatched = "dispatched"
    """Sent to a worker, which has not started it yet."""
    delivered = "delivered"
    """Sent to a plain HTTP target; terminal, because such a target reports nothing."""
    running = "running"
    """Started by the worker SDK, which holds a lease on it and renews it (``heartbeat_at``)."""
    succeeded = "succeeded"
    """The worker function returned."""
    failed = "failed"
    """The worker raised, or dispatch failed permanently, with no attempt left."""
    timed_out = "timed_out"
    """Still running past ``timeout`` with no attempt left."""
    lost = "lost"
    """Never started, or its lease ran out (no renewal for ``heartbeat_timeout``), with no
    attempt left."""
    retry_wait = "retry_wait"
    """Waiting for ``retry_at`` before the next attempt."""
    skipped = "skipped"
    """Not fired because the previous run was still active (overlap policy)."""
    queued = "queued"
    """Held by ``overlap: queue_one`` until ``blocked_by`` ends."""
    missed = "missed"
    """Not fired: its tick was missed beyond the misfire policy or grace (terminal record)."""
    waiting = "waiting"
    """Not runnable yet: a pipeline task whose upstream tasks have not all ended (watched
    by nobody: the end of its last upstream task moves it on), or a run waiting on a
    state key (``wait_key``; the watchdog looks every ``wait.every``, a write at once)."""
    cancelled = "cancelled"
    """Stopped before it ended by itself (``firecron cancel``, or its pipeline run ended
    first); terminal."""


class RunTrigger(StrEnum):
    """Why a run (or an attempt) was sent; the ``trigger`` field of the dispatch body."""

    schedule = "schedule"
    """A scheduled occurrence."""
    manual = "manual"
    """``firecron trigger``."""
    retry = "retry"
    """A later attempt of a run (the body's trigger; the run keeps its original one)."""
    backfill = "backfill"
    """A past occurrence fired on purpose."""
    chained = "chained"
    """Started by another run: a ``then:`` step at its end, or ``ctx.submit`` (``cause_run_id``)."""
    pipeline = "pipeline"
    """A task of a pipeline run (``parent_run_id``), started when its rule held."""


TERMINAL_STATES: frozenset[RunState] = frozenset(
    {
        RunState.delivered,
        RunState.succeeded,
        RunState.failed,
        RunState.timed_out,
        RunState.lost,
        RunState.skipped,
        RunState.missed,
        RunState.cancelled,
    }
)
"""States a run never leaves."""

SUCCEEDED_STATES: frozenset[RunState] = frozenset({RunState.succeeded, RunState.delivered})
"""Ends that count as success (``then: on: succeeded``, pipeline rules)."""
FAILED_STATES: frozenset[RunState] = frozenset(
    {RunState.failed, RunState.timed_out, RunState.lost, RunState.cancelled}
)
"""Ends that count as failure for pipeline rules and a pipeline's verdict."""

ACTIVE_STATES: frozenset[RunState] = frozenset(
    {
        RunState.pending,
        RunState.dispatched,
        RunState.running,
        RunState.retry_wait,
        RunState.waiting,
    }
)
"""States in which a run counts as still going for the overlap policy."""

_S = RunState
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # pending -> running: the worker may start before the dispatcher records the ack.
    # pending -> succeeded: a message (notify target) is done once sent.
    _S.pending: frozenset(
        {
            _S.dispatched,
            _S.delivered,
            _S.running,
            _S.succeeded,
            _S.retry_wait,
            _S.failed,
            _S.lost,
            _S.cancelled,
        }
    ),
    _S.dispatched: frozenset({_S.running, _S.retry_wait, _S.lost, _S.failed, _S.cancelled}),
    _S.running: frozenset(
        {_S.succeeded, _S.failed, _S.timed_out, _S.lost, _S.retry_wait, _S.cancelled}
    ),
    _S.retry_wait: frozenset({_S.pending, _S.failed, _S.cancelled}),
    _S.queued: frozenset({_S.pending, _S.skipped, _S.cancelled}),
    # A task judged: it runs, is skipped, fails (its condition errs) or waits for a slot;
    # a wait released, timed out or failed.
    _S.waiting: frozenset(
        {_S.pending, _S.queued, _S.skipped, _S.failed, _S.timed_out, _S.cancelled}
    ),
    **{s: frozenset() for s in TERMINAL_STATES},
}
"""Allowed transitions: ``TRANSITIONS[a]`` is the set of states reachable from ``a`` in one step."""


def can_transition(current: RunState, new: RunState) -> bool:
    """True when the state machine allows ``current -> new``."""
    return new in TRANSITIONS[current]


SendRecord = Literal["acknowledged", "unacknowledged", "retryable", "permanent", "unknown"]
"""How one send of an attempt ended: a transport outcome (``SendOutcome``), or
``unknown`` when the dispatcher never recorded it (it stopped, or its write failed)."""


class Send(BaseModel):
    """One POST of an attempt. An attempt whose outcome stayed unknown is sent again,
    as the same attempt (same key, same body), so an attempt may have several sends."""

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime
    """When the POST went out; for an ``unknown`` send, when the watchdog found it unrecorded."""
    outcome: SendRecord
    """How it ended, as recorded."""
    status_code: int | None = None
    """HTTP status of the answer, if any."""
    error: str | None = None
    """The transport's error, if any."""


class Attempt(BaseModel):
    """One delivery and execution try of a run.

    The attempt number grows only after a known failure (an error answer, a refused
    connection, a failure the worker reported, or a loss or timeout declared by the
    watchdog); a re-send whose first outcome is unknown stays the same attempt.
    """

    model_config = ConfigDict(extra="forbid")

    number: int
    """1 for the first try."""
    dispatched_at: AwareDatetime | None = None
    """When the POST went out."""
    acknowledged: bool | None = None
    """True on a 2xx, False when written but unanswered within ``ack_timeout``."""
    status_code: int | None = None
    """HTTP status of the acknowledgement, if any."""
    started_at: AwareDatetime | None = None
    """When the worker started it."""
    ended_at: AwareDatetime | None = None
    """When it ended."""
    outcome: RunState | None = None
    """How this attempt ended (``succeeded``, ``failed``, ``lost``, ``timed_out``...)."""
    error: str | None = None
    """Dispatch or execution error of this attempt."""
    sends: list[Send] = Field(default_factory=list)
    """Every send of this attempt the dispatcher or the watchdog recorded, oldest first.
    A worker that starts the attempt before the dispatcher records the answer wins
    that race, so a started attempt may show no send."""


class UpstreamEnd(BaseModel):
    """How one upstream task ended, as recorded on its downstream task's run (a *mark*).

    Marks are written with ``Store.mark_upstream``, one field per upstream task, so
    concurrent ends never overwrite each other; a task is judged once it holds a mark
    from every task in its ``after``. A pipeline run holds the marks of its leaf tasks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: Literal["succeeded", "failed", "skipped", "upstream_failed"]
    """``upstream_failed``: skipped because a task above it failed (counts as failed)."""
    state: str | None = None
    """The upstream task run's end state (``delivered``, ``failed``...), which a
    condition's ``tasks[...].state`` reads: the mark may land before the upstream run's
    own end record (a plain target's run records its end after settling it)."""
    failed_within: bool = False
    """True when this task or any task above it failed: a pipeline run whose leaves
    report none of these succeeded."""


def _utc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def scheduled_run_id(schedule_id: str, scheduled_for: datetime) -> str:
    """The deterministic id ``{schedule_id}@{YYYYMMDDTHHMMSSZ}`` of a scheduled occurrence."""
    return f"{schedule_id}@{_utc(scheduled_for)}"


def manual_run_id(schedule_id: str, at: datetime, nonce: str) -> str:
    """Id of a manual run: ``{schedule_id}@m{YYYYMMDDTHHMMSSZ}-{nonce}``; the caller supplies the nonce."""
    return f"{schedule_id}@m{_utc(at)}-{nonce}"


def caused_run_id(schedule_id: str, cause_run_id: str, key: str) -> str:
    """Id of a run caused by another: ``{schedule_id}@c{hash}``, deterministic in
    ``(cause_run_id, key)``, so whoever claims it (the recorder of the cause's end, a
    tick's sweep, a retried ``ctx.submit``) claims the same record and only one can."""
    digest = hashlib.sha256(f"{cause_run_id}\x00{key}".encode()).hexdigest()[:20]
    return f"{schedule_id}@c{digest}"


def generation_run_id(schedule_id: str, generation: int) -> str:
    """Id of a continuous schedule's generation: ``{schedule_id}@g{N:010d}``. Deterministic,
    so a second successor of one generation cannot exist."""
    return f"{schedule_id}@g{generation:010d}"


def task_run_id(pipeline_run_id: str, task_id: str) -> str:
    """Id of a task's run in a pipeline run: ``{pipeline_run_id}.{task_id}``."""
    return f"{pipeline_run_id}.{task_id}"


class Run(BaseModel):
    """The record of one occurrence or manual trigger, with its attempts."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Deterministic for scheduled runs (:func:`scheduled_run_id`)."""
    schedule_id: str
    """The schedule it belongs to."""
    scheduled_for: AwareDatetime
    """Nominal occurrence time (jitter not included)."""
    fire_at: AwareDatetime
    """When it was due to be sent (``scheduled_for`` plus jitter)."""
    trigger: RunTrigger = RunTrigger.schedule
    """Why it exists."""
    state: RunState = RunState.pending
    """Current state."""
    attempt: int = 1
    """Number of the current (or last) attempt."""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """Parameters sent in the body."""
    target: Target
    """Snapshot of the schedule's target at claim time."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Snapshot of the retry policy."""
    timeout: Duration | None = None
    """Snapshot of the schedule's timeout."""
    expected_duration: Duration | None = None
    """Snapshot of the schedule's SLA."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Snapshot of the schedule's labels."""
    retention: Duration | None = None
    """How long the run is kept once it ends (None: forever)."""
    expire_at: AwareDatetime | None = None
    """When the store may delete the finished run (Firestore TTL field); None while active."""
    created_at: AwareDatetime
    """When the run was claimed."""
    updated_at: AwareDatetime
    """Last write."""
    dispatched_at: AwareDatetime | None = None
    """When the current attempt was sent."""
    started_at: AwareDatetime | None = None
    """When the current attempt started running."""
    heartbeat_at: AwareDatetime | None = None
    """Latest renewal of the current attempt's lease (its start, at first): the attempt
    is lost once ``heartbeat_timeout`` has passed since then."""
    ended_at: AwareDatetime | None = None
    """When the run reached a terminal state."""
    retry_at: AwareDatetime | None = None
    """When the next attempt is due (``retry_wait``)."""
    deadline_at: AwareDatetime | None = None
    """The state's deadline (start, lease end, SLA, timeout, retry, grace); None when terminal."""
    watch_at: AwareDatetime | None = None
    """When the watchdog must look at the run: the earlier of ``deadline_at`` and the next
    pending event delivery; None when neither. Indexed; derived, never set on its own."""
    sla_breached_at: AwareDatetime | None = None
    """When the run was first seen past ``expected_duration``; set once."""
    cancel_requested: bool = False
    """Set by the watchdog on timeout; the worker sees it at its next check-in (within one
    check-in interval: 60 s at the default lease)."""
    timed_out_at: AwareDatetime | None = None
    """When the watchdog found the current attempt past ``timeout`` and asked it to stop.
    The run stays ``running`` until the attempt records its end (then it is timed out)
    or ``heartbeat_timeout`` after this instant, so the retry never overlaps it."""
    blocked_by: str | None = None
    """For ``queued`` runs: the run it waits for."""
    output: JsonValue = None
    """The worker function's return value (JSON, at most 64 KiB)."""
    error: str | None = None
    """Last error, one line."""
    attempts: list[Attempt] = Field(default_factory=list)
    """History, oldest first."""
    parent_run_id: str | None = None
    """For pipeline task runs: the pipeline run."""
    task: str | None = None
    """For pipeline task runs: the task id."""
    pipeline: str | None = None
    """The pipeline id, on a pipeline run and on each of its task runs."""
    pipeline_spec: PipelineSpec | None = None
    """On a pipeline run: the snapshot of its pipeline, taken when it was claimed."""
    reused_from: str | None = None
    """On a task run of a pipeline run re-run from a later task (``firecron rerun
    --from``): the task run of the earlier pipeline run whose end and output it carries.
    Created ended, it was not run again."""
    cause_run_id: str | None = None
    """For ``chained`` runs: the run whose end (or ``ctx.submit``) caused it; for task
    runs, the pipeline run."""
    then: list[ChainStep] = Field(default_factory=list)
    """Snapshot of the schedule's ``then:`` steps, claimed when this run ends."""
    rule: TaskRule | None = None
    """For task runs whose marks alone decide them (no ``if``, no ``max_parallel``): the
    task's ``when``, so judging it needs no read of the pipeline run."""
    after: list[str] = Field(default_factory=list)
    """For task runs: the task's ``after`` (snapshot), so a mark can tell without a read
    whether the task's upstream set is complete."""
    downstream: list[str] = Field(default_factory=list)
    """For task runs: the tasks whose ``after`` names this one (none: a leaf, whose end
    is marked on the pipeline run)."""
    holds_slot: bool = False
    """For task runs of a pipeline with ``max_parallel``: its end frees a slot."""
    upstream: dict[str, UpstreamEnd] = Field(default_factory=dict)
    """Marks: how each upstream task ended (task runs), or each leaf task (pipeline runs).
    Written only by ``Store.mark_upstream``."""
    slots: list[str] = Field(default_factory=list)
    """On a pipeline run with ``max_parallel``: the task ids holding a slot."""
    ready: list[str] = Field(default_factory=list)
    """On a pipeline run with ``max_parallel``: task ids waiting for a slot, first first."""
    settle_at: AwareDatetime | None = None
    """Set by the write that ends a run that causes other runs (``then`` steps, a task's
    downstream, a pipeline's tasks); cleared once they are claimed. While set, the run
    stays watched, so the tick settles what a dead recorder left undone."""
    wait: WaitSpec | None = None
    """Snapshot of the wait gating this run (the schedule's ``wait``, or a ``wait`` target)."""
    wait_key: str | None = None
    """The key this run is waiting on (its template rendered), while it waits on it;
    indexed, so a write to the key finds its waiters with one query."""
    wait_value: JsonValue = None
    """The key's value when the wait last looked (null: missing)."""
    wait_checked_at: AwareDatetime | None = None
    """When the wait last looked at the key."""
    wait_until: AwareDatetime | None = None
    """When the wait times out."""
    timezone: str = "UTC"
    """Snapshot of the schedule's zone (a wait key's ``{date}``)."""
    generation: int | None = None
    """For a continuous schedule's run: its generation, 1 for the first (the fencing token)."""
    window: Duration | None = None
    """For a continuous schedule's run: how long it works before it hands over."""
    heartbeat_timeout: Duration | None = None
    """Snapshot of the schedule's ``heartbeat_timeout``, the attempt's lease (None: the
    watchdog's default, 5 minutes)."""
    failures: int = 0
    """For a continuous schedule's run: how many generations before it in a row failed or
    ended within :data:`~firecron.core.lifecycle.QUICK_END` of starting (its backoff)."""
    cancelled_at: AwareDatetime | None = None
    """When a cancel was requested of a running attempt (its pipeline timed out): the
    attempt ends ``cancelled`` when its worker records the end, or ``heartbeat_timeout``
    after this."""
    notify: list[Route] = Field(default_factory=list)
    """Snapshot of the schedule's notification routes."""
    events: list[Event] = Field(default_factory=list)
    """Events about this run, oldest first, each with its delivery state per sink."""
    version: str | None = Field(default=None, exclude=True)
    """The store's compare-and-set token, set by every read and write; never part of the record."""

    def __eq__(self, other: object) -> bool:
        # Two reads of the same record are the same run whatever version token they carry.
        if not isinstance(other, Run):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable model

    @property
    def is_pipeline_run(self) -> bool:
        """True for a pipeline run (its tasks are runs of their own)."""
        return self.pipeline_spec is not None

    @property
    def is_terminal(self) -> bool:
        """True when the run will never change state again."""
        return self.state in TERMINAL_STATES

    @property
    def duration(self) -> timedelta | None:
        """Run time of the current attempt, when it has started and ended."""
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None


def backoff_delay(run_id: str, next_attempt: int, policy: RetryPolicy) -> timedelta:
    """Full-jitter delay before ``next_attempt`` (>= 2), deterministic in ``(run_id, next_attempt)``.

    The ceiling is ``min(max_backoff, backoff * multiplier ** (next_attempt - 2))`` and the
    delay is uniform in ``[0, ceiling]`` by a hash, so the core stays pure and replays agree.
    """
    exponent = max(0, next_attempt - 2)
    ceiling = min(policy.max_backoff, policy.backoff * (policy.multiplier**exponent))
    digest = hashlib.sha256(f"{run_id}|{next_attempt}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(milliseconds=int(ceiling / timedelta(milliseconds=1) * fraction))
