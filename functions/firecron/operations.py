"""Operations on runs: cancel, re-run and backfill. The service behind the CLI, the API
and the console (one implementation, three faces).

Every change goes through the pure lifecycle (:mod:`firecron.core.lifecycle`) and the
store's compare-and-set, like the dispatcher's own writes, so an operation racing a
tick, a worker or another operator either applies on the record it read or is
recomputed on a fresh read (:class:`~firecron.errors.ConflictError` after
:data:`CAS_TRIES` lost races).

**Cancel** (:func:`cancel_run`):

- ``pending``, ``dispatched``, ``queued``, ``waiting`` and ``retry_wait`` end
  ``cancelled`` at once. A ``dispatched`` run included: its worker starts a run only by
  a compare-and-set from ``pending``/``dispatched``, so a delivery that arrives after the
  cancel finds it ended and runs nothing.
- ``running``: a cancel request (``cancel_requested``, ``cancelled_at``) that the worker
  sees in its next heartbeat reply (``ctx.cancelled``); the run ends ``cancelled`` when
  the worker records its end, or, when the worker stops answering, by the watchdog
  ``heartbeat_timeout`` after the request (see ``lifecycle.watch``).
- A task waiting for a ``max_parallel`` slot also leaves its pipeline run's ready queue.
- A pipeline run ends ``cancelled`` at once (it has no worker) and its open tasks are
  cancelled as above.
- A continuous schedule's generation: the schedule is paused first, so its end starts
  no successor until ``firecron resume``.
- A run that has ended: :class:`~firecron.errors.InvalidInputError`.

**Re-run** (:func:`rerun`): a new manual run of the run's schedule, as it is defined
now, with the old run's params (the effective ones: pipeline defaults and schedule
params included) overridden by ``params``, and ``cause_run_id`` = the old run. From a
task of a pipeline run (``from_task``): the new pipeline run re-runs that task and every
task below it; every other task's run is created already ended as it ended in the old
run, with its output (``reused_from`` names the old task run), so the tasks below read
the same upstream outputs. Re-running a task run is re-running its pipeline run from
that task.

**Backfill** (:func:`backfill`): one run per occurrence of a schedule in a range, with
``trigger: backfill`` and the occurrence's normal run id (see
:mod:`firecron.core.backfill`), fired at once (a gated schedule's runs wait on their
keys first). Backfilled runs ignore the overlap policy, as manual runs do, and do not
change the schedule's counters. An occurrence that already has a run is reported and
not doubled, so running the same backfill again completes what an interrupted one left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as _secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from firecron.core import lifecycle, pipelines, planning
from firecron.core.backfill import handled_state, plan_backfill
from firecron.core.lifecycle import RunTimeouts
from firecron.core.models import JsonValue, PipelineSpec, StoredSchedule
from firecron.core.runs import (
    FAILED_STATES,
    Run,
    RunState,
    RunTrigger,
    manual_run_id,
    task_run_id,
)
from firecron.dispatch import Dispatcher, TickSummary
from firecron.errors import ConflictError, InvalidInputError
from firecron.service import get_run, get_schedule
from firecron.store.base import Store

__all__ = [
    "CAS_TRIES",
    "BackfillReport",
    "backfill",
    "cancel_run",
    "rerun",
]

log = logging.getLogger("firecron.operations")

CAS_TRIES = 8
"""Re-read-and-retry rounds of one compare-and-set before :class:`ConflictError`."""
_READ_CHUNK = 500
"""Runs read per ``get_runs`` call when a backfill looks for existing runs."""
FOLLOW_INTERVAL_S = 0.5
"""How often a backfill with ``max_parallel`` looks at its active runs (store reads)."""


# -- cancel --------------------------------------------------------------------------------


async def cancel_run(
    store: Store,
    run_id: str,
    now: datetime,
    *,
    reason: str = "cancelled by an operator",
    dispatcher: Dispatcher | None = None,
) -> Run:
    """Cancel a run that has not ended (see the module docstring); return it as recorded.

    ``reason`` becomes the run's ``error``. With a ``dispatcher``, what the cancel causes
    (a task's downstream tasks judged, a pipeline's tasks marked) is settled at once;
    without one, the next tick's watchdog settles it (the ended runs keep ``settle_at``).
    Cancelling a run whose cancel was already requested changes nothing and returns it.

    Raises :class:`NotFoundError` (unknown id), :class:`InvalidInputError` (the run
    already ended) and :class:`ConflictError` (it kept changing under us).
    """
    timeouts = dispatcher.timeouts if dispatcher is not None else RunTimeouts()
    run = await get_run(store, run_id)
    if run.is_terminal:
        raise InvalidInputError(f"run {run_id} already ended ({run.state.value})")
    if run.generation is not None:
        # Paused before the cancel: the generation's end (which may follow at once) then
        # finds the schedule paused and claims no successor.
        await _pause(store, run.schedule_id, now)
    ended: list[Run] = []
    for _ in range(CAS_TRIES):
        change = lifecycle.cancel(run, now, timeouts, reason)
        if change is None:
            if run.is_terminal:
                raise InvalidInputError(f"run {run_id} already ended ({run.state.value})")
            break  # its cancel was requested already
        written = await store.update_run(run.id, change.expect, change.changes, current=run)
        if written is not None:
            run = written
            break
        run = await get_run(store, run_id)  # a worker or a tick wrote it: judge it again
    else:
        raise ConflictError(f"run {run_id} kept changing; try again")
    if run.is_terminal:
        ended.append(run)
        if run.parent_run_id is not None and run.holds_slot:
            await _leave_ready_queue(store, run, now)
    if run.is_pipeline_run:
        ended += await _cancel_tasks(store, run, now, timeouts, reason)
    if dispatcher is not None:
        # Tasks first: the pipeline run's own settle then finds them all ended.
        for done in sorted(ended, key=lambda r: r.is_pipeline_run):
            if done.settle_at is not None:
                await dispatcher.settle(done)
    return await store.get_run(run_id) or run


async def _pause(store: Store, schedule_id: str, now: datetime) -> None:
    """Pause the schedule (its state only: the caller cancels the live generation)."""
    for _ in range(CAS_TRIES):
        stored = await store.get_schedule(schedule_id)
        if stored is None:
            return  # deleted: nothing can claim a successor
        state = planning.pause(stored.spec, stored.state, now)
        if state == stored.state:
            return
        try:
            await store.put_schedule(stored.spec, state, expect_version=stored.version)
            return
        except ConflictError:
            continue  # a tick or an apply wrote it meanwhile
    raise ConflictError(f"schedule {schedule_id!r} kept changing; try again")


async def _leave_ready_queue(store: Store, task: Run, now: datetime) -> None:
    """Take a cancelled task out of its pipeline run's ``max_parallel`` ready queue: a
    slot handed to it later would never be freed (it holds none, so its end frees none)."""
    assert task.parent_run_id is not None
    for _ in range(CAS_TRIES):
        pipeline = await store.get_run(task.parent_run_id)
        if pipeline is None or task.task not in pipeline.ready:
            return
        ready = [name for name in pipeline.ready if name != task.task]
        written = await store.update_run(
            pipeline.id,
            (pipeline.state,),
            {"ready": ready, "updated_at": now},
            current=pipeline,
        )
        if written is not None:
            return
    raise ConflictError(f"pipeline run {task.parent_run_id} kept changing; try again")


async def _cancel_tasks(
    store: Store, pipeline: Run, now: datetime, timeouts: RunTimeouts, reason: str
) -> list[Run]:
    """Cancel the open tasks of a cancelled pipeline run; return those that ended."""
    spec = pipeline.pipeline_spec
    if spec is None:
        return []
    runs = await store.get_runs([task_run_id(pipeline.id, t.id) for t in spec.tasks])
    # Tasks not started first, as the dispatcher's own cancel does: settling a started
    # one judges the tasks below it, which must be cancelled before that.
    runs.sort(key=lambda r: r.state not in (RunState.waiting, RunState.queued))
    why = f"pipeline run ended cancelled: {reason}"
    ended: list[Run] = []
    for task in runs:
        current: Run | None = task
        for _ in range(CAS_TRIES):
            if current is None:
                break
            change = lifecycle.cancel(current, now, timeouts, why)
            if change is None:
                break
            written = await store.update_run(
                current.id, change.expect, change.changes, current=current
            )
            if written is not None:
                if written.is_terminal:
                    ended.append(written)
                break
            current = await store.get_run(task.id)
    return ended


# -- re-run --------------------------------------------------------------------------------


async def rerun(
    dispatcher: Dispatcher,
    run_id: str,
    *,
    params: Mapping[str, JsonValue] | None = None,
    from_task: str | None = None,
) -> Run:
    """Start a new manual run like ``run_id`` (see the module docstring); return it as
    recorded after its send (a pipeline run: after its start).

    Raises :class:`NotFoundError` (unknown run, or its schedule is gone) and
    :class:`InvalidInputError`: a continuous schedule's generation (resume the schedule
    instead), ``from_task`` on a run that is not a pipeline run, or that has not ended,
    or naming no task of the pipeline, or below a task that failed in the old run.
    """
    store = dispatcher.store
    old = await get_run(store, run_id)
    if old.generation is not None:
        raise InvalidInputError(
            f"run {run_id} is a generation of continuous schedule {old.schedule_id!r}: "
            f"resume the schedule instead (firecron resume {old.schedule_id})"
        )
    if old.parent_run_id is not None and old.task is not None:
        if from_task is not None and from_task != old.task:
            raise InvalidInputError(
                f"from_task: run {run_id} is task {old.task!r}; re-run its pipeline run "
                f"{old.parent_run_id} to start from {from_task!r}"
            )
        from_task = old.task
        old = await get_run(store, old.parent_run_id)
    merged: dict[str, JsonValue] = {**old.params, **(params or {})}
    if from_task is None:
        return await dispatcher.trigger(old.schedule_id, merged, cause_run_id=old.id)
    return await _rerun_from(dispatcher, old, from_task, merged)


def _below(spec: PipelineSpec, task: str) -> set[str]:
    """``task`` and every task downstream of it."""
    below = pipelines.downstream_of(spec)
    found = {task}
    stack = [task]
    while stack:
        for child in below.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _above(spec: PipelineSpec, task: str) -> set[str]:
    """Every task upstream of ``task`` (not ``task`` itself)."""
    after = {t.id: t.after for t in spec.tasks}
    found: set[str] = set()
    stack = list(after.get(task, []))
    while stack:
        name = stack.pop()
        if name not in found:
            found.add(name)
            stack.extend(after.get(name, []))
    return found


async def _rerun_from(
    dispatcher: Dispatcher, old: Run, from_task: str, params: dict[str, JsonValue]
) -> Run:
    store = dispatcher.store
    if not old.is_pipeline_run:
        raise InvalidInputError(f"from_task: run {old.id} is not a pipeline run")
    if not old.is_terminal:
        raise InvalidInputError(
            f"run {old.id} has not ended ({old.state.value}): re-run it from a task once it has"
        )
    for _ in range(CAS_TRIES):
        stored = await get_schedule(store, old.schedule_id)
        spec = stored.spec.pipeline_spec
        if spec is None:
            raise InvalidInputError(
                f"schedule {old.schedule_id!r} no longer runs a pipeline: re-run {old.id} whole"
            )
        names = [t.id for t in spec.tasks]
        if from_task not in names:
            raise InvalidInputError(
                f"from_task: pipeline {spec.id!r} has no task {from_task!r}"
                f" (its tasks: {', '.join(names)})"
            )
        reused_names = [n for n in names if n not in _below(spec, from_task)]
        old_tasks = {
            r.task: r
            for r in await store.get_runs([task_run_id(old.id, n) for n in reused_names])
            if r.task is not None
        }
        upstream = _above(spec, from_task)
        for name in reused_names:
            found = old_tasks.get(name)
            if found is None:
                raise InvalidInputError(
                    f"from_task: run {old.id} has no run of task {name!r} to reuse"
                    f" (the pipeline changed since?): re-run {old.id} whole"
                )
            if not found.is_terminal:
                raise InvalidInputError(
                    f"from_task: task {name!r} of run {old.id} has not ended"
                    f" ({found.state.value}); re-run once it has"
                )
            if name in upstream and found.state in FAILED_STATES:
                raise InvalidInputError(
                    f"from_task: upstream task {name!r} ended {found.state.value} in run"
                    f" {old.id}: re-run from {name!r}"
                )
        now = dispatcher.now()
        runs = _reusing_runs(dispatcher, stored, old, from_task, params, old_tasks, now)
        # One atomic write creates the started pipeline run and all its task runs (a
        # compare-and-set on the schedule that changes nothing in it), so a crash leaves
        # all or nothing: never a pipeline run that would start over without the reuse.
        created = await store.claim(stored, stored.state, runs)
        if created is None:
            continue  # a tick claimed the schedule meanwhile: read it again
        pipeline_run, tasks = created[0], created[1:]
        summary = TickSummary(started_at=now)
        await dispatcher.emit_new(pipeline_run, set(), summary)
        first = next(t for t in tasks if t.task == from_task)
        try:
            await dispatcher.causes.judge(first, summary)
        except Exception as exc:  # its deadline brings it to the watchdog, which judges it
            log.error("run %s: judging the task failed: %s", first.id, exc)
        return await store.get_run(pipeline_run.id) or pipeline_run
    raise ConflictError(f"schedule {old.schedule_id!r} kept changing; try again")


def _reusing_runs(
    dispatcher: Dispatcher,
    stored: StoredSchedule,
    old: Run,
    from_task: str,
    params: dict[str, JsonValue],
    old_tasks: Mapping[str, Run],
    now: datetime,
) -> list[Run]:
    """The new pipeline run, started, then its task runs: the reused ones ended as in
    ``old``, ``from_task`` waiting with its marks complete (judged at once, and watched
    in case that never comes), the tasks below it waiting with the reused marks."""
    timeouts = dispatcher.timeouts
    run = planning.build_run(
        stored.spec,
        manual_run_id(stored.id, now, _secrets.token_hex(3)),
        planning.Occurrence(now, now),
        now,
        trigger=RunTrigger.manual,
        params=params,
        pending_grace=timeouts.pending_grace,
        default_retention=dispatcher.settings.run_retention,
        # The old run's gate was passed already; its data is what is re-run.
        gate=False,
        cause_run_id=old.id,
    )
    spec = run.pipeline_spec
    assert spec is not None
    tasks, _, _ = pipelines.build_task_runs(run, now, pending_grace=timeouts.pending_grace)
    by_name = {t.task: t for t in tasks if t.task is not None}
    expire_at = now + run.retention if run.retention is not None else None
    for name, was in old_tasks.items():
        by_name[name] = by_name[name].model_copy(
            update={
                "state": was.state,
                "attempt": was.attempt,
                "output": was.output,
                "error": was.error,
                "upstream": dict(was.upstream),
                "attempts": [],
                "ended_at": now,
                "expire_at": expire_at,
                "deadline_at": None,
                "watch_at": None,
                "blocked_by": None,
                "holds_slot": False,
                "reused_from": was.id,
            }
        )
    reused = {name: by_name[name] for name in old_tasks}
    for task in spec.tasks:
        if task.id in reused:
            continue
        marks = {u: lifecycle.upstream_end(reused[u]) for u in task.after if u in reused}
        update: dict[str, object] = {"upstream": marks}
        if task.id == from_task:
            update.update(
                {
                    "state": RunState.waiting,
                    "attempts": [],
                    "blocked_by": None,
                    "deadline_at": now + timeouts.pending_grace,
                    "watch_at": now + timeouts.pending_grace,
                }
            )
        by_name[task.id] = by_name[task.id].model_copy(update=update)
    leaf_marks = {
        leaf: lifecycle.upstream_end(reused[leaf])
        for leaf in pipelines.leaves(spec)
        if leaf in reused
    }
    change = lifecycle.start_pipeline(run, now, [], [])
    started = run.model_copy(update={**change.changes, "upstream": leaf_marks})
    return [started, *(by_name[t.id] for t in spec.tasks)]


# -- backfill ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill did (or, with ``dry_run``, would do)."""

    schedule_id: str
    start: datetime
    end: datetime
    planned: list[datetime]
    """The occurrences in the range it handles, oldest first."""
    created: list[str]
    """Runs this call created (and fired); empty on a dry run."""
    existing: list[str]
    """Occurrences that already had a run, which was left alone (their ids)."""
    existing_states: dict[str, RunState] = field(default_factory=dict)
    """The state of each of ``existing`` as read."""
    to_create: list[str] = field(default_factory=list)
    """The runs a dry run would create (on a real run: the runs it set out to create)."""
    later: list[datetime] = field(default_factory=list)
    """Occurrences in the range the schedule fires itself (at or after its next
    occurrence, or after now): not backfilled."""
    unsent: list[str] = field(default_factory=list)
    """Created runs whose first send failed (a retry may be scheduled)."""
    dry_run: bool = False


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


