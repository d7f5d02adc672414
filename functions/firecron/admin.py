"""Schedule management service: apply, pause, resume, delete. Used by the CLI.

Every write is a compare-and-set against the version read, so management commands
race safely with dispatchers claiming the same schedules: on a lost race the
operation re-reads and recomputes (a bounded number of times).

``apply`` reads the stored schedules once, plans every change in memory, then writes
them with one :meth:`Store.write_schedules` call; only the writes that lost a race take
the per-schedule path. Nothing is written until every entry is prepared: planned, and
encoded as the stores encode it (:func:`unwritable` is the same check, for
``validate``); a failure there is :class:`UnpreparedSchedules` and writes nothing.

All or nothing: on SQLite the writes and deletes are one transaction, so a failure
leaves the store as it was. On Firestore they are batches of 500, each atomic, and an
apply of more than 500 changes is not atomic across batches: a failure midway (the
network, the quota) leaves some batches written, and running the same ``apply`` again
converges, since it writes only what still differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from firecron._gc import gc_paused
from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.render import one_line
from firecron.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PreconditionFailed,
    StoreError,
)
from firecron.store._codec import to_json
from firecron.store.base import ScheduleWrite, Store

__all__ = [
    "ApplyAction",
    "ApplyLine",
    "Progress",
    "PruneRefused",
    "UnpreparedSchedules",
    "apply_schedules",
    "delete",
    "pause",
    "resume",
    "stop_live_generation",
    "stored_pipelines",
    "unwritable",
]

_CAS_TRIES = 5
_PROGRESS_EVERY = 1_000
"""Planned schedules between two progress reports."""
_MAX_SPEC_BYTES = 256 * 1024
"""Largest encoded schedule: a Firestore document holds 1 MiB, and every run of the
schedule carries its params again."""
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


class UnpreparedSchedules(InvalidInputError):
    """Schedules that could not be planned or encoded for the store; nothing was written.

    ``errors`` holds one line per problem, ``schedules[i] (id=x): field: reason``.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def _label(index: int, schedule_id: str) -> str:
    return f"schedules[{index}] (id={schedule_id})"


def _error_line(exc: BaseException) -> str:
    return one_line(str(exc), 200) or type(exc).__name__


def _bad_text(value: Any, loc: str = "") -> Iterator[tuple[str, str]]:
    """``(path, text)`` of each string in a model dump that UTF-8 cannot encode."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                yield loc, value[exc.start : exc.end]
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key}" if loc else str(key)
            yield from _bad_text(key, where)
            yield from _bad_text(item, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _bad_text(item, f"{loc}[{index}]")


def _encoding_problem(spec: ScheduleSpec, state: ScheduleState | None) -> str | None:
    """Why the stores could not write ``spec`` (and ``state``), as ``field: reason``, or None.

    The encoding is the stores' own (:func:`firecron.store._codec.to_json`, then UTF-8).
    """
    try:
        size = len(to_json(spec).encode("utf-8"))
        if state is not None:
            to_json(state).encode("utf-8")
    except UnicodeEncodeError:
        for where, text in _bad_text(spec.model_dump()):
            return f"{where}: {text!r} is not valid Unicode text (a lone surrogate)"
        return "not valid Unicode text (a lone surrogate)"
    except (TypeError, ValueError, OverflowError) as exc:
        return f"cannot be encoded for the store: {_error_line(exc)}"
    if size > _MAX_SPEC_BYTES:
        # A pipeline target carries its pipeline (every task's params and conditions).
        what = (
            "params, description or the pipeline" if spec.pipeline_spec else "params or description"
        )
        return (
            f"the schedule is {size:,} bytes once encoded; at most {_MAX_SPEC_BYTES:,} "
            f"(shorten {what})"
        )
    return None


def _plan_problem(spec: ScheduleSpec, now: datetime) -> tuple[ScheduleState | None, str | None]:
    """``spec``'s initial state at ``now`` and its next occurrences, or why they fail."""
    try:
        state = planning.initial_state(spec, now)
        if state.next_occurrence is not None:
            planning.trigger_of(spec).occurrences(state.next_occurrence, 4)
    except (ArithmeticError, ValueError) as exc:
        return (
            None,
            f"{spec.trigger_field or 'trigger'}: cannot plan its occurrences: {_error_line(exc)}",
        )
    return state, None


