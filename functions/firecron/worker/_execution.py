"""One run attempt: start it, call the function once, check in, record the end.

Every write is a transition from :mod:`firecron.core.lifecycle`, applied with the
store's compare-and-set, and announced to the :data:`on_change` hooks. Nothing here
knows HTTP: :mod:`firecron.worker._http` turns what :func:`_begin` returns into an
answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from firecron import outbox
from firecron.core import lifecycle
from firecron.core.lifecycle import Change
from firecron.core.models import JsonValue
from firecron.core.render import one_line
from firecron.core.runs import Run, RunState, RunTrigger
from firecron.worker._logs import AttemptLogs, run_logger
from firecron.worker._runtime import _Runtime
from firecron.worker._text import MAX_ERROR_CHARS, describe

MAX_OUTPUT_BYTES: Final = 64 * 1024
"""Largest return value, as compact UTF-8 JSON, that is stored as the run's output."""

FENCE_HEADER: Final = "firecron-fence"
"""The header that carries a continuous schedule's generation (the fencing token) on
requests to systems outside firecron (:meth:`RunContext.fence_headers`). A receiver
keeps the highest token seen per resource and refuses requests carrying a lower one."""

_MAX_ID_CHARS: Final = 1500
_MAX_ATTEMPT: Final = 1_000_000
# The final write is retried a little: losing it costs a whole attempt (the watchdog
# would declare the run lost after heartbeat_timeout and run it again).
_END_WRITE_TRIES: Final = 3
_END_WRITE_BACKOFF_S: Final = 0.5
_CAS_TRIES: Final = 8
"""Refresh-and-retry rounds of one transition against concurrent watchdog writes."""

CHECK_INS_PER_LEASE: Final = 5
"""Without a decorator ``heartbeat_interval``, an attempt checks in this many times per
lease (its ``heartbeat_timeout``): every 60 s at the default 5-minute lease."""
RENEW_WITHIN_INTERVALS: Final = 2
"""A check-in renews the lease once at most this many check-in intervals of it are left
(the interval counted as at least ``heartbeat_timeout / CHECK_INS_PER_LEASE``): a
renewal that fails still has another try before the lease ends."""

if TYPE_CHECKING:
    from firecron._state_api import State

_log = logging.getLogger("firecron.worker")

ChangeHook = Callable[[Run, Change, Run], None]
"""``hook(run_before, change, run_after)``: see :data:`on_change`."""

on_change: list[ChangeHook] = []
"""Hooks called after every change the SDK applies to a run (start, lease renewals, end).

Each hook gets the run as it was, the applied :class:`~firecron.core.lifecycle.Change`
(``change.event`` names it, e.g. ``run.started``, ``run.succeeded``; renewals have
none) and the run as written. (The runs an end causes are claimed after the hooks,
by :meth:`_Execution.run_once`, through the runtime's dispatcher.)
Hooks run synchronously in the thread that made the write (the request thread or the
check-in thread) while that run's writes are serialised, in write order: they must be
quick and must not call back into the SDK for the same run. An exception in a hook is
logged and ignored; it never changes the run.
"""