async def _existing(store: Store, run_ids: list[str]) -> dict[str, Run]:
    found: dict[str, Run] = {}
    for chunk in _chunks(run_ids, _READ_CHUNK):
        found.update((r.id, r) for r in await store.get_runs(chunk))
    return found


async def backfill(
    dispatcher: Dispatcher,
    schedule_id: str,
    start: datetime,
    end: datetime,
    *,
    dry_run: bool = False,
    max_parallel: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillReport:
    """Create and fire one run per occurrence of ``schedule_id`` in ``[start, end]``
    that has none yet (see the module docstring and :mod:`firecron.core.backfill`).

    ``max_parallel``: at most that many runs of the range active at once (runs left
    active by an earlier, interrupted backfill count); the call then waits for runs to
    end (it polls the store every :data:`FOLLOW_INTERVAL_S`) before firing the next, and
    returns once the last one is fired. ``progress(done, total)`` is called as
    occurrences are handled (created and fired, or found existing).

    Raises :class:`NotFoundError` (unknown schedule) and :class:`InvalidInputError`:
    ``end`` before ``start``, more than 10,000 occurrences in the range, an on-demand
    or continuous schedule, ``max_parallel`` below 1.
    """
    if max_parallel is not None and max_parallel < 1:
        raise InvalidInputError(f"max_parallel must be at least 1, got {max_parallel}")
    store = dispatcher.store
    for _ in range(CAS_TRIES):
        stored = await get_schedule(store, schedule_id)
        now = dispatcher.now()
        try:
            plan = plan_backfill(stored.spec, stored.state, start, end, now)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        found = await _existing(store, plan.run_ids)
        todo = [(o, i) for o, i in zip(plan.planned, plan.run_ids, strict=True) if i not in found]
        report = BackfillReport(
            schedule_id=schedule_id,
            start=start,
            end=end,
            planned=plan.planned,
            created=[],
            existing=[i for i in plan.run_ids if i in found],
            existing_states={i: r.state for i, r in found.items()},
            to_create=[i for _, i in todo],
            later=plan.later,
            dry_run=dry_run,
        )
        if dry_run or not todo:
            if progress is not None:
                progress(len(plan.planned), len(plan.planned))
            return report
        handled = handled_state(stored.state, max(o for o, _ in todo), now)
        if handled is not None:
            try:
                await store.put_schedule(stored.spec, handled, expect_version=stored.version)
            except ConflictError:
                continue  # resumed or changed meanwhile: plan again on a fresh read
        return await _fire_all(dispatcher, stored, report, todo, found, max_parallel, progress)
    raise ConflictError(f"schedule {schedule_id!r} kept changing; try again")


async def _fire_all(
    dispatcher: Dispatcher,
    stored: StoredSchedule,
    report: BackfillReport,
    todo: list[tuple[datetime, str]],
    found: Mapping[str, Run],
    max_parallel: int | None,
    progress: Callable[[int, int], None] | None,
) -> BackfillReport:
    store = dispatcher.store
    total = len(report.planned)
    done = len(report.existing)
    created: list[str] = []
    existing = list(report.existing)
    unsent: list[str] = []
    summary = TickSummary(started_at=dispatcher.now())
    if progress is not None:
        progress(done, total)
    sends = asyncio.Semaphore(dispatcher.settings.concurrency)
    slots = asyncio.Semaphore(max_parallel) if max_parallel is not None else None
    active: set[str] = set()

    async def follow() -> None:
        """Free a slot for each active run that has ended (or is gone)."""
        assert slots is not None
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)  # a poll of the store, bounded by the work
            if not active:
                continue
            watched = list(active)
            still = {r.id for r in await store.get_runs(watched) if not r.is_terminal}
            for run_id in watched:
                if run_id not in still:
                    active.discard(run_id)
                    slots.release()

    async def one(occurrence: datetime, run_id: str) -> None:
        try:
            await create_and_fire(occurrence, run_id)
        except BaseException:
            if slots is not None and run_id not in active:
                slots.release()  # the main loop may be waiting for this slot
            raise

    async def create_and_fire(occurrence: datetime, run_id: str) -> None:
        nonlocal done
        async with sends:
            now = dispatcher.now()
            run = planning.build_run(
                stored.spec,
                run_id,
                planning.Occurrence(occurrence, now),
                now,
                trigger=RunTrigger.backfill,
                pending_grace=dispatcher.timeouts.pending_grace,
                default_retention=dispatcher.settings.run_retention,
            )
            made = await store.create_run(run)
            if made is None:  # another backfill (or operator) created it meanwhile
                existing.append(run_id)
                if slots is not None:
                    slots.release()
            else:
                created.append(run_id)
                if slots is not None:
                    active.add(run_id)
                sent = await _send(dispatcher, made, summary)
                if _not_sent(sent):
                    unsent.append(run_id)
        done += 1
        if progress is not None:
            progress(done, total)

    follower: asyncio.Task[None] | None = None
    jobs: list[asyncio.Task[None]] = []
    try:
        if slots is not None:
            follower = asyncio.create_task(follow())
            for run in found.values():
                if not run.is_terminal:  # left active by an earlier backfill: it counts
                    await slots.acquire()
                    active.add(run.id)
        for occurrence, run_id in todo:
            if slots is not None:
                await slots.acquire()
            failed = next((j for j in jobs if j.done() and j.exception() is not None), None)
            if failed is not None:
                await failed  # raises its error (a store failure): stop creating runs
            jobs.append(asyncio.create_task(one(occurrence, run_id)))
        await asyncio.gather(*jobs)
    finally:
        for job in jobs:
            job.cancel()
        if follower is not None:
            follower.cancel()
    order = {run_id: index for index, (_, run_id) in enumerate(todo)}
    created.sort(key=order.__getitem__)
    return BackfillReport(
        schedule_id=report.schedule_id,
        start=report.start,
        end=report.end,
        planned=report.planned,
        created=created,
        existing=sorted(existing, key=lambda i: (i not in order, order.get(i, 0), i)),
        existing_states=report.existing_states,
        to_create=report.to_create,
        later=report.later,
        unsent=sorted(unsent, key=order.__getitem__),
        dry_run=False,
    )


async def _send(dispatcher: Dispatcher, run: Run, summary: TickSummary) -> Run:
    """Fire a created run: send it, or, gated, look at its key (as a tick does)."""
    if run.state is RunState.waiting:
        return await dispatcher.waits.look(run, summary) or run
    if run.state is RunState.pending:
        return await dispatcher.fire(run)
    return run


def _not_sent(run: Run) -> bool:
    """True when the first send failed: refused, unreachable or an HTTP error."""
    if run.state not in (RunState.retry_wait, RunState.failed) or not run.attempts:
        return False
    return run.attempts[-1].started_at is None and bool(run.attempts[-1].sends)
