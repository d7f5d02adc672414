"""Ends that cause runs: chains, ``ctx.submit`` and pipelines, on one mechanism.

**A run's end is an event that causes the next runs at once.** The write that ends a
run which causes others (``lifecycle.causes_runs``: a ``then`` step for that end, a
pipeline task, a pipeline run) also sets its ``settle_at``, which keeps the run in the
watchdog's index. Whoever wrote that end (the dispatcher for a plain or message target,
the worker SDK for a worker run, the watchdog for a lost or timed-out one) then calls
:meth:`Causes.settle`:

1. a task run frees its ``max_parallel`` slot (handing it to the first ready task), marks
   its end on each downstream task run (``Store.mark_upstream``), judges each task whose
   marks are complete, and, for a leaf, marks the pipeline run, ending it once every leaf
   has;
2. a pipeline run that ended before its tasks did (its ``timeout``) cancels them;
3. each ``then`` step that matches the end claims a run of its schedule;
4. each run so claimed and ``pending`` is fired one-way at once, and each one that ended
   on the spot (a skipped task, a failed condition) is settled in turn;
5. ``settle_at`` is cleared: one write.

Every step is idempotent: caused runs have deterministic ids (a second claim fails),
marks are per upstream task, judging is a compare-and-set on the task's ``waiting``
state, a slot is freed only if held. So a recorder that dies anywhere in between
leaves ``settle_at`` set, and the next tick's watchdog settles the run again: a
successor is at most one tick late, never lost and never doubled. A run that causes
nothing is never read again and costs nothing here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from firecron.core import lifecycle, planning
from firecron.core.chains import plan_caused
from firecron.core.lifecycle import Change
from firecron.core.models import JsonValue, OverlapPolicy, StoredSchedule, TaskRule
from firecron.core.pipelines import describe_rule, is_complete, judge_rule, pipeline_ended
from firecron.core.runs import (
    FAILED_STATES,
    Run,
    RunState,
    caused_run_id,
    generation_run_id,
    task_run_id,
)
from firecron.core.waits import render_key
from firecron.errors import NotFoundError

if TYPE_CHECKING:
    from firecron.dispatch import Dispatcher, TickSummary

__all__ = ["Causes"]

log = logging.getLogger("firecron.causes")

_CAS_TRIES = 8
"""Re-read-and-retry rounds of one compare-and-set that lost to a concurrent writer."""


class Causes:
    """Settles ended runs for one dispatcher: claims, judges and fires what they cause."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.store = dispatcher.store

    # -- the entry point -----------------------------------------------------------------

    async def settle(self, run: Run, summary: TickSummary, *, recorded: bool = True) -> None:
        """Claim and fire what ``run``'s end causes, then clear its ``settle_at``.

        ``run`` is an ended run as last read or written. Idempotent: settling a run
        again (a sweep racing its recorder) claims nothing twice. Raises on store
        failures, leaving ``settle_at`` set for the next tick.

        ``recorded=False``: ``run`` is the end as it is about to be recorded (a plain
        target's, whose record is still ``pending``): everything is claimed and nothing
        is cleared, and the caller then records the end without ``settle_at``. Should
        the caller die first, the ``pending`` record is the marker: the watchdog sends
        the same attempt again and its end is settled again, claiming nothing twice.
        """
        if not run.is_terminal or run.settle_at is None:
            return
        pipeline_cache: dict[str, Run | None] = {}
        if run.parent_run_id is not None:
            await self._settle_task(run, summary, pipeline_cache)
        if run.is_pipeline_run and lifecycle.pipeline_verdict(run) is None:
            await self._cancel_tasks(run, summary)
        if run.generation is not None:
            await self._hand_over(run, summary)
        for index, step in enumerate(run.then):
            if not lifecycle.chain_matches(step.on, run.state):
                continue
            try:
                await self.claim(run, step.schedule, step.params, f"then/{index}", summary)
            except NotFoundError:
                # Deleted since this run was claimed: nothing can ever be claimed for the
                # step, so it must not keep the end unsettled (and retried every tick).
                line = f"run {run.id}: then step {index}: schedule {step.schedule!r} is gone"
                summary.errors.append(line)
                log.error("%s", line)
        if recorded:
            await self._clear(run)
        summary.settled += 1

    async def _clear(self, run: Run) -> None:
        current: Run | None = run
        for _ in range(_CAS_TRIES):
            if current is None or current.settle_at is None:
                return
            change = lifecycle.settled(current, self.d.now())
            written = await self.store.update_run(
                current.id, change.expect, change.changes, current=current
            )
            if written is not None:
                return
            # Event deliveries or a concurrent sweep wrote the run meanwhile: look again.
            current = await self.store.get_run(run.id)
        log.warning("run %s: could not clear settle_at; the next tick settles it again", run.id)

    # -- chains and submits ----------------------------------------------------------------

    async def claim(
        self,
        cause: Run,
        schedule_id: str,
        params: Mapping[str, JsonValue] | None,
        key: str,
        summary: TickSummary,
    ) -> str:
        """Claim (once per ``(cause, key)``) a run of ``schedule_id`` caused by ``cause``,
        fire it if it is ``pending``, and return its id.

        The run id is :func:`caused_run_id`, so a repeated claim finds the run already
        there and returns its id without firing it again (a ``pending`` run left unsent
        is re-sent by the watchdog). Raises :class:`NotFoundError` for an unknown
        schedule.
        """
        run_id = caused_run_id(schedule_id, cause.id, key)
        for _ in range(_CAS_TRIES):
            stored = await self.store.get_schedule(schedule_id)
            if stored is None:
                raise NotFoundError(f"unknown schedule {schedule_id!r}")
            latest: Run | None = None
            if (
                stored.spec.target.tracks_end
                and stored.spec.overlap is not OverlapPolicy.allow
                and stored.state.last_run_id
            ):
                latest = await self.store.get_run(stored.state.last_run_id)
                if latest is not None and latest.id == run_id:
                    return run_id  # claimed already, and it is the schedule's latest run
            plan = plan_caused(
                stored,
                latest,
                run_id,
                self.d.now(),
                cause_run_id=cause.id,
                params=params,
                pending_grace=self.d.timeouts.pending_grace,
                default_retention=self.d.settings.run_retention,
            )
            created = await self.store.claim(stored, plan.new_state, [plan.run])
            if created:
                summary.caused += 1
                await self._after_create(created[0], summary)
                return run_id
            if await self.store.get_run(run_id) is not None:
                return run_id  # another recorder or a sweep claimed it first
            # The schedule changed meanwhile (a tick claimed it): plan again on a fresh read.
        raise RuntimeError(f"could not claim run {run_id}: schedule {schedule_id} kept changing")

    async def _after_create(self, run: Run, summary: TickSummary) -> None:
        """Fire a new ``pending`` run at once, then emit the events it was born with
        (skipped, handoff): a slow sink never delays the run."""
        recorded: Run | None = run
        if run.state is RunState.pending:
            recorded = await self.d.fire_now(run, summary)
        if run.events:
            for event in run.events:
                summary.events[event.type.value] += 1
            # The outbox re-reads the run if the send's record changed it meanwhile.
            await self.d.emit_new(recorded or run, set(), summary)

    # -- continuous schedules ----------------------------------------------------------------

    async def _hand_over(self, ended: Run, summary: TickSummary) -> None:
        """Claim the generation after ``ended`` on its schedule and fire it (or let it wait
        for its crash backoff). At most one successor: its id is deterministic, and the
        claim is a compare-and-set on the schedule, whose ``last_run_id`` must still be
        ``ended``. None is claimed when the schedule is paused, disabled or gone."""
        for _ in range(_CAS_TRIES):
            stored = await self.store.get_schedule(ended.schedule_id)
            if stored is None:
                return
            plan = planning.plan_handoff(
                stored,
                ended,
                self.d.now(),
                pending_grace=self.d.timeouts.pending_grace,
                default_retention=self.d.settings.run_retention,
            )
            if plan is None:
                # No successor wanted, or it exists already (last_run_id moved on).
                await self._send_unsent_successor(stored, ended, summary)
                return
            created = await self.store.claim(stored, plan.new_state, plan.runs)
            if created:
                summary.caused += 1
                await self._after_create(created[0], summary)
                return
            if await self.store.get_run(plan.runs[0].id) is not None:
                return  # another settler claimed it
        raise RuntimeError(f"run {ended.id}: could not claim its successor")

    async def _send_unsent_successor(
        self, stored: StoredSchedule, ended: Run, summary: TickSummary
    ) -> None:
        """Send ``ended``'s successor now if it was claimed but is still ``pending``.

        This runs when an end is settled again (the sweep of a ``settle_at`` left set):
        its settler claimed the successor, then died before sending it (an instance
        killed in the milliseconds between its end and its successor's POST). Left to
        the watchdog, the successor would wait the pending grace (minutes) for a send;
        sent now, the gap stays within one tick. Should the first settler still be
        sending, the worker gets one POST more, which it acknowledges and drops: an
        attempt starts once (the start is a compare-and-set)."""
        if ended.generation is None:
            return
        successor_id = generation_run_id(ended.schedule_id, ended.generation + 1)
        if stored.state.last_run_id != successor_id:
            return
        successor = await self.store.get_run(successor_id)
        if successor is not None and successor.state is RunState.pending:
            await self.d.fire_now(successor, summary)

    # -- pipelines -------------------------------------------------------------------------

    async def _pipeline(self, pipeline_run_id: str, cache: dict[str, Run | None]) -> Run | None:
        if pipeline_run_id not in cache:
            cache[pipeline_run_id] = await self.store.get_run(pipeline_run_id)
        return cache[pipeline_run_id]

    async def _settle_task(
        self, task: Run, summary: TickSummary, cache: dict[str, Run | None]
    ) -> None:
        parent_id = task.parent_run_id
        assert parent_id is not None
        assert task.task is not None
        if task.holds_slot:
            await self._free_slot(task, summary, cache)
        mark = lifecycle.upstream_end(task)
        if not task.downstream:
            pipeline = await self.store.mark_upstream(parent_id, task.task, mark)
            if pipeline is not None:
                cache[parent_id] = pipeline
                await self._maybe_end_pipeline(pipeline, summary)
            return
        for below in task.downstream:
            marked = await self.store.mark_upstream(task_run_id(parent_id, below), task.task, mark)
            # Judged only once complete: the task's own `after` says so without a read.
            if (
                marked is not None
                and marked.state is RunState.waiting
                and all(name in marked.upstream for name in marked.after)
            ):
                await self._judge(marked, summary, cache)

    async def _maybe_end_pipeline(self, pipeline: Run, summary: TickSummary) -> None:
        if pipeline.state not in (RunState.pending, RunState.running):
            return
        verdict = lifecycle.pipeline_verdict(pipeline)
        if verdict is None:
            return
        error = None
        if verdict is RunState.failed and pipeline.pipeline_spec is not None:
            # Name the tasks that failed (one read per task, for failed pipelines only).
            ids = [task_run_id(pipeline.id, t.id) for t in pipeline.pipeline_spec.tasks]
            failed = [
                r.task or r.id for r in await self.store.get_runs(ids) if r.state in FAILED_STATES
            ]
            # A leaf whose own record lags behind its mark (a plain target's) says so there.
            failed += [
                name
                for name, mark in pipeline.upstream.items()
                if mark.outcome == "failed" and name not in failed
            ]
            noun = "task" if len(failed) == 1 else "tasks"
            error = f"{noun} failed: {', '.join(failed)}" if failed else None
        change = lifecycle.end_pipeline(pipeline, self.d.now(), verdict, error)
        await self._apply(pipeline, change, summary)

    async def judge(self, task: Run, summary: TickSummary) -> None:
        """Judge a ``waiting`` task now (a root with an ``if`` right after its pipeline
        started, or one the watchdog found past its deadline)."""
        await self._judge(task, summary, {})

    async def _judge(self, task: Run, summary: TickSummary, cache: dict[str, Run | None]) -> None:
        """Judge a ``waiting`` task whose marks may be complete, and move it on (once)."""
        parent_id = task.parent_run_id
        assert parent_id is not None
        assert task.task is not None
        if task.rule is not None and parent_id not in cache:
            await self._judge_by_rule(task, task.rule, summary, cache)
            return
        pipeline = await self._pipeline(parent_id, cache)
        spec = pipeline.pipeline_spec if pipeline is not None else None
        change: Change | None
        if pipeline is None or spec is None:
            log.error("run %s: its pipeline run %s is gone; cancelling it", task.id, parent_id)
            change = lifecycle.cancel(task, self.d.now(), self.d.timeouts, "pipeline run is gone")
            if change is not None:
                await self._apply(task, change, summary)
            return
        task_spec = spec.task(task.task)
        if not is_complete(task_spec, task.upstream):
            return
        now = self.d.now()
        if pipeline_ended(pipeline):
            change = lifecycle.cancel(
                task, now, self.d.timeouts, f"pipeline run ended {pipeline.state}"
            )
        elif not judge_rule(task_spec.when, task.upstream):
            change = lifecycle.skip_task(task, now, describe_rule(task_spec.when, task.upstream))
        else:
            change = None
            if task_spec.if_ is not None:
                change = await self._condition(task, task_spec.if_, task_spec.after, pipeline)
            if change is None and task_spec.wait is not None:
                # A wait task holds no function and no slot: it waits on its key.
                try:
                    key = render_key(
                        task_spec.wait.key, task.params, task.scheduled_for, task.timezone
                    )
                except ValueError as exc:
                    change = lifecycle.fail_task(task, now, str(exc))
                else:
                    change = lifecycle.begin_wait(task, now, task_spec.wait, key)
            elif change is None:
                queued = False
                if spec.max_parallel is not None:
                    granted = await self._take_slot(pipeline, task.task, spec.max_parallel, cache)
                    if granted is None:
                        return  # the pipeline ended meanwhile: its settle cancels this task
                    queued = not granted
                change = lifecycle.release_task(task, now, self.d.timeouts, queued=queued)
        if change is not None:
            await self._apply(task, change, summary)

    async def _judge_by_rule(
        self, task: Run, rule: TaskRule, summary: TickSummary, cache: dict[str, Run | None]
    ) -> None:
        """Judge a task its marks alone decide (no ``if``, no slot), without reading first.

        When many upstream tasks end at once, many of them see the marks complete; they
        race one compare-and-set on the task's record as they read it, and the losers
        read nothing more. Only the winner of a release reads the pipeline run: if it has
        ended meanwhile (its timeout), the task is cancelled instead of fired.
        """
        if not all(name in task.upstream for name in task.after):
            return
        now = self.d.now()
        if not judge_rule(rule, task.upstream):
            await self._apply(
                task, lifecycle.skip_task(task, now, describe_rule(rule, task.upstream)), summary
            )
            return
        change = lifecycle.release_task(task, now, self.d.timeouts)
        written = await self.store.update_run(task.id, change.expect, change.changes, current=task)
        if written is None:
            return  # another judge won
        assert task.parent_run_id is not None
        pipeline = await self._pipeline(task.parent_run_id, cache)
        if pipeline is None or pipeline_ended(pipeline):
            state = pipeline.state.value if pipeline is not None else "gone"
            cancel = lifecycle.cancel(
                written, self.d.now(), self.d.timeouts, f"pipeline run {state}"
            )
            if cancel is not None:
                await self._apply(written, cancel, summary)
            return
        await self.d.fire_now(written, summary)

    async def _condition(
        self, task: Run, text: str, after: list[str], pipeline: Run
    ) -> Change | None:
        """None when ``if`` holds; else the change that skips (false) or fails (error) it.

        The condition sees ``params`` (the pipeline run's) and ``tasks``: each upstream
        task's ``state`` and ``output`` (one read per upstream task, only for tasks with
        an ``if``)."""
        from firecron.core.conditions import ConditionError, compile_condition

        upstream = await self.store.get_runs([task_run_id(pipeline.id, u) for u in after])
        tasks: dict[str, JsonValue] = {}
        for r in upstream:
            name = r.task or r.id
            # The mark has the end's state even when the run's own record lags behind it.
            mark = task.upstream.get(name)
            state = mark.state if mark is not None and mark.state else r.state.value
            tasks[name] = {"state": state, "output": r.output}
        variables: dict[str, JsonValue] = {"params": dict(pipeline.params), "tasks": tasks}
        moment = self.d.now()
        try:
            holds = compile_condition(text).evaluate(variables)
        except ConditionError as exc:
            return lifecycle.fail_task(task, moment, f"if: {exc}")
        if holds:
            return None
        return lifecycle.skip_task(task, moment, f"skipped: if {text!r} is false")

    async def _take_slot(
        self, pipeline: Run, task_id: str, limit: int, cache: dict[str, Run | None]
    ) -> bool | None:
        """Take a ``max_parallel`` slot for ``task_id`` (True), or join the ready queue
        (False); None when the pipeline run has ended. Idempotent: a task already
        holding a slot, or already queued, keeps it."""
        current: Run | None = pipeline
        for _ in range(_CAS_TRIES):
            if current is None or pipeline_ended(current):
                return None
            if task_id in current.slots:
                return True
            if task_id in current.ready:
                return False
            granted = len(current.slots) < limit
            changes = (
                {"slots": [*current.slots, task_id]}
                if granted
                else {"ready": [*current.ready, task_id]}
            )
            written = await self.store.update_run(
                current.id,
                (current.state,),
                {**changes, "updated_at": self.d.now()},
                current=current,
            )
            if written is not None:
                cache[current.id] = written
                return granted
            current = await self.store.get_run(pipeline.id)
            cache[pipeline.id] = current
        raise RuntimeError(f"pipeline run {pipeline.id}: could not take a slot for {task_id}")

    async def _free_slot(
        self, task: Run, summary: TickSummary, cache: dict[str, Run | None]
    ) -> None:
        """Free the ended task's slot and hand it to the first ready task, which is fired."""
        assert task.parent_run_id is not None
        assert task.task is not None
        current = await self._pipeline(task.parent_run_id, cache)
        handed: str | None = None
        for _ in range(_CAS_TRIES):
            if current is None or task.task not in current.slots:
                break
            slots = [s for s in current.slots if s != task.task]
            ready = list(current.ready)
            handed = None
            if ready and not pipeline_ended(current):
                handed = ready.pop(0)
                slots.append(handed)
            written = await self.store.update_run(
                current.id,
                (current.state,),
                {"slots": slots, "ready": ready, "updated_at": self.d.now()},
                current=current,
            )
            if written is not None:
                cache[current.id] = written
                break
            current = await self.store.get_run(task.parent_run_id)
            cache[task.parent_run_id] = current
            handed = None
        if handed is not None:
            # If this process dies here, the queued task's own watch finds it in the slots.
            queued = await self.store.get_run(task_run_id(task.parent_run_id, handed))
            if queued is not None and queued.state is RunState.queued:
                change = lifecycle.release_task(queued, self.d.now(), self.d.timeouts)
                await self._apply(queued, change, summary)

    async def _cancel_tasks(self, pipeline: Run, summary: TickSummary) -> None:
        """Cancel the unfinished tasks of a pipeline run that ended before they did."""
        spec = pipeline.pipeline_spec
        if spec is None:
            return
        ids = [task_run_id(pipeline.id, t.id) for t in spec.tasks]
        reason = f"pipeline run ended {pipeline.state}: {pipeline.error or 'cancelled'}"
        runs = await self.store.get_runs(ids)
        # Tasks not yet started first: cancelling a started one settles it, which would
        # judge (and skip) the tasks below it before they are cancelled themselves.
        not_started = (RunState.waiting, RunState.queued)
        runs.sort(key=lambda r: r.state not in not_started)
        for run in runs:
            current: Run | None = run
            for _ in range(_CAS_TRIES):
                if current is None:
                    break
                change = lifecycle.cancel(current, self.d.now(), self.d.timeouts, reason)
                if change is None:
                    break
                if await self._apply(current, change, summary):
                    break
                current = await self.store.get_run(run.id)

    # -- applying a change -------------------------------------------------------------------

    async def _apply(self, run: Run, change: Change, summary: TickSummary) -> bool:
        """Write ``change`` by version compare-and-set; then emit its event, fire the run if
        it became ``pending``, and settle it if it ended causing more. False when another
        writer changed the run first (it then owns what follows)."""
        written = await self.store.update_run(run.id, change.expect, change.changes, current=run)
        if written is None:
            return False
        if change.event is not None:
            summary.events[change.event] += 1
            written = await self.d.emit_new(written, {e.id for e in run.events}, summary)
        if written.state is RunState.pending:
            await self.d.fire_now(written, summary)
        elif written.state is RunState.waiting and written.wait_key is not None:
            await self.d.waits.look(written, summary)  # it began waiting: look at once
        elif written.is_terminal and written.settle_at is not None:
            await self.settle(written, summary)
        return True
