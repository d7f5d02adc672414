"""The dispatcher service: one tick claims and fires the due occurrences, then runs the watchdog.

A tick (:meth:`Dispatcher.tick`):

1. pages through the due schedules (one indexed query per page) until the page is
   short or ``FIRECRON_TICK_BUDGET`` is spent;
2. plans each due schedule (pure core) and claims it with one atomic write, at most
   ``FIRECRON_CONCURRENCY`` claims at once; a lost claim means another dispatcher won;
3. fires each claimed run as soon as its claim commits: a one-way POST that waits at
   most ``ack_timeout`` for its acknowledgement, never for the work; the outcome is
   recorded with a version compare-and-set (one write, no read);
4. runs the watchdog over the runs whose ``watch_at`` has passed (one indexed query):
   re-sends stale pending runs as the same attempt (same key), marks lost runs, asks
   timed-out runs to stop (retrying them once they have), records SLA breaches, starts
   due retries, releases queued runs, fails pipeline runs past their timeout, and
   settles ended runs whose caused runs were never claimed (their recorder died).

Whatever a write of the dispatcher ends, it settles (:mod:`firecron.causes`): the runs
the end causes (``then`` steps, pipeline tasks) are claimed and fired at once. Firing a
``pipeline`` target starts the pipeline run (one atomic write with its task runs), and
firing a ``notify`` target sends its message.

A duplicate or overlapping tick is harmless: every write is a compare-and-set, and a
POST goes out only after the write that owns it has committed.

Time is the store's (docs/design.md, "Clocks"): a tick first reads the store's clock
(:meth:`Store.clock`). When the dispatcher's own clock is more than
:data:`MAX_CLOCK_SKEW` off it, the tick fires nothing, does no watchdog action, logs one
error line and emits ``dispatcher.clock_skew``; otherwise the store's time is the tick's
``now``, and the records it writes are stamped with the local clock corrected by the
measured offset.

One schedule or run never stops a tick: any failure while planning, claiming or firing
a schedule is recorded on it (``last_error``, status ``error``), announced as
``schedule.error``, and its ``next_fire_at`` moves on by ``planning.ERROR_BACKOFF``;
a failure on one run in the watchdog is logged and counted. A store error (the store
unreachable or locked) is not the schedule's fault: it is logged and counted, and the
schedule stays due for the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as _secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from firecron import outbox
from firecron._gc import gc_eased
from firecron.causes import Causes
from firecron.core import events, lifecycle, pipelines, planning
from firecron.core.lifecycle import RunTimeouts, SendOutcome, WatchAction
from firecron.core.models import (
    JsonValue,
    OverlapPolicy,
    StoredSchedule,
    TargetAuth,
    TargetDelivery,
)
from firecron.core.render import error_line, one_line, rfc3339
from firecron.core.runs import Run, RunState, RunTrigger, manual_run_id
from firecron.core.shards import Shard
from firecron.errors import FirecronError, InvalidInputError, NotFoundError, StoreError
from firecron.outbox import Deliverer
from firecron.settings import Settings
from firecron.store.base import Store, clock_offset
from firecron.transport import (
    Dispatch,
    GoogleIdTokens,
    IdTokenProvider,
    Sender,
    SendResult,
    build_dispatch,
    resolve_url,
)
from firecron.transport.cloud_tasks import TaskQueue, dispatch_deadline
from firecron.waits import Waits

__all__ = [
    "MAX_CLOCK_SKEW",
    "TASKS_LOOKAHEAD",
    "Dispatcher",
    "TickSummary",
    "run_tick",
    "timeouts_for",
]

log = logging.getLogger("firecron.dispatch")

PAGE_SIZE = 500
"""Due schedules (and due watches) read per query."""
TASKS_LOOKAHEAD = timedelta(seconds=75)
"""How far ahead a tick plans ``cloud_tasks`` occurrences: the tick's interval and 15 s
more, so each occurrence is enqueued at a tick before it with ``schedule_time`` at its
exact second, even the one due on the next tick's own second when that tick starts
late (Cloud Scheduler's own delay, a slow store) or takes a second to plan. Overlapping
windows plan nothing twice: planning goes on from the schedule's ``next_fire_at``."""
MAX_CLOCK_SKEW = timedelta(seconds=10)
"""A tick fires nothing when the dispatcher's clock is further than this from the store's."""
_MAX_ERROR_CHARS = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


def timeouts_for(settings: Settings) -> RunTimeouts:
    """Watchdog deadlines for these settings (see :meth:`RunTimeouts.for_tick`)."""
    return RunTimeouts.for_tick(settings.tick_budget, settings.ack_timeout)


_SUMMARY_FIRST = frozenset({"started_at", "shard", "continuation"})
"""Summary fields :meth:`TickSummary.absorb` keeps from the chain's first tick."""
_SUMMARY_LAST = frozenset({"finished_at", "more_due", "clock_skew_s", "skewed"})
"""Summary fields :meth:`TickSummary.absorb` takes from the later tick."""


@dataclass
class TickSummary:
    """What one tick did; printed by ``firecron tick`` and returned by ``dispatch``."""

    started_at: datetime
    finished_at: datetime | None = None
    due: int = 0
    """Due schedules read."""
    claimed: int = 0
    """Schedules this tick claimed."""
    lost_claims: int = 0
    """Claims another dispatcher (or a concurrent edit) won."""
    fired: int = 0
    """Runs sent (first attempts, retries and re-fires)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Send outcomes: acknowledged, unacknowledged, retryable, permanent."""
    skipped: int = 0
    queued: int = 0
    missed: int = 0
    coalesced: int = 0
    watched: int = 0
    """Runs the watchdog looked at."""
    events: Counter[str] = field(default_factory=Counter)
    """Run events by type (run.lost, run.sla_breached, run.retrying...)."""
    pages: int = 0
    more_due: bool = False
    """True when the budget ran out with due work left (the next tick continues)."""
    errors: list[str] = field(default_factory=list)
    """One line per schedule or run that could not be handled (the tick goes on)."""
    schedule_errors: int = 0
    """Schedules whose failure was recorded on them (``last_error``, ``schedule.error``)."""
    clock_skew_s: float | None = None
    """This dispatcher's clock minus the store's, in seconds (None: ``now`` was given)."""
    skewed: bool = False
    """True when the skew exceeded :data:`MAX_CLOCK_SKEW`, so the tick fired nothing."""
    caused: int = 0
    """Runs claimed because another run ended (``then`` steps, submits)."""
    settled: int = 0
    """Ended runs whose caused runs were all claimed (by their recorder or by this sweep)."""
    released: int = 0
    """Waiting runs whose wait's condition held (they were fired)."""
    waits_looked: int = 0
    """Waiting runs whose key the watchdog read (their ``every`` had passed)."""
    shard: str | None = None
    """The shard this tick covered, ``I/N`` (None: every schedule and run)."""
    continuation: int = 0
    """This tick's place in its chain: 0 for the tick the scheduler (or a user) started,
    ``k`` for the k-th continuation after it."""
    continuations: int = 0
    """Continuations that followed this tick: folded into this summary by
    :meth:`Dispatcher.tick_chain`; in the cloud, 1 when it asked for the next page."""

    def absorb(self, later: TickSummary) -> None:
        """Fold ``later``, the next tick of the same chain, into this summary.

        Counts add up, errors are appended (the JSON keeps the first 50), ``more_due``
        and ``finished_at`` are the later tick's (it is the chain's end so far), and
        ``continuations`` grows by one plus those the later tick had absorbed.
        """
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(later, f.name)
            if f.name in _SUMMARY_FIRST:
                continue
            if f.name in _SUMMARY_LAST:
                setattr(self, f.name, theirs)
            elif f.name == "continuations":
                self.continuations += 1 + theirs
            elif isinstance(mine, Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, int) and not isinstance(mine, bool):
                setattr(self, f.name, mine + theirs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (times RFC 3339 UTC)."""

        def ts(value: datetime | None) -> str | None:
            return None if value is None else rfc3339(value)

        return {
            "started_at": ts(self.started_at),
            "finished_at": ts(self.finished_at),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3)
            if self.finished_at
            else None,
            "due": self.due,
            "claimed": self.claimed,
            "lost_claims": self.lost_claims,
            "fired": self.fired,
            "outcomes": dict(self.outcomes),
            "skipped": self.skipped,
            "queued": self.queued,
            "missed": self.missed,
            "coalesced": self.coalesced,
            "watched": self.watched,
            "events": dict(self.events),
            "pages": self.pages,
            "more_due": self.more_due,
            "errors": self.errors[:50],
            "schedule_errors": self.schedule_errors,
            "clock_skew_s": self.clock_skew_s,
            "skewed": self.skewed,
            "caused": self.caused,
            "settled": self.settled,
            "released": self.released,
            "waits_looked": self.waits_looked,
            "shard": self.shard,
            "continuation": self.continuation,
            "continuations": self.continuations,
        }


class Dispatcher:
    """Claims and fires due occurrences and runs the watchdog against one store.

    ``clock`` is the local clock (injectable: tests skew it). A tick compares it with the
    store's clock and plans at the store's time; record stamps (signatures, send times)
    are ``clock()`` plus the offset the latest tick measured (:meth:`now`). A tick's
    planning instant can instead be passed explicitly (tests, backfills): it is then
    trusted as given and no clock is compared. The dispatcher keeps nothing between
    ticks but its HTTP sender, its Cloud Tasks client and that offset; :meth:`aclose`
    releases them.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        sender: Sender | None = None,
        task_queue: TaskQueue | None = None,
        id_tokens: IdTokenProvider | None = None,
        clock: Callable[[], datetime] = _utcnow,
        timeouts: RunTimeouts | None = None,
        page_size: int = PAGE_SIZE,
        notifier: Deliverer | None = None,
        defers: bool = False,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.timeouts = timeouts or timeouts_for(settings)
        self.page_size = page_size
        self._sender = sender
        self._task_queue = task_queue
        self._id_tokens = id_tokens
        self._notifier: Deliverer | None = notifier
        self._owns_notifier = notifier is None
        self.defers = defers
        """True in a process that fires runs for others (a worker, ``firecron.State``): a
        run it cannot send from here (no ``FIRECRON_FUNCTIONS_BASE_URL``, no ID token, no
        signing secret) is left ``pending`` and due at once, for the next tick to send,
        instead of failing for want of the dispatcher's settings."""
        self._offset = timedelta(0)
        self.causes = Causes(self)
        self.waits = Waits(self)

    def now(self) -> datetime:
        """The local clock corrected to the store's by the offset the latest tick measured."""
        return self.clock() + self._offset

    @property
    def sender(self) -> Sender:
        """The HTTP sender, created on first use (so constructing does no I/O)."""
        if self._sender is None:
            self._sender = Sender(
                concurrency=self.settings.concurrency,
                max_open=self.settings.max_open,
                ack_timeout=self.settings.ack_timeout.total_seconds(),
                allow_private_targets=self.settings.allow_private_targets,
                ca_file=self.settings.ca_file,
            )
        return self._sender

    @property
    def notifier(self) -> Deliverer:
        """The event notifier, created on first use."""
        if self._notifier is None:
            from firecron.notify import Notifier

            self._notifier = Notifier(self.settings)
        return self._notifier

    @property
    def task_queue(self) -> TaskQueue | None:
        """The Cloud Tasks queue of ``cloud_tasks`` delivery, created on first use; None
        without ``FIRECRON_TASKS_QUEUE``."""
        if self._task_queue is None and self.settings.tasks_queue is not None:
            self._task_queue = TaskQueue(
                self.settings.tasks_queue,
                service_account=self.settings.tasks_service_account,
                allow_private_targets=self.settings.allow_private_targets,
                emulator_host=self.settings.tasks_emulator_host,
                namespace=self.settings.namespace,
            )
        return self._task_queue

    async def aclose(self) -> None:
        """Close the sender's, the task queue's and the notifier's connections."""
        if self._sender is not None:
            await self._sender.aclose()
        if self._task_queue is not None:
            await self._task_queue.aclose()
        if self._notifier is not None and self._owns_notifier:
            await self._notifier.aclose()

    async def _emit(self, run: Run, known: set[str], summary: TickSummary) -> Run:
        """Log and offer the run's new events to their sinks; never raises."""
        try:
            return await outbox.emit(self.store, self.notifier, run, known, self.now())
        except FirecronError as exc:
            summary.errors.append(f"run {run.id}: events: {exc}")
            return run

    # -- the tick -------------------------------------------------------------------------

    async def tick(self, now: datetime | None = None, *, shard: Shard | None = None) -> TickSummary:
        """Run one tick at ``now`` (default: the clock). Never raises for one bad schedule or run.

        With ``shard``, the tick claims only the due schedules and watches only the due
        runs whose bucket the shard owns (:mod:`firecron.core.shards`): N such ticks, one
        per shard, together do what one unsharded tick does, each on its own process or
        instance. Whatever the shards, claims are compare-and-sets, so ticks of two
        shard counts overlapping (a re-shard) fire each occurrence once.
        """
        with gc_eased():
            return await self._tick(now, shard)

    async def tick_chain(
        self, now: datetime | None = None, *, shard: Shard | None = None
    ) -> TickSummary:
        """A tick, then, while it ran out of budget with work still due, the next page at
        once, as another tick: at most ``FIRECRON_MAX_CONTINUATIONS`` of them.

        This is ``firecron tick``'s loop (the cloud's dispatch continues by POSTing to
        itself instead, one tick per request). A continuation that finds nothing due
        ends the chain, as does one that finished within its budget. Returns the first
        tick's summary with every continuation folded in (:meth:`TickSummary.absorb`):
        ``continuations`` counts them, ``more_due`` is the last one's.
        """
        summary = await self.tick(now, shard=shard)
        while summary.more_due and summary.continuations < self.settings.max_continuations:
            later = await self.tick(now, shard=shard)
            later.continuation = summary.continuations + 1
            summary.absorb(later)
            if later.due == 0:
                break
        return summary

    async def _tick(self, now: datetime | None, shard: Shard | None) -> TickSummary:
        summary = TickSummary(started_at=self.now())
        summary.shard = None if shard is None else str(shard)
        if now is None:
            store_now, offset = await clock_offset(self.store, self.clock)
            summary.clock_skew_s = round(-offset.total_seconds(), 3)
            if abs(offset) > MAX_CLOCK_SKEW:
                self._clock_skewed(store_now - offset, store_now, summary)
                summary.finished_at = self.now()
                return summary
            self._offset = offset
            now = store_now
            summary.started_at = now
        deadline = time.monotonic() + self.settings.tick_budget.total_seconds()
        claim_slots = asyncio.Semaphore(self.settings.concurrency)
        fires: list[asyncio.Task[None]] = []
        seen: set[str] = set()
        # With a Cloud Tasks queue, occurrences of the coming minute are handed over now
        # (each sent at its exact second), so the query reads that far ahead.
        reach = now + (TASKS_LOOKAHEAD if self.settings.tasks_queue is not None else timedelta(0))
        while True:
            due = await self.store.due_schedules(reach, self.page_size, shard=shard)
            fresh = [s for s in due if s.id not in seen]
            if not fresh:
                break
            summary.pages += 1
            summary.due += len(fresh)
            seen.update(s.id for s in fresh)
            latest = await self._latest_runs(fresh)
            await asyncio.gather(
                *(self._claim_and_fire(s, latest, now, summary, claim_slots, fires) for s in fresh)
            )
            if len(due) < self.page_size:
                break
            if time.monotonic() >= deadline:
                summary.more_due = True
                break
        await self._watchdog(now, summary, fires, shard)
        if fires:
            await asyncio.gather(*fires)
        summary.finished_at = self.now()
        return summary

    def _clock_skewed(self, local: datetime, store_now: datetime, summary: TickSummary) -> None:
        """Refuse to act on a skewed clock: one error line, the event, the summary says so.

        The offset is not applied instead: a clock this far off is broken (no NTP, a
        frozen VM resumed), and the store's time alone cannot tell how it will move next.
        """
        event = events.clock_skew_event(local, store_now, MAX_CLOCK_SKEW)
        line = str(event.data["error"])
        summary.skewed = True
        summary.errors.append(f"clock skew: {line}")
        summary.events[event.type.value] += 1
        log.error("clock skew: %s", line)
        try:
            self.notifier.log(event)
        except Exception as exc:  # the log sink must not turn a refusal into a crash
            log.error("clock skew: logging the event failed: %s", _error_line(exc))

    async def _latest_runs(self, schedules: list[StoredSchedule]) -> dict[str, Run]:
        """Latest runs of the schedules whose overlap policy needs them (one batched read)."""
        wanted = [
            s.state.last_run_id
            for s in schedules
            if s.state.last_run_id
            and s.spec.target.tracks_end
            and s.spec.overlap is not OverlapPolicy.allow
        ]
        if not wanted:
            return {}
        return {r.id: r for r in await self.store.get_runs(wanted)}

    async def _claim_and_fire(
        self,
        stored: StoredSchedule,
        latest: Mapping[str, Run],
        now: datetime,
        summary: TickSummary,
        slots: asyncio.Semaphore,
        fires: list[asyncio.Task[None]],
    ) -> None:
        async with slots:
            try:
                latest_run = latest.get(stored.state.last_run_id or "")
                plan = planning.plan(
                    stored,
                    latest_run,
                    now,
                    pending_grace=self.timeouts.pending_grace,
                    default_retention=self.settings.run_retention,
                    lookahead=self._lookahead(stored),
                )
                if not plan.runs and plan.new_state == stored.state:
                    return
                created = await self.store.claim(stored, plan.new_state, plan.runs)
            except StoreError as exc:
                # The store's failure, not the schedule's: it stays due for the next tick.
                summary.errors.append(f"schedule {stored.id}: {exc}")
                log.error("schedule %s: %s", stored.id, exc)
                return
            except Exception as exc:  # any other failure is this schedule's alone
                await self._schedule_failed(stored, now, exc, summary)
                return
        if created is None:
            summary.lost_claims += 1
            return
        summary.claimed += 1
        summary.missed += plan.missed_count
        summary.coalesced += plan.coalesced
        for run in created:
            if run.state in (RunState.skipped, RunState.missed):
                summary.skipped += run.state is RunState.skipped
                fires.append(asyncio.create_task(self._emit_task(run, summary)))
            elif run.state is RunState.queued:
                summary.queued += 1
            elif run.state is RunState.waiting:
                # A gated occurrence: look at its key at once (the watchdog looks later).
                fires.append(asyncio.create_task(self._look_task(run, summary)))
            else:
                # Fire as soon as this claim commits; the claim slot is already free, so
                # waiting for acknowledgements never slows other claims down.
                fires.append(asyncio.create_task(self._fire_task(run, summary)))

    async def _schedule_failed(
        self, stored: StoredSchedule, now: datetime, exc: BaseException, summary: TickSummary
    ) -> None:
        """Record a failure on its schedule, move it on, announce it; never raises.

        The state is written with the claim's compare-and-set on the version read, so a
        concurrent apply or claim wins and nothing is overwritten.
        """
        error = _error_line(exc)
        state = planning.errored(stored.state, now, error)
        summary.errors.append(f"schedule {stored.id}: {error}")
        log.error(
            "schedule %s: %s; next try at %s",
            stored.id,
            error,
            rfc3339(state.next_fire_at) if state.next_fire_at else "never",
        )
        try:
            recorded = await self.store.claim(stored, state, [])
        except Exception as write_exc:
            summary.errors.append(f"schedule {stored.id}: recording its error failed: {write_exc}")
            log.error("schedule %s: recording its error failed: %s", stored.id, write_exc)
            return
        if recorded is None:
            return  # changed meanwhile (an apply, another tick): the next tick sees it anew
        summary.schedule_errors += 1
        event = events.schedule_error_event(
            stored.id, dict(stored.spec.labels), error, now, state.next_fire_at
        )
        summary.events[event.type.value] += 1
        await self._announce(event, stored.spec.notify)

    async def _announce(self, event: events.Event, routes: list[events.Route]) -> None:
        """Log an event that no run carries and offer it once to the routes that want it.

        Without a run record there is nowhere to keep delivery state, so a failed delivery
        is logged, not retried (the schedule's ``last_error`` keeps the failure visible,
        and a failure that persists is announced again at each try). Never raises.
        """
        try:
            if any(isinstance(r.sink, events.LogSink) for r in routes):
                self.notifier.log(event)
            wanted = [
                r for r in routes if r.wants(event.type) and not isinstance(r.sink, events.LogSink)
            ]
            results = await asyncio.gather(*(self.notifier.deliver(event, r) for r in wanted))
        except Exception as exc:
            log.warning("event %s: %s", event.id, _error_line(exc))
            return
        for route, error in zip(wanted, results, strict=True):
            if error is not None:
                log.warning("event %s to sink %s failed: %s", event.id, route.sink_name, error)

    # -- firing ---------------------------------------------------------------------------

    async def fire(self, run: Run) -> Run:
        """Send a ``pending`` run's current attempt and record the outcome; returns the run as recorded."""
        summary = TickSummary(started_at=self.clock())
        return await self._fire(run, summary) or run

    async def fire_now(self, run: Run, summary: TickSummary) -> Run | None:
        """Fire a ``pending`` run claimed by someone else's end (see :mod:`firecron.causes`)."""
        return await self._fire(run, summary)

    async def emit_new(self, run: Run, known: set[str], summary: TickSummary) -> Run:
        """Log and offer the events of ``run`` not in ``known``; never raises."""
        return await self._emit(run, known, summary)

    async def settle(self, run: Run, summary: TickSummary | None = None) -> None:
        """Claim and fire what an ended run causes (:meth:`Causes.settle`); never raises.

        A failure is logged and counted: ``settle_at`` stays set, so the next tick's
        watchdog settles the run again.
        """
        summary = summary or TickSummary(started_at=self.now())
        try:
            await self.causes.settle(run, summary)
        except Exception as exc:
            summary.errors.append(f"run {run.id}: settling: {_error_line(exc)}")
            log.error("run %s: settling its end failed: %s", run.id, _error_line(exc))

    async def _settle_first(self, ended: Run, summary: TickSummary) -> bool:
        """Settle an end before it is recorded (:meth:`Causes.settle` with
        ``recorded=False``); False when that failed: the end is then recorded with its
        ``settle_at``, and the next tick's sweep settles it."""
        try:
            await self.causes.settle(ended, summary, recorded=False)
        except Exception as exc:
            summary.errors.append(f"run {ended.id}: settling: {_error_line(exc)}")
            log.error("run %s: settling its end failed: %s", ended.id, _error_line(exc))
            return False
        return True

    async def _judge(self, task: Run, summary: TickSummary) -> None:
        """Judge a waiting task (:meth:`Causes.judge`); never raises (its watch retries)."""
        try:
            await self.causes.judge(task, summary)
        except Exception as exc:
            summary.errors.append(f"run {task.id}: judging: {_error_line(exc)}")
            log.error("run %s: judging the task failed: %s", task.id, _error_line(exc))

    async def submit(
        self,
        cause: Run,
        schedule_id: str,
        params: Mapping[str, JsonValue] | None,
        key: str,
    ) -> str:
        """Claim (once per ``(cause, key)``) and fire a run of ``schedule_id`` caused by
        ``cause``; return its id. Raises :class:`NotFoundError` for an unknown schedule."""
        summary = TickSummary(started_at=self.now())
        return await self.causes.claim(cause, schedule_id, params, key, summary)

    async def _fire(self, run: Run, summary: TickSummary) -> Run | None:
        if run.target.pipeline is not None and run.pipeline_spec is not None:
            return await self._start_pipeline(run, summary)
        summary.fired += 1
        if self.defers and run.target.is_http:
            queued = self._delivery(run) is TargetDelivery.cloud_tasks
            built = await self._build(run, id_token=not queued)
            if isinstance(built, SendResult) or (queued and self.task_queue is None):
                # Not sendable from this process (no base URL, ID token, secret or queue
                # here): leave it to the dispatcher, whose next tick sends it.
                why = built.error if isinstance(built, SendResult) else None
                return await self._defer(run, why or "not sendable here", summary)
            result = await (self._enqueue(run, built) if queued else self.sender.send(built))
        elif run.target.notify is not None:
            result = await self._send_message(run)
        elif run.target.wait is not None:
            # A wait target is done once its wait was released: nothing to send.
            result = SendResult(SendOutcome.acknowledged, None, None)
        else:
            result = await self._send(run)
        summary.outcomes[result.outcome.value] += 1
        change = lifecycle.sent(
            run,
            self.now(),
            result.outcome,
            self.timeouts,
            status_code=result.status_code,
            error=result.error,
        )
        # When this send ended the run (a plain target's delivery, a sent message, a final
        # failure) and the end causes runs, claim them first, then record the end without
        # settle_at, so a plain task costs what a scheduled plain run does. Until the end
        # is recorded, the pending record is the marker (see Causes.settle).
        ends_causing = change.changes.get("settle_at") is not None
        if ends_causing and await self._settle_first(
            run.model_copy(update=change.changes), summary
        ):
            change = lifecycle.without_settle(run, change)
        try:
            recorded = await self.store.update_run(
                run.id, change.expect, change.changes, current=run
            )
        except FirecronError as exc:
            summary.errors.append(f"run {run.id}: recording the send failed: {exc}")
            return None
        if recorded is not None and change.event:
            summary.events[change.event] += 1
            recorded = await self._emit(recorded, {e.id for e in run.events}, summary)
        if result.outcome in (SendOutcome.retryable, SendOutcome.permanent):
            log.warning("run %s attempt %d: %s", run.id, run.attempt, result.error)
        # None: the worker already started the run (or a watchdog moved it on); its record wins.
        return recorded

    async def _defer(self, run: Run, why: str, summary: TickSummary) -> Run | None:
        """Leave a pending run for the dispatcher: due at once, so the next tick sends it
        (the watchdog's re-send of a pending run whose send it never saw recorded)."""
        log.info("run %s: left for the dispatcher to send: %s", run.id, why)
        change = lifecycle.deferred(run, self.now())
        try:
            return await self.store.update_run(run.id, change.expect, change.changes, current=run)
        except FirecronError as exc:
            summary.errors.append(f"run {run.id}: leaving it to the dispatcher failed: {exc}")
            return None

    async def _start_pipeline(self, run: Run, summary: TickSummary) -> Run | None:
        """Start a ``pending`` pipeline run: ONE atomic write makes it ``running`` and
        creates every task run (``Store.spawn``); then the root tasks are fired.

        Losing the write means someone else started it (or wrote it meanwhile: then it
        is read again and, still ``pending``, started on that record).
        """
        current: Run | None = run
        for _ in range(2):
            if current is None or current.state is not RunState.pending:
                return None
            now = self.now()
            tasks, slots, ready = pipelines.build_task_runs(
                current, now, pending_grace=self.timeouts.pending_grace
            )
            change = lifecycle.start_pipeline(current, now, slots, ready)
            try:
                spawned = await self.store.spawn(current, change.expect, change.changes, tasks)
            except FirecronError as exc:
                summary.errors.append(f"run {run.id}: starting the pipeline failed: {exc}")
                return None
            if spawned is not None:
                started, created = spawned
                summary.fired += 1
                summary.events[events.EventType.run_started] += 1
                started = await self._emit(started, {e.id for e in current.events}, summary)
                roots = [r for r in created if r.state is RunState.pending]
                judged = [r for r in created if r.state is RunState.waiting and r.deadline_at]
                await asyncio.gather(
                    *(self._fire(r, summary) for r in roots),
                    *(self._judge(r, summary) for r in judged),
                )
                return started
            current = await self.store.get_run(run.id)
        return None

    async def _send_message(self, run: Run) -> SendResult:
        """Send a ``notify`` target's message through its sink: delivered is acknowledged,
        a failed delivery retryable (the run's retry policy decides)."""
        action = run.target.notify
        if action is None or action.sink_config is None:
            name = action.sink if action is not None else "?"
            return SendResult(SendOutcome.permanent, None, f"sink {name!r} is not defined")
        try:
            # The notifier fills the placeholders (escaped as its sink needs).
            error = await self.notifier.send_message(action.sink_config, action.text, run)
        except FirecronError as exc:
            return SendResult(SendOutcome.permanent, None, str(exc))
        if error is None:
            return SendResult(SendOutcome.acknowledged, None, None)
        return SendResult(SendOutcome.retryable, None, error)

    def _lookahead(self, stored: StoredSchedule) -> timedelta:
        """How far ahead ``stored``'s occurrences are planned: :data:`TASKS_LOOKAHEAD`
        for an HTTP target delivered through a configured Cloud Tasks queue, else none."""
        target = stored.spec.target
        if (
            self.settings.tasks_queue is not None
            and target.is_http
            and target.effective_delivery(self.settings.delivery) is TargetDelivery.cloud_tasks
        ):
            return TASKS_LOOKAHEAD
        return timedelta(0)

    def _delivery(self, run: Run) -> TargetDelivery:
        return run.target.effective_delivery(self.settings.delivery)

    async def _build(self, run: Run, *, id_token: bool = True) -> Dispatch | SendResult:
        """The request that sends ``run``, or why it cannot be built here (permanent).

        ``id_token=False`` (Cloud Tasks delivery) fetches no ID token for an ``oidc``
        target: the task's ``oidc_token`` has Cloud Tasks mint one when it sends.
        """
        try:
            url = resolve_url(run.target, self.settings.functions_base_url)
            auth = run.target.effective_auth(self.settings.function_auth)
            if auth is TargetAuth.hmac and not self.settings.signing_secrets:
                return SendResult(
                    SendOutcome.permanent, None, "auth: hmac needs FIRECRON_SIGNING_SECRET"
                )
            token = None
            if auth is TargetAuth.oidc and id_token:
                if self._id_tokens is None:
                    self._id_tokens = GoogleIdTokens()
                token = await self._id_tokens.token(url)
            return build_dispatch(
                run, url, secrets=self.settings.signing_secrets, now=self.now(), id_token=token
            )
        except FirecronError as exc:
            return SendResult(SendOutcome.permanent, None, str(exc))

    async def _send(self, run: Run) -> SendResult:
        queued = self._delivery(run) is TargetDelivery.cloud_tasks
        built = await self._build(run, id_token=not queued)
        if isinstance(built, SendResult):
            return built
        if queued:
            return await self._enqueue(run, built)
        return await self.sender.send(built)

    async def _enqueue(self, run: Run, built: Dispatch) -> SendResult:
        """Hand ``built`` to Cloud Tasks (``delivery: cloud_tasks``): one task per attempt,
        ``schedule_time`` the run's ``fire_at`` when that is still ahead (second
        precision), ``dispatch_deadline`` from the run's timeout. Waits for no
        acknowledgement: a created (or already existing) task is ``unacknowledged``."""
        queue = self.task_queue
        if queue is None:
            return SendResult(
                SendOutcome.permanent, None, "delivery: cloud_tasks needs FIRECRON_TASKS_QUEUE"
            )
        auth = run.target.effective_auth(self.settings.function_auth)
        ahead = run.fire_at if run.fire_at > self.now() else None
        return await queue.enqueue(
            built,
            oidc_audience=built.url if auth is TargetAuth.oidc else None,
            deadline=dispatch_deadline(run.timeout),
            schedule_time=ahead,
        )

    # -- manual runs ----------------------------------------------------------------------

    async def trigger(
        self,
        schedule_id: str,
        params: Mapping[str, JsonValue] | None = None,
        *,
        gate: bool = True,
        cause_run_id: str | None = None,
    ) -> Run:
        """Create a manual run of a schedule now, fire it, and return it as recorded.

        ``cause_run_id``: the run it re-runs (``firecron rerun``), recorded on the new run.

        Manual runs ignore the overlap policy (an operator asked for this run) and do
        not change the schedule's state or counters. A gated schedule's run waits on its
        key like an occurrence (it is looked at once here) unless ``gate`` is False.
        Raises :class:`NotFoundError`, and :class:`InvalidInputError` when the wait's
        key cannot be rendered from the run's params.
        """
        stored = await self.store.get_schedule(schedule_id)
        if stored is None:
            raise NotFoundError(f"unknown schedule {schedule_id!r}")
        now = self.clock()
        try:
            run = planning.build_run(
                stored.spec,
                manual_run_id(schedule_id, now, _secrets.token_hex(3)),
                planning.Occurrence(now, now),
                now,
                trigger=RunTrigger.manual,
                params=params,
                pending_grace=self.timeouts.pending_grace,
                default_retention=self.settings.run_retention,
                gate=gate,
                cause_run_id=cause_run_id,
            )
        except ValueError as exc:  # the wait's key cannot be rendered from the params
            raise InvalidInputError(f"schedule {schedule_id!r}: {exc}") from None
        created = await self.store.create_run(run)
        if created is None:  # a 24-bit nonce collision within the same second
            raise FirecronError(f"run {run.id} already exists; try again")
        if created.state is RunState.waiting:
            summary = TickSummary(started_at=self.clock())
            return await self.waits.look(created, summary) or created
        return await self.fire(created)

    # -- the watchdog ---------------------------------------------------------------------

    async def _watchdog(
        self,
        now: datetime,
        summary: TickSummary,
        fires: list[asyncio.Task[None]],
        shard: Shard | None = None,
    ) -> None:
        runs = await self.store.due_watches(now, self.page_size, shard=shard)
        summary.watched += len(runs)
        slots = asyncio.Semaphore(self.settings.concurrency)

        async def one(run: Run) -> None:
            async with slots:
                try:
                    await self._watch_one(run, now, summary, fires)
                except Exception as exc:  # one run's failure never stops the others
                    summary.errors.append(f"run {run.id}: {_error_line(exc)}")
                    log.error("watchdog %s: %s", run.id, _error_line(exc))

        await asyncio.gather(*(one(r) for r in runs))

    async def _watch_one(
        self, run: Run, now: datetime, summary: TickSummary, fires: list[asyncio.Task[None]]
    ) -> None:
        if events.due_deliveries(run.events, now):
            run = await outbox.flush(self.store, self.notifier, run, now)
        decision = lifecycle.watch(run, now, self.timeouts)
        if decision.action is WatchAction.settle:
            await self.settle(run, summary)
            return
        if decision.action is WatchAction.judge:
            await self._judge(run, summary)
            return
        if decision.action is WatchAction.look:
            summary.waits_looked += 1
            await self.waits.look(run, summary)
            return
        if decision.action is WatchAction.check_blocker:
            blocker = await self.store.get_run(run.blocked_by) if run.blocked_by else None
            if run.parent_run_id is not None:
                # A task queued for a max_parallel slot: released once it holds one.
                if blocker is None or pipelines.pipeline_ended(blocker):
                    change = lifecycle.cancel(run, now, self.timeouts, "pipeline run ended")
                    decision = lifecycle.WatchDecision(change)
                else:
                    ended = run.task in blocker.slots
                    decision = lifecycle.watch(run, now, self.timeouts, blocker_ended=ended)
            else:
                ended = blocker is None or blocker.is_terminal
                decision = lifecycle.watch(run, now, self.timeouts, blocker_ended=ended)
        if decision.change is None:
            return
        recorded = await self.store.update_run(
            run.id, decision.change.expect, decision.change.changes, current=run
        )
        if recorded is None:
            return  # another tick or the worker acted first
        if decision.change.event:
            summary.events[decision.change.event] += 1
            log.info("run %s: %s", run.id, decision.change.event)
            recorded = await self._emit(recorded, {e.id for e in run.events}, summary)
        if recorded.is_terminal and recorded.settle_at is not None:
            await self.settle(recorded, summary)
        if decision.action is WatchAction.fire:
            if run.state is RunState.pending and not run.is_pipeline_run:
                # The same attempt again, same key: the first send may have arrived.
                log.warning(
                    "run %s attempt %d: its send was never recorded; sending it again",
                    run.id,
                    run.attempt,
                )
            fires.append(asyncio.create_task(self._fire_task(recorded, summary)))

    async def _fire_task(self, run: Run, summary: TickSummary) -> None:
        await self._fire(run, summary)

    async def _look_task(self, run: Run, summary: TickSummary) -> None:
        try:
            await self.waits.look(run, summary)
        except Exception as exc:  # the watchdog looks again at the run's deadline
            summary.errors.append(f"run {run.id}: looking at its wait: {_error_line(exc)}")

    async def _emit_task(self, run: Run, summary: TickSummary) -> None:
        for event in run.events:
            summary.events[event.type.value] += 1
        await self._emit(run, set(), summary)


def _error_line(exc: BaseException) -> str:
    """``exc`` as one line: its message, prefixed with its type unless it is firecron's own."""
    if isinstance(exc, FirecronError) and str(exc).strip():
        return one_line(str(exc), _MAX_ERROR_CHARS)
    return error_line(exc, _MAX_ERROR_CHARS)


async def run_tick(
    settings: Settings,
    store: Store,
    now: datetime | None = None,
    *,
    shard: Shard | None = None,
    chain: bool = False,
    continuation: int = 0,
) -> TickSummary:
    """Open a dispatcher on ``store``, run one tick (of ``shard``), close it (the entry
    points' helper). With ``chain``, the tick and its continuations
    (:meth:`Dispatcher.tick_chain`), as ``firecron tick`` runs them; ``continuation``
    is the tick's place in a chain the caller keeps (the cloud's)."""
    dispatcher = Dispatcher(store, settings)
    try:
        if chain:
            return await dispatcher.tick_chain(now, shard=shard)
        summary = await dispatcher.tick(now, shard=shard)
        summary.continuation = continuation
        return summary
    finally:
        await dispatcher.aclose()
