"""Schedule management service: apply, pause, resume, delete. Used by the CLI.

Every write is a compare-and-set against the version read, so management commands
race safely with dispatchers claiming the same schedules: on a lost race the
operation re-reads and recomputes (a bounded number of times).

``apply`` reads the stored schedules once, plans every change in memory, then writes
them with one :meth:`Store.write_schedules` call (one transaction on SQLite, batches of
500 on Firestore); only the writes that lost a race take the per-schedule path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from firecron._gc import gc_paused
from firecron.core import planning
from firecron.core.models import ScheduleSpec, ScheduleState, StoredSchedule
from firecron.errors import ConflictError, InvalidInputError, NotFoundError, StoreError
from firecron.store.base import ScheduleWrite, Store

__all__ = [
    "ApplyAction",
    "ApplyLine",
    "Progress",
    "PruneRefused",
    "apply_schedules",
    "delete",
    "pause",
    "resume",
]

_CAS_TRIES = 5
_PROGRESS_EVERY = 1_000
"""Planned schedules between two progress reports."""
_READ_PAGE = 10_000
"""Stored schedules read per query by ``apply`` (the emulator scans its whole collection
for every query, so fewer, larger pages)."""

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: ``phase`` is ``"read"``, ``"plan"`` or ``"write"``;
``total`` is 0 while it is not known (reading)."""


class ApplyAction(StrEnum):
    """What ``apply`` does to one schedule, with its plan-line symbol."""

    create = "+"
    update = "~"
    unchanged = "="
    delete = "-"


@dataclass(frozen=True)
class ApplyLine:
    """One line of an apply plan."""

    action: ApplyAction
    schedule_id: str
    changed_fields: tuple[str, ...] = ()


class PruneRefused(InvalidInputError):
    """``--prune`` would delete every stored schedule, or more than half of them."""

    def __init__(self, deleting: int, stored: int) -> None:
        self.deleting = deleting
        self.stored = stored
        super().__init__(
            f"apply: --prune would delete {deleting} of {stored} stored schedules;"
            " pass --yes to confirm"
        )


def prune_needs_confirmation(deleting: int, stored: int) -> bool:
    """Whether a prune deleting ``deleting`` of ``stored`` schedules must be confirmed.

    It must when it deletes every schedule (there being at least one) or more than
    half of them: an empty or truncated file would otherwise wipe the store.
    """
    return deleting > 0 and (deleting == stored or 2 * deleting > stored)


def _diff(old: ScheduleSpec, new: ScheduleSpec) -> tuple[str, ...]:
    a, b = old.model_dump(), new.model_dump()
    return tuple(k for k in b if a.get(k) != b.get(k))


async def apply_schedules(
    store: Store,
    specs: Sequence[ScheduleSpec],
    now: datetime,
    *,
    prune: bool,
    dry_run: bool,
    confirmed: bool = False,
    progress: Progress | None = None,
) -> list[ApplyLine]:
    """Make the store match ``specs``; returns the plan (also when ``dry_run``, which writes nothing).

    Unchanged schedules are not written, so re-applying keeps next fire times and
    counters. A changed definition keeps counters and pause; its next fire time is
    recomputed only if a field deciding *when* it fires changed. ``prune`` deletes
    stored schedules absent from ``specs`` (their run history is kept).

    Unless ``confirmed`` or ``dry_run``, a prune that
    :func:`prune_needs_confirmation` raises :class:`PruneRefused` and writes nothing.
    ``progress`` is called as planning and writing advance (see :data:`Progress`).
    """
    with gc_paused():  # see firecron._gc: the plan of a large file is millions of objects
        stored_ids, changed = await _read_stored(store, specs, progress)
        stored = set(stored_ids)
        lines: list[ApplyLine] = []
        writes: list[ScheduleWrite] = []
        total = len(specs)
        for done, spec in enumerate(specs, 1):
            if spec.id not in stored:
                lines.append(ApplyLine(ApplyAction.create, spec.id))
                if not dry_run:
                    writes.append(ScheduleWrite(spec, planning.initial_state(spec, now), None))
            elif (old := changed.get(spec.id)) is None:
                lines.append(ApplyLine(ApplyAction.unchanged, spec.id))
            else:
                lines.append(ApplyLine(ApplyAction.update, spec.id, _diff(old.spec, spec)))
                if not dry_run:
                    state = planning.replan(spec, old.spec, old.state, now)
                    writes.append(ScheduleWrite(spec, state, old.version))
            if progress is not None and (done % _PROGRESS_EVERY == 0 or done == total):
                progress("plan", done, total)
    deletes: list[str] = []
    if prune:
        wanted = {s.id for s in specs}
        deletes = [i for i in stored_ids if i not in wanted]  # in id order
        lines += [ApplyLine(ApplyAction.delete, i) for i in deletes]
        if not dry_run and not confirmed and prune_needs_confirmation(len(deletes), len(stored)):
            raise PruneRefused(len(deletes), len(stored))
    if dry_run or not (writes or deletes):
        return lines

    if progress is not None:
        progress("write", 0, len(writes) + len(deletes))
    results = await store.write_schedules(writes, deletes)
    # The writes that lost a race with a dispatcher (or another apply) converge one by
    # one: re-read, recompute, compare-and-set.
    for write, result in zip(writes, results, strict=True):
        if result is None:
            await _converge(store, write.spec, now)
    if progress is not None:
        progress("write", len(writes) + len(deletes), len(writes) + len(deletes))
    return lines


async def _read_stored(
    store: Store, specs: Sequence[ScheduleSpec], progress: Progress | None
) -> tuple[list[str], dict[str, StoredSchedule]]:
    """Every stored id (in id order), and the stored schedules that differ from ``specs``.

    Read a page at a time, keeping only what the plan needs: a re-applied file of
    100,000 unchanged schedules would otherwise hold a second copy of all of them.
    """
    by_id = {spec.id: spec for spec in specs}
    ids: list[str] = []
    changed: dict[str, StoredSchedule] = {}
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_READ_PAGE)
        for stored in page:
            ids.append(stored.id)
            wanted = by_id.get(stored.id)
            if wanted is not None and wanted != stored.spec:
                changed[stored.id] = stored
        if progress is not None:
            progress("read", len(ids), 0)
        if len(page) < _READ_PAGE:
            return ids, changed
        after = page[-1].id


async def _converge(store: Store, spec: ScheduleSpec, now: datetime) -> None:
    """Write ``spec`` whatever happened since the plan: create it, or update what is there."""
    for _ in range(_CAS_TRIES):
        if await store.get_schedule(spec.id) is not None:
            await _update(store, spec.id, _changed(spec, now))
            return
        try:
            await store.put_schedule(spec, planning.initial_state(spec, now), expect_version=None)
            return
        except ConflictError:
            continue  # created concurrently: update it
    raise StoreError(f"schedule {spec.id!r} kept changing; try again")


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
