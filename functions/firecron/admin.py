"""Schedule management service: apply, pause, resume, delete. Used by the CLI.

Every write is a compare-and-set against the version read, so management commands
race safely with dispatchers claiming the same schedules: on a lost race the
operation re-reads and recomputes (a bounded number of times).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from firecron.core import planning
from firecron.core.models import ScheduleSpec, ScheduleState, StoredSchedule
from firecron.errors import ConflictError, NotFoundError, StoreError
from firecron.store.base import Store

__all__ = ["ApplyAction", "ApplyLine", "apply_schedules", "delete", "pause", "resume"]

_CAS_TRIES = 5


class ApplyAction(StrEnum):
    """What ``apply`` does to one schedule, with its plan-line symbol."""

    create = "+"
    change = "~"
    unchanged = "="
    delete = "-"


@dataclass(frozen=True)
class ApplyLine:
    """One line of an apply plan."""

    action: ApplyAction
    schedule_id: str
    changed_fields: tuple[str, ...] = ()


def _diff(old: ScheduleSpec, new: ScheduleSpec) -> tuple[str, ...]:
    a, b = old.model_dump(), new.model_dump()
    return tuple(k for k in b if a.get(k) != b.get(k))


async def apply_schedules(
    store: Store, specs: Sequence[ScheduleSpec], now: datetime, *, prune: bool, dry_run: bool
) -> list[ApplyLine]:
    """Make the store match ``specs``; returns the plan (also when ``dry_run``, which writes nothing).

    Unchanged schedules are not written, so re-applying keeps next fire times and
    counters. A changed definition keeps counters and pause; its next fire time is
    recomputed only if a field deciding *when* it fires changed. ``prune`` deletes
    stored schedules absent from ``specs`` (their run history is kept).
    """
    existing = {s.id: s for s in await store.list_schedules()}
    lines: list[ApplyLine] = []
    for spec in specs:
        old = existing.get(spec.id)
        if old is None:
            lines.append(ApplyLine(ApplyAction.create, spec.id))
        elif old.spec == spec:
            lines.append(ApplyLine(ApplyAction.unchanged, spec.id))
        else:
            lines.append(ApplyLine(ApplyAction.change, spec.id, _diff(old.spec, spec)))
    if prune:
        wanted = {s.id for s in specs}
        lines += [ApplyLine(ApplyAction.delete, i) for i in sorted(existing) if i not in wanted]
    if dry_run:
        return lines

    by_id = {s.id: s for s in specs}
    for line in lines:
        if line.action is ApplyAction.create:
            spec = by_id[line.schedule_id]
            try:
                await store.put_schedule(
                    spec, planning.initial_state(spec, now), expect_version=None
                )
            except ConflictError:
                # Created concurrently by another apply: converge like a change.
                await _update(store, spec.id, _changed(spec, now))
        elif line.action is ApplyAction.change:
            spec = by_id[line.schedule_id]
            await _update(store, spec.id, _changed(spec, now))
        elif line.action is ApplyAction.delete:
            await store.delete_schedule(line.schedule_id)
    return lines


def _changed(
    spec: ScheduleSpec, now: datetime
) -> Callable[[StoredSchedule], tuple[ScheduleSpec, ScheduleState]]:
    def change(stored: StoredSchedule) -> tuple[ScheduleSpec, ScheduleState]:
        return spec, planning.replan(spec, stored.spec, stored.state, now)

    return change


async def _update(
    store: Store,
    schedule_id: str,
    change: Callable[[StoredSchedule], tuple[ScheduleSpec, ScheduleState]],
) -> StoredSchedule:
    """Read, compute, compare-and-set; retried when a dispatcher wrote in between."""
    for _ in range(_CAS_TRIES):
        stored = await store.get_schedule(schedule_id)
        if stored is None:
            raise NotFoundError(f"unknown schedule {schedule_id!r}")
        spec, state = change(stored)
        if spec == stored.spec and state == stored.state:
            return stored
        try:
            return await store.put_schedule(spec, state, expect_version=stored.version)
        except ConflictError:
            continue
    raise StoreError(f"schedule {schedule_id!r} kept changing; try again")


def _state_op(
    op: Callable[[ScheduleSpec, ScheduleState, datetime], ScheduleState], now: datetime
) -> Callable[[StoredSchedule], tuple[ScheduleSpec, ScheduleState]]:
    return lambda s: (s.spec, op(s.spec, s.state, now))


async def pause(store: Store, schedule_id: str, now: datetime) -> StoredSchedule:
    """Pause a schedule (idempotent). Raises :class:`NotFoundError` for an unknown id."""
    return await _update(store, schedule_id, _state_op(planning.pause, now))


async def resume(store: Store, schedule_id: str, now: datetime) -> StoredSchedule:
    """Resume a schedule (idempotent); the misfire policy judges what was missed while paused."""
    return await _update(store, schedule_id, _state_op(planning.resume, now))


async def delete(store: Store, schedule_id: str) -> None:
    """Delete a schedule, keeping its runs. Raises :class:`NotFoundError` for an unknown id."""
    if not await store.delete_schedule(schedule_id):
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
