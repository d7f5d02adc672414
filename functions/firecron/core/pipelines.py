"""Pipelines: the task graph, its task runs, and the rules that judge a task. Pure.

A pipeline run is a run whose target is ``{pipeline: ID}``; it carries a snapshot of the
pipeline (``Run.pipeline_spec``). Starting it is ONE atomic write (``Store.spawn``): the
pipeline run becomes ``running`` and every task run is created, the root tasks
``pending`` (or ``queued`` beyond ``max_parallel``) and the others ``waiting``. Task
run ids are ``{pipeline_run_id}.{task_id}`` (:func:`~firecron.core.runs.task_run_id`).

A task's end is marked on each of its downstream task runs (``Store.mark_upstream``:
one field per upstream task, so concurrent ends never overwrite each other), and a leaf
task's end on the pipeline run. Whoever's mark completes a task's set judges it
(:func:`judge`): its rule over the marks, then its ``if``. Of several that see the set
complete, the compare-and-set on the task run's state lets exactly one move it on.

Outcomes the rules see (:class:`~firecron.core.runs.UpstreamEnd`): ``succeeded``
(``delivered`` too), ``failed`` (``failed``, ``timed_out``, ``lost``, ``cancelled``),
``skipped``, and ``upstream_failed``, a task skipped because a task above it failed,
which the rules count as failed. So an error path (``when: any_failed``) placed after
the last task of a chain runs when any task of the chain failed, as in Airflow, where a
task below a failure is ``upstream_failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from firecron.core.models import JsonValue, PipelineSpec, TaskRule, TaskSpec
from firecron.core.runs import Attempt, Run, RunState, RunTrigger, UpstreamEnd, task_run_id

__all__ = [
    "build_task_runs",
    "describe_rule",
    "downstream_of",
    "is_complete",
    "judge_rule",
    "leaves",
    "pipeline_ended",
    "roots",
    "task_params",
]


def downstream_of(spec: PipelineSpec) -> dict[str, list[str]]:
    """For each task id, the ids of the tasks whose ``after`` names it, in file order."""
    below: dict[str, list[str]] = {task.id: [] for task in spec.tasks}
    for task in spec.tasks:
        for upstream in task.after:
            if upstream in below and task.id not in below[upstream]:
                below[upstream].append(task.id)
    return below


def roots(spec: PipelineSpec) -> list[str]:
    """Tasks with no ``after``: they start with the pipeline run."""
    return [task.id for task in spec.tasks if not task.after]


def leaves(spec: PipelineSpec) -> list[str]:
    """Tasks no other task waits for: their ends decide the pipeline run.

    Every task is a leaf or above one, and a task is judged only after all of its
    upstream tasks ended, so once every leaf has ended, every task has.
    """
    return [task for task, below in downstream_of(spec).items() if not below]


def task_params(pipeline_run: Run, task: TaskSpec) -> dict[str, JsonValue]:
    """A task run's params: the task's over the pipeline run's (which are the schedule's
    over the pipeline's defaults)."""
    return {**pipeline_run.params, **task.params}


def build_task_runs(
    pipeline_run: Run, now: datetime, *, pending_grace: timedelta
) -> tuple[list[Run], list[str], list[str]]:
    """The task runs a pipeline run creates when it starts, and its slots and ready queue.

    Root tasks are ``pending`` (fired at once), beyond ``max_parallel`` ``queued`` for a
    slot; a root with an ``if`` or a ``wait`` is ``waiting``, to be judged right after
    the start (and watched at ``pending_grace``, in case the starter dies first); the
    others are ``waiting`` for their upstream tasks, unwatched: the last upstream end
    judges them. Each snapshots its task's target and policies, and the pipeline run's
    routes, retention and zone.
    """
    spec = pipeline_run.pipeline_spec
    if spec is None:
        raise ValueError(f"run {pipeline_run.id} is not a pipeline run")
    below = downstream_of(spec)
    limit = spec.max_parallel
    slots: list[str] = []
    ready: list[str] = []
    runs: list[Run] = []
    for task in spec.tasks:
        state = RunState.waiting
        deadline: datetime | None = None
        if not task.after and (task.if_ is not None or task.wait is not None):
            # A root with a condition is judged right after the start, like any task
            # once its (no) upstream tasks have ended; watched, in case that never comes.
            deadline = now + pending_grace
        elif not task.after:
            if limit is None or len(slots) < limit:
                state, deadline = RunState.pending, now + pending_grace
                if limit is not None:
                    slots.append(task.id)
            else:
                state, deadline = RunState.queued, now + pending_grace
                ready.append(task.id)
        runs.append(
            Run(
                id=task_run_id(pipeline_run.id, task.id),
                schedule_id=pipeline_run.schedule_id,
                scheduled_for=pipeline_run.scheduled_for,
                fire_at=now,
                trigger=RunTrigger.pipeline,
                state=state,
                params=task_params(pipeline_run, task),
                target=task.run_target,
                retry=task.retry,
                timeout=task.timeout,
                expected_duration=task.expected_duration,
                labels=dict(pipeline_run.labels),
                retention=pipeline_run.retention,
                created_at=now,
                updated_at=now,
                deadline_at=deadline,
                watch_at=deadline,
                attempts=[Attempt(number=1)] if state is RunState.pending else [],
                blocked_by=pipeline_run.id if state is RunState.queued else None,
                parent_run_id=pipeline_run.id,
                task=task.id,
                pipeline=spec.id,
                cause_run_id=pipeline_run.id,
                after=list(task.after),
                # The marks alone decide a task with neither an `if` nor a slot to take.
                rule=task.when
                if task.if_ is None and limit is None and task.wait is None
                else None,
                downstream=below[task.id],
                holds_slot=limit is not None,
                notify=list(pipeline_run.notify),
                timezone=pipeline_run.timezone,
            )
        )
    return runs, slots, ready


def _counts_failed(mark: UpstreamEnd) -> bool:
    return mark.outcome in ("failed", "upstream_failed")


def judge_rule(rule: TaskRule, marks: Mapping[str, UpstreamEnd]) -> bool:
    """Whether ``rule`` holds over the marks of every upstream task."""
    if rule is TaskRule.all_succeeded:
        return all(m.outcome == "succeeded" for m in marks.values())
    if rule is TaskRule.none_failed:
        return not any(_counts_failed(m) for m in marks.values())
    if rule is TaskRule.any_failed:
        return any(_counts_failed(m) for m in marks.values())
    return True  # all_done


def describe_rule(when: TaskRule, marks: Mapping[str, UpstreamEnd]) -> str:
    """Why the rule ``when`` does not hold over ``marks``, for a ``skipped`` run's error."""
    failed = sorted(u for u, m in marks.items() if _counts_failed(m))
    skipped = sorted(u for u, m in marks.items() if m.outcome == "skipped")
    if when is TaskRule.any_failed:
        return "skipped: no upstream task failed"
    parts = []
    if failed:
        parts.append(f"failed upstream: {', '.join(failed)}")
    if skipped and when is TaskRule.all_succeeded:
        parts.append(f"skipped upstream: {', '.join(skipped)}")
    return f"skipped ({when.value}): " + "; ".join(parts or ["rule does not hold"])


def is_complete(task: TaskSpec, marks: Mapping[str, UpstreamEnd]) -> bool:
    """True once every task in ``task.after`` has marked its end."""
    return all(upstream in marks for upstream in task.after)


def pipeline_ended(pipeline_run: Run) -> bool:
    """True when the pipeline run has ended: its waiting tasks are cancelled, not judged."""
    return pipeline_run.state not in (RunState.pending, RunState.running)