class RunContext:
    """What a worker function is told about the run attempt it executes.

    Built by the SDK for each execution. It can also be built directly, for unit tests
    of a worker function: then :meth:`heartbeat` does nothing and :attr:`cancelled`
    stays False.
    """

    __slots__ = (
        "_execution",
        "_submits",
        "_upstream",
        "attempt",
        "generation",
        "params",
        "pipeline_run_id",
        "run_id",
        "schedule_id",
        "scheduled_for",
        "task",
        "trigger",
        "window_end",
    )

    def __init__(
        self,
        *,
        run_id: str,
        schedule_id: str,
        scheduled_for: datetime,
        attempt: int = 1,
        params: Mapping[str, JsonValue] | None = None,
        trigger: RunTrigger = RunTrigger.schedule,
        task: str | None = None,
        pipeline_run_id: str | None = None,
        upstream: Mapping[str, JsonValue] | None = None,
        generation: int | None = None,
        window_end: datetime | None = None,
    ) -> None:
        self.run_id = run_id
        """The run's id (deterministic for scheduled runs)."""
        self.schedule_id = schedule_id
        """The schedule the run belongs to."""
        self.scheduled_for = scheduled_for
        """Nominal occurrence time, timezone-aware (jitter not included)."""
        self.attempt = attempt
        """This attempt's number, 1 for the first try."""
        self.params: dict[str, JsonValue] = dict(params or {})
        """The schedule's (or the manual trigger's) parameters."""
        self.trigger = trigger
        """Why this attempt was sent (``retry`` for every attempt after the first)."""
        self.task = task
        """For a pipeline task: the task's id (its params already hold the pipeline's,
        the schedule's and the task's, in that order of precedence, lowest first)."""
        self.pipeline_run_id = pipeline_run_id
        """For a pipeline task: the pipeline run it belongs to."""
        self._upstream: dict[str, JsonValue] | None = (
            dict(upstream) if upstream is not None else None
        )
        self._submits: dict[str, int] = {}
        self.generation = generation
        """For a continuous schedule's run: its generation (1, 2, ...), the fencing token:
        a newer generation means this one no longer owns what it writes."""
        self.window_end = window_end
        """For a continuous schedule's run: when its window ends (then it should return,
        and the next generation takes over)."""
        self._execution: _Execution | None = None

    def keep_going(self) -> bool:
        """False once this instance should return: its window has passed (a continuous
        schedule's run), or it was asked to stop (pause, cancel, timeout), or it lost its
        lease: a check-in found the run no longer this attempt's (lost, a newer
        generation), or the lease has run out: no renewal of this attempt has succeeded
        for the run's heartbeat timeout (the watchdog may have declared it lost
        meanwhile: a process frozen, then thawed, must not carry on before its next
        check-in tells). Loop ``while ctx.keep_going():``; the SDK's check-ins keep the
        answer current (a cancel is seen within one check-in interval). No I/O (but
        the store-clock sync the SDK makes every few minutes)."""
        if self.cancelled:
            return False
        execution = self._execution
        now = execution.runtime.now() if execution is not None else datetime.now(UTC)
        if execution is not None and execution.lease_expired(now):
            return False
        return self.window_end is None or now < self.window_end

    def fence_headers(self) -> dict[str, str]:
        """``{"firecron-fence": "N"}`` for a continuous schedule's run (N its generation),
        to send with writes to systems outside firecron; empty for any other run. A
        receiver that keeps the highest N seen and refuses lower ones is safe from a
        stale instance that still runs after its successor took over."""
        if self.generation is None:
            return {}
        return {FENCE_HEADER: str(self.generation)}

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``ctx.log.info(...)``, ``.warning``, ...) whose records are stored
        with this attempt's logs (``firecron logs RUN_ID``), from any thread the function
        uses; ``logging`` records of the function's own thread are captured too. Outside
        a run started by the SDK, the plain ``firecron.run`` logger."""
        return self._execution.logs.logger if self._execution is not None else run_logger(None)

    @property
    def state(self) -> State:
        """The state collection (``get``, ``set``, ``delete``, ``list``; see
        :class:`firecron.State`), on this worker's store. A ``set`` or ``delete`` also
        releases the runs waiting on the key. Outside a run started by the SDK,
        :class:`RuntimeError`."""
        if self._execution is None:
            raise RuntimeError("ctx.state needs a run started by the firecron worker SDK")
        from firecron._state_api import State

        return State._on(self._execution.runtime, self._execution)

    @property
    def upstream(self) -> dict[str, JsonValue]:
        """For a pipeline task: the outputs of its upstream tasks, by task id (a skipped or
        failed one's output is null). Read from the store on first use (one read per
        upstream task), then kept. Empty for a run that is not a pipeline task."""
        if self._upstream is None:
            self._upstream = {} if self._execution is None else self._execution.upstream()
        return self._upstream

    def submit(
        self,
        schedule_id: str,
        params: Mapping[str, JsonValue] | None = None,
        key: str | None = None,
    ) -> str:
        """Start a run of ``schedule_id`` now ("submit now"), caused by this run; return its id.

        Exactly once per ``(run, key)``: a retried attempt (or a repeated call) that submits
        with the same key gets the same run id back and starts nothing new. Without a key
        the n-th keyless submit of that schedule in this execution is the key, so a
        function that submits the same things in the same order on a retry starts each
        once. The run has ``trigger: chained`` and ``cause_run_id``, ``params`` over the
        schedule's own, and follows the schedule's overlap policy. It is claimed and sent
        one-way before this returns (its acknowledgement, not its work, is waited for).

        Raises :class:`~firecron.errors.NotFoundError` for an unknown schedule and
        :class:`ValueError` for params that are not JSON or a bad key; outside a run
        started by the SDK, :class:`RuntimeError`.
        """
        if self._execution is None:
            raise RuntimeError("submit() needs a run started by the firecron worker SDK")
        if key is None:
            n = self._submits.get(schedule_id, 0) + 1
            self._submits[schedule_id] = n
            key = f"submit:{schedule_id}:{n}"
        elif not isinstance(key, str) or not 0 < len(key) <= 200:
            raise ValueError("submit key must be a string of 1 to 200 characters")
        return self._execution.submit(schedule_id, dict(params or {}), key)

    def heartbeat(self) -> None:
        """Renew this attempt's lease now, in this thread: one write, whatever is left
        of the lease (the SDK's check-ins renew it on their own when it nears its end).

        Useful before a long blocking call that could outlast what is left of the lease.
        Never raises: a failed renewal is logged, and the check-ins keep trying. Updates
        :attr:`cancelled`.
        """
        if self._execution is not None:
            self._execution.beat()

    @property
    def cancelled(self) -> bool:
        """True once the run should stop: the watchdog asked (``cancel_requested``,
        seen by a check-in, so within one check-in interval: 60 s at the default
        lease) or the run no longer belongs to this attempt.

        Long workers poll it and return early. What they return is still recorded if
        the run is still theirs; after a timeout the attempt ends ``timed_out`` (and
        may be retried) whatever they return.
        """
        return self._execution is not None and self._execution.cancelled.is_set()

    def __repr__(self) -> str:
        # params are left out on purpose: they may hold secrets and reprs end up in logs.
        return (
            f"RunContext(run_id={self.run_id!r}, schedule_id={self.schedule_id!r}, "
            + (f"task={self.task!r}, " if self.task is not None else "")
            + f"scheduled_for={self.scheduled_for.isoformat()!r}, attempt={self.attempt}, "
            f"trigger={self.trigger.value!r})"
        )


WorkerFunction = Callable[[RunContext], object]
"""What ``@worker`` decorates: ``fn(ctx)`` returning a JSON-serialisable value."""


class _Delivery(BaseModel):
    """The dispatch body (see ``transport.sender.dispatch_body``).

    Bounded so that nothing read from it can overflow later: ids fit a store key (a
    Firestore document id is at most 1,500 bytes) and ``attempt`` is far above any
    retry policy (at most 100 attempts).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str = Field(min_length=1, max_length=_MAX_ID_CHARS)
    schedule_id: str = Field(min_length=1, max_length=_MAX_ID_CHARS)
    scheduled_for: AwareDatetime
    attempt: int = Field(ge=1, le=_MAX_ATTEMPT, strict=True)
    trigger: RunTrigger
    params: dict[str, JsonValue]


# --- start ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unknown:
    """No run has the delivery's ``run_id``: nothing runs."""


@dataclass(frozen=True)
class _Refused:
    """The body's ``field`` disagrees with the stored ``run``: nothing runs, nothing is written."""

    run: Run
    field: str


@dataclass(frozen=True)
class _Duplicate:
    """Acknowledged, not executed: an earlier attempt, a run past starting, or a lost start race."""

    run: Run


def _sent_trigger(run: Run, attempt: int) -> RunTrigger:
    """The ``trigger`` a dispatch of ``attempt`` of ``run`` carries (see ``dispatch_body``)."""
    return RunTrigger.retry if attempt > 1 else run.trigger


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _disagreement(run: Run, delivery: _Delivery) -> str | None:
    """The first body field that disagrees with the stored run, or None when all agree.

    Params are compared as canonical JSON, so ``1`` and ``true`` differ (Python's
    ``==`` would not tell them apart), while key order does not matter.
    """
    if delivery.schedule_id != run.schedule_id:
        return "schedule_id"
    if delivery.scheduled_for != run.scheduled_for:
        return "scheduled_for"
    # An earlier attempt is a late or repeated delivery; a later one was never sent.
    if delivery.attempt > run.attempt:
        return "attempt"
    if delivery.trigger is not _sent_trigger(run, delivery.attempt):
        return "trigger"
    if _canonical(delivery.params) != _canonical(run.params):
        return "params"
    return None


def _begin(
    runtime: _Runtime, fn: WorkerFunction, interval: timedelta | None, delivery: _Delivery
) -> _Execution | _Unknown | _Refused | _Duplicate:
    """Check ``delivery`` against the stored run and start it (steps 4 to 6 of the
    package docstring). ``interval`` is the decorator's ``heartbeat_interval`` (None: a
    fifth of the run's lease; see :class:`_Execution`).

    Returns the started :class:`_Execution`, whose function has not run yet, or why
    nothing runs. Store failures raise :class:`~firecron.errors.StoreError`.
    """
    store = runtime.store
    run = runtime.call(store.get_run(delivery.run_id))
    if run is None:
        return _Unknown()
    field = _disagreement(run, delivery)
    if field is not None:
        _log.warning(
            "firecron worker: refused a delivery of run %s: its %s differs from the stored run",
            run.id,
            field,
        )
        return _Refused(run, field)
    if run.attempt != delivery.attempt or run.state not in (RunState.pending, RunState.dispatched):
        return _Duplicate(run)
    change = lifecycle.start(run, runtime.now(), runtime.timeouts)
    # Compare-and-set on the version just read: of two deliveries of this attempt,
    # exactly one starts it. `start` expects pending|dispatched, checked above.
    started = runtime.call(store.update_run(run.id, change.expect, change.changes, current=run))
    if started is None:
        again = runtime.call(store.get_run(run.id))
        return _Duplicate(again or run)
    # Everything the function is told comes from the stored record: the body only
    # names the run, and was checked against it above.
    ctx = RunContext(
        run_id=started.id,
        schedule_id=started.schedule_id,
        scheduled_for=started.scheduled_for,
        attempt=started.attempt,
        params=started.params,
        trigger=_sent_trigger(started, started.attempt),
        task=started.task,
        pipeline_run_id=started.parent_run_id,
        generation=started.generation,
        window_end=(
            started.started_at + started.window
            if started.window is not None and started.started_at is not None
            else None
        ),
    )
    execution = _Execution(runtime, fn, ctx, started, interval)
    # Events already in the record before this start were emitted by their writers.
    execution.known = {e.id for e in run.events}
    _notify(run, change, started)
    return execution


def _notify(before: Run, change: Change, after: Run) -> None:
    for hook in list(on_change):
        try:
            hook(before, change, after)
        except Exception:
            _log.exception("firecron worker: on_change hook %r failed on run %s", hook, after.id)


def _line(payload: Mapping[str, Any]) -> bytes:
    return (json.dumps(payload, separators=(",", ":")) + "\n").encode()


# --- the end ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """How the function ended: an output to store, or an error."""

    output: JsonValue = None
    error: str | None = None
    retry: bool = True


def _encode_output(value: object) -> _Outcome:
    """Check the return value: JSON, at most ``MAX_OUTPUT_BYTES``; a failure otherwise."""
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return _Outcome(error=_describe_output(exc), retry=False)
    size = len(encoded.encode())
    if size > MAX_OUTPUT_BYTES:
        return _Outcome(
            error=(
                f"output too large: {size:,} bytes of JSON, the limit is "
                f"{MAX_OUTPUT_BYTES:,} (64 KiB); store large results elsewhere and return a reference"
            ),
            retry=False,
        )
    # Round-trip so that only plain JSON types (no tuples, no int keys) reach the store.
    output: JsonValue = json.loads(encoded)
    return _Outcome(output=output)


def _describe_output(exc: BaseException) -> str:
    return one_line(f"output is not JSON-serialisable: {describe(exc)}", MAX_ERROR_CHARS)


def _written(run: Run, change: Change) -> Run | None:
    """The record that applying ``change`` to ``run`` stores (version aside), or None
    when it cannot be computed (the store would have refused the write anyway)."""
    try:
        return Run.model_validate({**run.model_dump(), **change.changes})
    except ValidationError:
        return None


class _Execution:
    """One started attempt: runs the function once, checks in, records the end.

    The attempt holds a lease on its run: the watchdog may declare it lost once
    ``heartbeat_timeout`` has passed since its latest renewal (``heartbeat_at``, or the
    start). A thread checks in every ``interval`` (:meth:`check_in`): it renews the
    lease (one write) only when it nears its end, and otherwise reads the run (one
    read) to see a cancel request, or that the run is no longer this attempt's.

    ``lock`` serialises this run's store calls between the request thread and the
    check-in thread, and ``run`` is the record as last written by us, from which the
    next transition is computed.
    """

    def __init__(
        self,
        runtime: _Runtime,
        fn: WorkerFunction,
        ctx: RunContext,
        run: Run,
        interval: timedelta | None,
    ) -> None:
        self.runtime = runtime
        self.fn = fn
        self.ctx = ctx
        self.run = run
        self.heartbeat_timeout = (
            run.heartbeat_timeout
            if run.heartbeat_timeout is not None
            else runtime.timeouts.heartbeat_timeout
        )
        lease_share = self.heartbeat_timeout / CHECK_INS_PER_LEASE
        # A schedule's short heartbeat_timeout (a continuous one's recovery bound) needs
        # check-ins at least three times within it, whatever the decorator asked for.
        self.interval = min(
            lease_share if interval is None else interval, self.heartbeat_timeout / 3
        )
        """Time between check-ins: the decorator's ``heartbeat_interval``, else a fifth of
        the lease; at most a third of it."""
        # Counting the interval as at least a fifth of the lease: a worker that checks
        # in more often sees a cancel sooner (more reads), never renews more often.
        self.renew_within = RENEW_WITHIN_INTERVALS * max(self.interval, lease_share)
        """A check-in renews once this much of the lease, or less, is left."""
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.ended = threading.Event()
        """Set when the function has returned: no check-in is made after it."""
        self.orphaned = False
        """True once a write or a check-in found the run no longer this attempt's (or not
        running)."""
        self.known: set[str] = set()
        """Ids of this run's events already logged and offered to their sinks."""
        self.final: dict[str, Any] | None = None
        self._ran = False
        self._ran_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.logs = AttemptLogs(runtime, run.id, run.attempt, retention=run.retention)
        """This attempt's captured log lines, flushed at each check-in and at the end."""
        ctx._execution = self
        if run.cancel_requested:
            self.cancelled.set()

    # the lease

    def lease_end(self) -> datetime | None:
        """When the watchdog may declare this attempt lost: its latest renewal (or its
        start), as recorded by this attempt, plus its heartbeat timeout."""
        run = self.run
        renewed = run.heartbeat_at or run.started_at
        return None if renewed is None else renewed + self.heartbeat_timeout

    def lease_expired(self, now: datetime) -> bool:
        """True when no renewal of this attempt has succeeded for its heartbeat timeout
        (counted from the last renewal or the start, as recorded): the watchdog may
        have declared the run lost, so a continuous instance must not go on."""
        end = self.lease_end()
        return end is not None and now >= end

    def renewal_due(self, now: datetime) -> bool:
        """True when a check-in at ``now`` (the store's time) renews the lease: at most
        :attr:`renew_within` of it is left."""
        end = self.lease_end()
        return end is None or end - now <= self.renew_within

    def lose_lease(self) -> None:
        """The run is no longer this attempt's (a fenced write was refused): stop
        checking in and make ``keep_going()`` false."""
        self.orphaned = True
        self.cancelled.set()

    def _start_check_ins(self) -> None:
        self._thread = threading.Thread(
            target=self._check_in_loop, name=f"firecron-check-in-{self.run.id}", daemon=True
        )
        self._thread.start()

    def _check_in_loop(self) -> None:
        while not self.ended.wait(self.interval.total_seconds()):
            if self.orphaned:
                return
            self.check_in()

    def check_in(self) -> None:
        """One check-in (the check-in thread's, every :attr:`interval`); never raises.

        Renews the lease (:meth:`beat`, one write) when :meth:`renewal_due`; otherwise
        reads the run (:meth:`look`, one read). Then writes the lines logged since the
        last check-in, in one write (none when nothing was logged). A renewal that fails
        is tried again at the next check-in, which finds even less of the lease left.
        """
        if self.renewal_due(self.runtime.now()):
            self.beat()
        else:
            self.look()
        # Outside the run's lock: the user's lines, not the lease.
        self.logs.flush()

    def look(self) -> None:
        """Read the run: set :attr:`cancelled` on a cancel request, and give the work up
        (orphaned, cancelled) when the run is no longer this attempt's or no longer
        running. Never raises; writes nothing."""
        with self.lock:
            if self.ended.is_set() or self.orphaned:
                return
            try:
                fresh = self.runtime.call(self.runtime.store.get_run(self.run.id))
            except Exception as exc:
                _log.warning(
                    "firecron worker: check-in of run %s failed: %s", self.run.id, describe(exc)
                )
                return
            if (
                fresh is None
                or fresh.attempt != self.run.attempt
                or fresh.state is not RunState.running
            ):
                self._give_up(self.run)
                return
            if fresh.cancel_requested:
                self.cancelled.set()

    def _give_up(self, run: Run) -> None:
        """Timed out, lost or retried by the watchdog: the work is no longer ours."""
        self.lose_lease()
        _log.warning(
            "firecron worker: run %s attempt %d is no longer running here; cancelling",
            run.id,
            run.attempt,
        )

    def beat(self) -> None:
        """Renew the lease now: one write (``lifecycle.heartbeat``), whatever is left of
        it. Never raises (a failure is logged and the next check-in retries)."""
        with self.lock:
            if self.ended.is_set() or self.orphaned:
                return
            now = self.runtime.now()
            try:
                before, change, after, _ = self._transition(
                    lambda r: lifecycle.heartbeat(r, now, self.runtime.timeouts)
                )
            except Exception as exc:
                # A store outage must not end the check-ins: the next one retries.
                _log.warning(
                    "firecron worker: renewing the lease of run %s failed: %s",
                    self.run.id,
                    describe(exc),
                )
                return
            if after is None:
                self._give_up(before)
                return
            self.run = after
            if after.cancel_requested:
                self.cancelled.set()
            _notify(before, change, after)

    # execution

    def stream(self) -> Iterator[bytes]:
        """The response body: the started line at once, the final line after the end."""
        yield _line({"run_id": self.run.id, "state": RunState.running.value})
        final = self.run_once()
        yield _line(final)

    def run_once(self) -> dict[str, Any]:
        """Run the function and record its end, the first time only; the final line."""
        with self._ran_lock:
            if self._ran:
                return self.final or {"run_id": self.run.id, "state": None}
            self._ran = True
        # The start's event goes out after the 202 (a slow sink must not delay the ack)
        # and before the work (so it precedes the end's).
        self._emit()
        # Check-ins start with the work, not with the start write: if the stream were
        # never run, the watchdog must see this attempt's lease run out and retry it.
        self._start_check_ins()
        self.logs.open()
        try:
            outcome = self._call()
        finally:
            # Stop check-ins before the end is written; one in flight finishes first
            # (the end write below takes the same lock).
            self.ended.set()
            # Every line is stored before the end is: a reader that sees the run ended
            # (`firecron logs --follow`) has them all.
            self.logs.close()
            self.logs.flush()
        self.final = self._record(outcome)
        self.logs.flush()  # a second chance for lines whose first write failed
        if self._thread is not None:
            self._thread.join(timeout=5)
        # The runs this end causes start before its events go out: a slow sink must not
        # delay the next task.
        self._settle()
        self._emit()
        return self.final

    def _settle(self) -> None:
        """Claim and fire what this run's end causes (never raises: a failure leaves
        ``settle_at`` set, and the next tick settles it)."""
        run = self.run
        if not run.is_terminal or run.settle_at is None:
            return
        try:
            self.runtime.call(self.runtime.dispatcher.settle(run))
        except Exception as exc:
            _log.warning("firecron worker: settling the end of run %s: %s", run.id, describe(exc))

    def submit(self, schedule_id: str, params: dict[str, JsonValue], key: str) -> str:
        """:meth:`RunContext.submit`: claim and fire a run caused by this one."""
        try:
            encoded = json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"submit params must be JSON: {describe(exc)}") from None
        clean: dict[str, JsonValue] = json.loads(encoded)
        return self.runtime.call(self.runtime.dispatcher.submit(self.run, schedule_id, clean, key))

    def upstream(self) -> dict[str, JsonValue]:
        """The outputs of this task run's upstream tasks, by task id (one read each)."""
        run = self.run
        if run.parent_run_id is None or not run.upstream:
            return {}
        from firecron.core.runs import task_run_id

        ids = {task_run_id(run.parent_run_id, name): name for name in run.upstream}
        found = self.runtime.call(self.runtime.store.get_runs(list(ids)))
        outputs: dict[str, JsonValue] = {name: None for name in run.upstream}
        for upstream_run in found:
            outputs[ids[upstream_run.id]] = upstream_run.output
        return outputs

    def _emit(self) -> None:
        """Log this run's new events and try their deliveries once (bounded; never raises)."""
        try:
            self.run = self.runtime.call(
                outbox.emit(
                    self.runtime.store,
                    self.runtime.notifier,
                    self.run,
                    self.known,
                    self.runtime.now(),
                )
            )
        except Exception as exc:
            # Recorded already: the watchdog retries what was not delivered.
            _log.warning("firecron worker: events of run %s: %s", self.run.id, describe(exc))

    def _call(self) -> _Outcome:
        try:
            value = self.fn(self.ctx)
        except Exception as exc:
            _log.error(
                "firecron worker: run %s attempt %d raised",
                self.ctx.run_id,
                self.ctx.attempt,
                exc_info=exc,
            )
            return _Outcome(error=describe(exc))
        except BaseException as exc:
            # SystemExit and friends: record the failure, then let them do their job.
            _log.error(
                "firecron worker: run %s attempt %d exited",
                self.ctx.run_id,
                self.ctx.attempt,
                exc_info=exc,
            )
            self.ended.set()
            self._record(_Outcome(error=describe(exc)))
            raise
        return _encode_output(value)

    def _record(self, outcome: _Outcome) -> dict[str, Any]:
        """Write the end (a lifecycle transition) and describe it as the final line."""
        with self.lock:
            now = self.runtime.now()

            def end(run: Run) -> Change:
                # After a timeout this records `timed_out`: the acknowledgement of the
                # cancel request that the watchdog's retry waits for.
                return lifecycle.finish(
                    run,
                    now,
                    self.runtime.timeouts,
                    output=outcome.output,
                    error=outcome.error,
                    retry=outcome.retry,
                )

            before, change, after, seen = self._write_end(end)
            if after is not None:
                self.run = after
                _notify(before, change, after)
                return {"run_id": before.id, "state": after.state.value, "recorded": True}
        state = seen.state.value if seen is not None else None
        _log.warning(
            "firecron worker: the end of run %s attempt %d was not recorded (the run is %s)",
            before.id,
            before.attempt,
            state or "unreadable",
        )
        return {"run_id": before.id, "state": state, "recorded": False}

    def _transition(
        self,
        make: Callable[[Run], Change],
        sent: list[tuple[Run, Change, Run]] | None = None,
    ) -> tuple[Run, Change, Run | None, Run | None]:
        """Apply ``make(run)`` by version compare-and-set, refreshing on a concurrent write.

        The watchdog may write the run meanwhile (an SLA breach, event deliveries): then
        the run is re-read and, if it is still this attempt in an expected state, the
        change is recomputed from the fresh record, so nothing it wrote is overwritten.
        A run that has moved on to another attempt is never written: every write is a
        compare-and-set on a version of this attempt's record, so a stale attempt (one
        the watchdog declared lost and retried while its instance was frozen) can
        neither extend the new attempt's deadline nor record its output, error or state.

        ``sent`` collects ``(run, change, record it stores)`` for every write sent, and
        is read too: a write whose call raised may still have committed, and a later
        compare-and-set then loses to it. A re-read record equal to one of those (the
        version token aside) is that write's result and counts as applied.

        Returns ``(run the change was computed from, change, recorded run or None, the
        run as last seen: recorded, re-read, or None when it could not be read)``.
        """
        sent = [] if sent is None else sent
        run = self.run
        change = make(run)
        for _ in range(_CAS_TRIES):
            written = _written(run, change)
            if written is not None:
                sent.append((run, change, written))
            after = self.runtime.call(
                self.runtime.store.update_run(run.id, change.expect, change.changes, current=run)
            )
            if after is not None:
                return run, change, after, after
            fresh = self.runtime.call(self.runtime.store.get_run(run.id))
            for sent_run, sent_change, stored in sent:
                if fresh == stored:
                    return sent_run, sent_change, fresh, fresh
            if fresh is None or fresh.attempt != run.attempt or fresh.state not in change.expect:
                return run, change, None, fresh
            run = fresh
            change = make(run)
        return run, change, None, run

    def _write_end(
        self, make: Callable[[Run], Change]
    ) -> tuple[Run, Change, Run | None, Run | None]:
        """:meth:`_transition`, tried :data:`_END_WRITE_TRIES` times while the store
        fails; a try that raised after its write committed is recognised by the next."""
        before, change = self.run, make(self.run)
        sent: list[tuple[Run, Change, Run]] = []
        for attempt in range(1, _END_WRITE_TRIES + 1):
            try:
                return self._transition(make, sent)
            except Exception as exc:
                _log.warning(
                    "firecron worker: recording the end of run %s failed (try %d/%d): %s",
                    before.id,
                    attempt,
                    _END_WRITE_TRIES,
                    describe(exc),
                )
                if attempt < _END_WRITE_TRIES:
                    time.sleep(_END_WRITE_BACKOFF_S * attempt)
        return before, change, None, self._read_quietly(before.id)

    def _read_quietly(self, run_id: str) -> Run | None:
        """The stored run, or None when it cannot be read (logged)."""
        try:
            return self.runtime.call(self.runtime.store.get_run(run_id))
        except Exception as exc:
            _log.warning("firecron worker: cannot re-read run %s: %s", run_id, describe(exc))
            return None
