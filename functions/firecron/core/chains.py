"""Runs caused by other runs: ``then:`` steps and ``ctx.submit``. Pure; ``now`` is passed in.

A caused run is a claim on its target schedule, planned here like an occurrence: its
id is deterministic in its cause (:func:`~firecron.core.runs.caused_run_id`), so the
recorder of the cause's end, a tick's sweep and a retried ``ctx.submit`` all claim the
same record and only one can. It follows the target schedule's overlap policy, as a
scheduled occurrence would: against the schedule's latest run, an active one makes it
``skipped`` (``skip``) or ``queued`` (``queue_one``, one at most). A paused or
disabled target records it ``skipped`` with the reason. The claim points the
schedule's ``last_run_id`` at it (unless it was skipped), so the next occurrence sees it
for its own overlap judgement; the schedule's counters and next fire time are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from firecron.core.lifecycle import RunTimeouts
from firecron.core.models import JsonValue, OverlapPolicy, ScheduleState, StoredSchedule
from firecron.core.planning import Occurrence, build_run
from firecron.core.runs import ACTIVE_STATES, Run, RunState, RunTrigger

__all__ = ["CausedPlan", "plan_caused"]


@dataclass(frozen=True)
class CausedPlan:
    """The run a cause claims on its target schedule, and the schedule's new state."""

    run: Run
    new_state: ScheduleState


def plan_caused(
    stored: StoredSchedule,
    latest_run: Run | None,
    run_id: str,
    now: datetime,
    *,
    cause_run_id: str,
    params: Mapping[str, JsonValue] | None = None,
    pending_grace: timedelta = RunTimeouts.pending_grace,
    default_retention: timedelta | None = None,
) -> CausedPlan:
    """Plan the run ``run_id`` of ``stored`` caused by ``cause_run_id`` at ``now``.

    ``latest_run`` must be the run named by ``stored.state.last_run_id`` when the target
    tracks its end (a worker or a pipeline) and ``overlap`` is not ``allow``; otherwise it
    is ignored. ``params`` go over the schedule's own.
    """
    spec, state = stored.spec, stored.state
    reason: str | None = None
    run_state = RunState.pending
    blocked_by: str | None = None
    if not spec.enabled:
        run_state, reason = RunState.skipped, f"schedule {spec.id} is disabled"
    elif state.paused:
        run_state, reason = RunState.skipped, f"schedule {spec.id} is paused"
    elif spec.target.tracks_end and spec.overlap is not OverlapPolicy.allow:
        active = latest_run is not None and (
            latest_run.state in ACTIVE_STATES or latest_run.state is RunState.queued
        )
        if active and latest_run is not None:
            if spec.overlap is OverlapPolicy.queue_one and latest_run.state is not RunState.queued:
                run_state, blocked_by = RunState.queued, latest_run.id
            else:
                run_state = RunState.skipped
                reason = f"run {latest_run.id} of schedule {spec.id} is still {latest_run.state}"
    run = build_run(
        spec,
        run_id,
        Occurrence(now, now),
        now,
        trigger=RunTrigger.chained,
        state=run_state,
        params=params,
        pending_grace=pending_grace,
        blocked_by=blocked_by,
        default_retention=default_retention,
        error=reason,
        cause_run_id=cause_run_id,
    )
    new_state = state
    if run_state is not RunState.skipped:
        new_state = state.model_copy(update={"last_run_id": run_id, "updated_at": now})
    else:
        new_state = state.model_copy(
            update={"skipped_count": state.skipped_count + 1, "updated_at": now}
        )
    return CausedPlan(run, new_state)