def unwritable(specs: Sequence[ScheduleSpec], now: datetime) -> list[str]:
    """Why some of ``specs`` could not be applied at ``now``: one line per problem.

    Each spec is planned as a new schedule (first occurrence and the four after it; an
    on-demand spec has none) and encoded as the stores encode it, its pipeline snapshot
    included (a pipeline shared by several schedules is copied into each), so a file
    that passes is one ``apply`` can write.
    The plan depends on a schedule's id only through its jitter offset, which stays
    below ``jitter``: specs whose trigger, bounds, jitter and grace are equal share one
    plan, which keeps a file of 100,000 schedules cheap to check.
    """
    errors: list[str] = []
    plans: dict[tuple[object, ...], tuple[ScheduleState | None, str | None]] = {}
    for index, spec in enumerate(specs):
        key = (*spec.trigger_fields(), spec.misfire.grace)
        planned = plans.get(key)
        if planned is None:
            planned = plans[key] = _plan_problem(spec, now)
        state, problem = planned
        if problem is None:
            problem = _encoding_problem(spec, state)
        if problem is not None:
            errors.append(f"{_label(index, spec.id)}: {problem}")
    return errors


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
    stored schedules absent from ``specs`` (their run history is kept), except those the
    admin API manages (``managed_by: api``); a spec of ``specs`` with the id of such a
    schedule takes it over (it becomes ``managed_by: file``).

    Unless ``confirmed`` or ``dry_run``, a prune that
    :func:`prune_needs_confirmation` raises :class:`PruneRefused` and writes nothing.
    A schedule that cannot be planned or encoded for the store raises
    :class:`UnpreparedSchedules` (every such line) and writes nothing.
    ``progress`` is called as planning and writing advance (see :data:`Progress`).
    """
    with gc_paused():  # see firecron._gc: the plan of a large file is millions of objects
        stored_ids, changed, continuous, api_managed = await _read_stored(store, specs, progress)
        stored = set(stored_ids)
        lines: list[ApplyLine] = []
        writes: list[ScheduleWrite] = []
        positions: list[int] = []  # each write's index in ``specs``, for error lines
        errors: list[str] = []
        total = len(specs)
        for done, spec in enumerate(specs, 1):
            old = changed.get(spec.id)
            if spec.id not in stored:
                lines.append(ApplyLine(ApplyAction.create, spec.id))
            elif old is None:
                lines.append(ApplyLine(ApplyAction.unchanged, spec.id))
            else:
                lines.append(ApplyLine(ApplyAction.update, spec.id, _diff(old.spec, spec)))
            if not dry_run and (spec.id not in stored or old is not None):
                try:
                    state = (
                        planning.initial_state(spec, now)
                        if old is None
                        else planning.replan(spec, old.spec, old.state, now)
                    )
                except (ArithmeticError, ValueError) as exc:
                    errors.append(
                        f"{_label(done - 1, spec.id)}: {spec.trigger_field or 'trigger'}: "
                        f"cannot plan its occurrences: {_error_line(exc)}"
                    )
                    continue
                writes.append(ScheduleWrite(spec, state, None if old is None else old.version))
                positions.append(done - 1)
            if progress is not None and (done % _PROGRESS_EVERY == 0 or done == total):
                progress("plan", done, total)
        # Every write is encoded here first, as the stores will: a value no store can
        # take fails the whole apply before the first write.
        for index, write in zip(positions, writes, strict=True):
            problem = _encoding_problem(write.spec, write.state)
            if problem is not None:
                errors.append(f"{_label(index, write.spec.id)}: {problem}")
        if errors:
            raise UnpreparedSchedules(errors)
    deletes: list[str] = []
    if prune:
        wanted = {s.id for s in specs}
        # Schedules the admin API owns (managed_by: api) are not the file's to delete, and
        # do not count among the stored ones a prune is judged against.
        deletes = [i for i in stored_ids if i not in wanted and i not in api_managed]
        lines += [ApplyLine(ApplyAction.delete, i) for i in deletes]
        owned = len(stored) - len(api_managed)
        if not dry_run and not confirmed and prune_needs_confirmation(len(deletes), owned):
            raise PruneRefused(len(deletes), owned)
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
    # A continuous schedule pruned, disabled or made something else: its live generation
    # stops now, not at its window's end (which would then create no successor anyway).
    for schedule_id in deletes:
        if schedule_id in continuous:
            await stop_live_generation(store, continuous[schedule_id], now)
    for spec in specs:
        old = changed.get(spec.id)
        if old is not None and (not spec.enabled or spec.continuous is None):
            await stop_live_generation(store, old, now)
    if progress is not None:
        progress("write", len(writes) + len(deletes), len(writes) + len(deletes))
    return lines


async def _read_stored(
    store: Store, specs: Sequence[ScheduleSpec], progress: Progress | None
) -> tuple[list[str], dict[str, StoredSchedule], dict[str, StoredSchedule], set[str]]:
    """Every stored id (in id order), the stored schedules that differ from ``specs``,
    the stored continuous schedules absent from them (a prune stops their instance), and
    the ids absent from them that the admin API manages (``managed_by: api``: never pruned).

    Read a page at a time, keeping only what the plan needs: a re-applied file of
    100,000 unchanged schedules would otherwise hold a second copy of all of them.
    """
    by_id = {spec.id: spec for spec in specs}
    ids: list[str] = []
    changed: dict[str, StoredSchedule] = {}
    continuous: dict[str, StoredSchedule] = {}
    api_managed: set[str] = set()
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_READ_PAGE)
        for stored in page:
            ids.append(stored.id)
            wanted = by_id.get(stored.id)
            if wanted is not None and wanted != stored.spec:
                changed[stored.id] = stored
            elif wanted is None and stored.spec.managed_by == "api":
                api_managed.add(stored.id)
            elif wanted is None and stored.spec.continuous is not None:
                continuous[stored.id] = stored
        if progress is not None:
            progress("read", len(ids), 0)
        if len(page) < _READ_PAGE:
            return ids, changed, continuous, api_managed
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
    """Pause a schedule (idempotent). Raises :class:`NotFoundError` for an unknown id.

    A continuous schedule's live generation is also asked to stop: its
    ``ctx.keep_going()`` turns false at its next heartbeat, and, the schedule being
    paused, its end creates no successor.
    """
    paused = await _update(store, schedule_id, _state_op(planning.pause, now))
    await stop_live_generation(store, paused, now)
    return paused


async def _ask_to_stop(store: Store, run_id: str, now: datetime) -> None:
    """Cancel a live generation: a running one is asked to stop through its next heartbeat
    reply (it ends ``cancelled``); one not started yet (waiting for its crash backoff,
    say) is cancelled at once, so a pause never lets it start."""
    from firecron.core import lifecycle

    for _ in range(5):
        live = await store.get_run(run_id)
        if live is None:
            return
        change = lifecycle.cancel(live, now, lifecycle.RunTimeouts(), "schedule paused")
        if change is None:
            return
        if await store.update_run(run_id, change.expect, change.changes, current=live):
            return


async def resume(store: Store, schedule_id: str, now: datetime) -> StoredSchedule:
    """Resume a schedule (idempotent); the misfire policy judges what was missed while paused."""
    return await _update(store, schedule_id, _state_op(planning.resume, now))


async def delete(
    store: Store, schedule_id: str, now: datetime, *, expect_version: str | None = None
) -> None:
    """Delete a schedule, keeping its runs. Raises :class:`NotFoundError` for an unknown id.

    With ``expect_version``, only at that version: :class:`PreconditionFailed` (field
    ``If-Match``) when it is at another, or changes before the delete. A continuous
    schedule's live generation is then asked to stop, as by :func:`pause`; the schedule
    being gone, its end creates no successor.
    """
    stored = await store.get_schedule(schedule_id)
    if stored is None:
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
    if expect_version is not None and stored.version != expect_version:
        raise PreconditionFailed(
            f"schedule {schedule_id!r} is at version {stored.version}, not {expect_version}",
            field="If-Match",
        )
    try:
        deleted = await store.delete_schedule(schedule_id, expect_version=expect_version)
    except ConflictError:
        raise PreconditionFailed(
            f"schedule {schedule_id!r} changed meanwhile", field="If-Match"
        ) from None
    if not deleted:
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
    await stop_live_generation(store, stored, now)


async def stop_live_generation(store: Store, stored: StoredSchedule, now: datetime) -> None:
    """Ask a continuous schedule's live generation (if any) to stop."""
    if stored.spec.continuous is not None and stored.state.last_run_id is not None:
        await _ask_to_stop(store, stored.state.last_run_id, now)


_PIPELINE_PAGE = 1000


async def stored_pipelines(store: Store) -> dict[str, tuple[PipelineSpec, list[str]]]:
    """Each pipeline a stored schedule targets, by id: its snapshot (the first schedule's
    in id order; ``apply`` writes one file's pipeline into every schedule naming it, so
    they agree) and the ids of the schedules targeting it. Reads every schedule once, a
    page at a time: a pipeline is stored only as those copies."""
    found: dict[str, tuple[PipelineSpec, list[str]]] = {}
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_PIPELINE_PAGE)
        for stored in page:
            pipeline = stored.spec.pipeline_spec
            if pipeline is not None:
                found.setdefault(pipeline.id, (pipeline, []))[1].append(stored.id)
        if len(page) < _PIPELINE_PAGE:
            return found
        after = page[-1].id
