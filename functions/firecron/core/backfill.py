"""Backfill planning: which occurrences of a range a backfill creates runs for. Pure.

A backfill creates one run per occurrence of a schedule in ``[start, end]`` (both
inclusive), with ``trigger: backfill`` and the occurrence's normal run id
(:func:`~firecron.core.runs.scheduled_run_id`), so an occurrence never has two runs:
one that already has a run (fired, skipped, missed, or created by an earlier backfill)
is reported and left alone. That is also what makes a backfill resumable.

An occurrence the schedule will still fire itself (at or after its ``next_occurrence``)
is not backfilled: its run id would then exist when the tick claims it, and the claim
would fail. They are reported as ``later``, as are occurrences after ``now``. A schedule
with no next occurrence (disabled, exhausted) plans again only after ``now`` when it is
re-planned; a paused one, on resume, after its ``last_occurrence`` (or its pause), so a
backfill of a paused schedule first moves ``last_occurrence`` up to the latest occurrence
it creates (:func:`handled_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from firecron.core.models import ScheduleSpec, ScheduleState
from firecron.core.planning import trigger_of
from firecron.core.render import rfc3339
from firecron.core.runs import scheduled_run_id
from firecron.core.triggers import parse_instant, validate_timezone

__all__ = [
    "MAX_OCCURRENCES",
    "BackfillPlan",
    "handled_state",
    "occurrences",
    "parse_bound",
    "plan_backfill",
]

MAX_OCCURRENCES = 10_000
"""A backfill range may hold at most this many occurrences (split a longer one)."""
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill of one range does, before anything is written."""

    planned: list[datetime]
    """The occurrences in the range it handles (before ``horizon``), oldest first."""
    run_ids: list[str]
    """The run id of each of ``planned``, in the same order."""
    later: list[datetime]
    """Occurrences in the range the schedule fires itself (at or after its next occurrence)."""


def parse_bound(text: str, timezone: str, *, end: bool) -> datetime:
    """A range bound given as RFC 3339 (``2027-01-04T10:00:00Z``), a naive date-time (a
    wall time in ``timezone``) or a date (``2027-01-04``).

    A date means the start of that day in ``timezone`` as a start, and its end (the
    last microsecond before the next midnight) as an ``end``, so ``--from 2027-01-01
    --to 2027-01-31`` is the whole of January. Raises :class:`ValueError` (one line).
    """
    stripped = text.strip()
    if len(stripped) == 10:
        try:
            day = datetime.strptime(stripped, "%Y-%m-%d")
        except ValueError:
            raise ValueError(f"invalid date {text!r}: write it like 2027-01-04") from None
        zone = ZoneInfo(validate_timezone(timezone))
        if end:
            # Midnight of the next day, as a wall time; the instant before it ends the day.
            following = (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
            return parse_instant(following, str(zone)) - _ONE_US
        return parse_instant(day.strftime("%Y-%m-%dT%H:%M:%S"), str(zone))
    return parse_instant(stripped, timezone)


def occurrences(
    trigger_next: Callable[[datetime], datetime | None], start: datetime, end: datetime
) -> list[datetime]:
    """The occurrences in ``[start, end]``, oldest first, enumerated with ``trigger_next``
    (a trigger's ``next_after``). Raises :class:`ValueError` when ``end`` is before
    ``start`` or the range holds more than :data:`MAX_OCCURRENCES`."""
    if end < start:
        raise ValueError(f"end {rfc3339(end)} is before start {rfc3339(start)}")
    found: list[datetime] = []
    current = trigger_next(start - _ONE_US)
    while current is not None and current <= end:
        if len(found) == MAX_OCCURRENCES:
            raise ValueError(
                f"the range {rfc3339(start)} to {rfc3339(end)} holds more than "
                f"{MAX_OCCURRENCES:,} occurrences; backfill it in smaller ranges"
            )
        found.append(current)
        current = trigger_next(current)
    return found


def plan_backfill(
    spec: ScheduleSpec, state: ScheduleState, start: datetime, end: datetime, now: datetime
) -> BackfillPlan:
    """The occurrences of ``spec`` in ``[start, end]``, split into those to backfill and
    those ``later``.

    An occurrence is backfilled when it is at or before ``now`` and, for a schedule with
    a next occurrence, before it (the tick fires that one and those after it). Raises
    :class:`ValueError` (one line) for an on-demand or continuous schedule (no
    occurrences), ``end`` before ``start``, or more than :data:`MAX_OCCURRENCES`.
    """
    if spec.on_demand:
        raise ValueError(f"schedule {spec.id!r} is on demand: it has no occurrences to backfill")
    if spec.continuous is not None:
        raise ValueError(f"schedule {spec.id!r} is continuous: it has no occurrences to backfill")
    found = occurrences(trigger_of(spec).next_after, start, end)
    horizon = state.next_occurrence
    planned: list[datetime] = []
    later: list[datetime] = []
    for occurrence in found:
        if occurrence > now or (horizon is not None and occurrence >= horizon):
            later.append(occurrence)
        else:
            planned.append(occurrence)
    return BackfillPlan(
        planned=planned,
        run_ids=[scheduled_run_id(spec.id, o) for o in planned],
        later=later,
    )


def handled_state(state: ScheduleState, latest: datetime, now: datetime) -> ScheduleState | None:
    """The state of a paused schedule once a backfill created a run for ``latest``:
    ``last_occurrence`` moved up to it, because resume plans the occurrences after
    ``last_occurrence`` (or after the pause, when nothing was handled yet) and would
    otherwise plan ``latest`` again. None when nothing needs writing: the schedule is
    not paused (a next occurrence after ``latest``, or a re-plan after ``now``), or its
    resume already starts after ``latest``."""
    if not state.paused:
        return None
    anchor = state.last_occurrence or state.paused_at
    if anchor is None or anchor >= latest:
        return None  # resume starts after the anchor (or after its own `now`)
    return state.model_copy(update={"last_occurrence": latest, "updated_at": now})
