"""Trigger math: when a schedule fires next.

These kinds of trigger exist (docs/design.md, "Semantics > Triggers"):

- ``cron``: a Vixie-cron expression (5 fields, or 6 with *seconds first*) or a macro
  (``@hourly @daily @weekly @monthly @yearly``, plus ``@midnight`` and ``@annually``),
  evaluated on the wall clock of an IANA time zone.
- ``every``: a fixed interval anchored at ``start_at`` or the Unix epoch, in real (UTC)
  time, ignoring DST.
- ``at``: a single instant.
- ``hourly``, ``daily``, ``weekly``, ``monthly``: prebuilt frequencies
  (:mod:`firecron.core.frequencies`), evaluated as their cron equivalents, and a
  ``monthly`` day counted from the month's end with its own calendar code under the
  fixed-time DST rule below.

Contract shared by every trigger:

- :meth:`Trigger.next_after` takes an aware datetime in any zone and returns the first
  occurrence strictly after it that is ``>= start_at`` and ``<= end_at``, as an aware
  datetime in UTC, or ``None`` when there is none.
- Everything here is pure: no clock, environment or network reads. Time is passed in.
- Bad input raises :class:`ValueError` with one line that quotes the bad value; callers
  wrap it into a field-named message.

DST follows Vixie cron (``entry.c`` and ``cron.c``, as in cronie and Debian), which
Debian's cron(8) documents. A job is *wildcard* when its minute or hour field **begins
with** ``*`` (Vixie's ``MIN_STAR``/``HR_STAR``), and *fixed-time* otherwise, so
``*/20 1 * * *`` is wildcard while ``0-59/20 1 * * *`` is fixed-time. A fixed-time job
whose wall time falls into a spring-forward gap runs once, at the first instant after
the gap (several gap times of one job collapse into that one run), and at a fall-back
it runs only at the first occurrence of a repeated wall time. A wildcard job follows
real time: wall times that do not exist are skipped and a repeated wall time runs
twice. tests/test_cronsim_differential.py checks this against ``cronsim``.

croniter is used only for calendar math on naive wall-clock datetimes; mapping wall
times to instants is done here with :mod:`zoneinfo`, because croniter's own time-zone
handling is unreliable around DST transitions.
"""

from __future__ import annotations

import abc
import calendar
import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from firecron.core.durations import format_duration, parse_duration
from firecron.core.frequencies import Frequency, clock_parts, parse_frequency
from firecron.core.render import rfc3339

__all__ = [
    "MACROS",
    "AtTrigger",
    "CronTrigger",
    "EveryTrigger",
    "FrequencyTrigger",
    "OnDemandTrigger",
    "Trigger",
    "build_trigger",
    "expand_macro",
    "is_wildcard",
    "jitter_offset",
    "parse_instant",
    "parse_spec",
    "validate_cron",
    "validate_timezone",
]

#: Macro -> the 5-field expression it stands for.
MACROS: Final[dict[str, str]] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_INTERVAL: Final = timedelta(seconds=1)
_ONE_US: Final = timedelta(microseconds=1)
# Folds (repeated wall-clock spans) in current tz data are at most 1 hour, so 3 hours
# is a comfortable bound on how far ahead a fall-back can affect the next occurrence.
_FOLD_WINDOW: Final = timedelta(hours=3)
# A wall-clock scan never needs many candidates (a gap hour of a per-second job is
# 3,600); the bound only stops a pathological expression from spinning forever.
_MAX_CANDIDATES: Final = 100_000


# --------------------------------------------------------------------------- cron syntax


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int]


_MONTH_NAMES: Final = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_DOW_NAMES: Final = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}
_FIELDS: Final = (
    _FieldSpec("second", 0, 59, {}),
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day of month", 1, 31, {}),
    _FieldSpec("month", 1, 12, _MONTH_NAMES),
    # 0 and 7 are both Sunday, as in Vixie cron.
    _FieldSpec("day of week", 0, 7, _DOW_NAMES),
)
_ELEMENT: Final = re.compile(
    r"(?:(?P<star>\*)|(?P<low>[0-9]{1,4}|[A-Za-z]+)(?:-(?P<high>[0-9]{1,4}|[A-Za-z]+))?)"
    r"(?:/(?P<step>[0-9]{1,4}))?"
)


def _cron_error(expr: str, reason: str) -> ValueError:
    return ValueError(f"invalid cron expression {expr!r}: {reason}")


def expand_macro(expr: str) -> str:
    """Return the 5-field expression for a macro (``@daily`` -> ``0 0 * * *``).

    Anything that is not a macro is returned unchanged (stripped). An unknown ``@name``
    raises :class:`ValueError`.
    """
    text = expr.strip()
    if not text.startswith("@"):
        return text
    expanded = MACROS.get(text.lower())
    if expanded is None:
        known = " ".join(MACROS)
        raise _cron_error(expr, f"unknown macro {text!r}; use one of {known}")
    return expanded


def _check_value(expr: str, spec: _FieldSpec, token: str) -> int:
    if token.isdigit():
        value = int(token)
    elif token.upper() in spec.names:
        value = spec.names[token.upper()]
    else:
        raise _cron_error(expr, f"{token!r} is not a valid {spec.name} value")
    if not spec.low <= value <= spec.high:
        raise _cron_error(expr, f"{spec.name} value {value} out of range {spec.low}-{spec.high}")
    return value


def _check_field(expr: str, spec: _FieldSpec, field: str) -> frozenset[int]:
    """Validate one field and return the values it selects."""
    values: set[int] = set()
    for element in field.split(","):
        match = _ELEMENT.fullmatch(element)
        if match is None:
            # Covers croniter extensions (L, W, #, ?, H) and plain garbage alike.
            raise _cron_error(expr, f"{spec.name} field has invalid element {element!r}")
        low, high, step = match["low"], match["high"], match["step"]
        first, last = spec.low, spec.high
        if low is not None:
            first = last = _check_value(expr, spec, low)
            if high is not None:
                last = _check_value(expr, spec, high)
                if first > last:
                    raise _cron_error(expr, f"{spec.name} range {element!r} is reversed")
            elif step is not None:
                raise _cron_error(
                    expr,
                    f"{spec.name} step {element!r} needs a range or '*' "
                    f"(write '*/{step}' or '{low}-{spec.high}/{step}')",
                )
        stride = 1 if step is None else int(step)
        if not 1 <= stride <= spec.high:
            raise _cron_error(expr, f"{spec.name} step {stride} out of range 1-{spec.high}")
        values.update(range(first, last + 1, stride))
    return frozenset(values)


@dataclass(frozen=True)
class _Cron:
    fields: tuple[str, ...]  # as written (macros expanded), 5 or 6
    values: tuple[frozenset[int], ...]  # selected values, always 6 (seconds first)
    seconds: bool

    @property
    def wildcard(self) -> bool:
        # Vixie's entry.c sets MIN_STAR/HR_STAR from the field's first character only
        # (`if (ch == '*') e->flags |= MIN_STAR;`), so '0-59/20' is fixed-time and
        # '*/20' is not. A seconds field has no counterpart in cron and does not count.
        minute, hour = self.fields[-5:-3]
        return minute.startswith("*") or hour.startswith("*")

    def for_croniter(self) -> str:
        """An equivalent 6-field expression (seconds first) in plain number lists.

        croniter gives some valid syntax surprising meanings (it reads an equal range
        such as '5-5' as the whole cycle), so it only ever sees '*' and number lists,
        computed here with Vixie semantics.
        """
        second, minute, hour, month = (
            self._list(self.values[index], _FIELDS[index]) for index in (0, 1, 2, 4)
        )
        dom_text, dow_text = self.fields[-3], self.fields[-1]
        dom = self.values[3]
        dow = frozenset(day % 7 for day in self.values[5])  # 7 is Sunday
        dom_full, dow_full = len(dom) == 31, len(dow) == 7
        if not (dom_text.startswith("*") or dow_text.startswith("*")):
            # Vixie: two restricted day fields match either; a full one matches every day.
            if dom_full or dow_full:
                return f"{second} {minute} {hour} * {month} *"
            return f"{second} {minute} {hour} {_join(dom)} {month} {_join(dow)}"
        # Vixie: a day field written with a leading '*' makes the two match together.
        if dom_full or dow_full:
            dom_part = "*" if dom_full else _join(dom)
            dow_part = "*" if dow_full else _join(dow)
            return f"{second} {minute} {hour} {dom_part} {month} {dow_part}"
        # Both restricted: croniter intersects them only in implement_cron_bug mode, and
        # only when one field's text starts with '*'. A field that starts with '*' holds
        # its lowest value, which '*/31' (day 1) or '*/7' (Sunday) spells with a star.
        if dom_text.startswith("*"):
            dom_part = ",".join(["*/31", *(str(day) for day in sorted(dom - {1}))])
            return f"{second} {minute} {hour} {dom_part} {month} {_join(dow)}"
        dow_part = ",".join(["*/7", *(str(day) for day in sorted(dow - {0}))])
        return f"{second} {minute} {hour} {_join(dom)} {month} {dow_part}"

    @staticmethod
    def _list(values: frozenset[int], spec: _FieldSpec) -> str:
        return "*" if len(values) == spec.high - spec.low + 1 else _join(values)


def _join(values: frozenset[int]) -> str:
    return ",".join(str(value) for value in sorted(values))


def _parse_cron(expr: str) -> _Cron:
    """Validate ``expr`` (macros allowed) and return its parsed form.

    Each distinct text is parsed once per process: a stored schedule's expression is
    validated when the record is read and then needed again by its trigger.
    """
    if not isinstance(expr, str):
        raise ValueError(f"invalid cron expression {expr!r}: expected a string")
    return _parse_cron_text(expr)


@functools.lru_cache(maxsize=4096)
def _parse_cron_text(expr: str) -> _Cron:
    # Pure and returns an immutable value, so caching is safe; an error is not cached.
    if not expr.strip():
        raise _cron_error(expr, "it is empty")
    fields = expand_macro(expr).split()
    if len(fields) not in (5, 6):
        extra = "; a year field is not supported" if len(fields) == 7 else ""
        raise _cron_error(
            expr,
            f"expected 5 fields, or 6 with seconds first, got {len(fields)}{extra}",
        )
    seconds = len(fields) == 6
    specs = _FIELDS if seconds else _FIELDS[1:]
    values = [_check_field(expr, spec, field) for spec, field in zip(specs, fields, strict=True)]
    if not seconds:
        values.insert(0, frozenset({0}))
    return _Cron(tuple(fields), tuple(values), seconds)


# Days in each month, February counted in a leap year: a day that fits here occurs.
_MONTH_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _check_fires(expr: str, parsed: _Cron) -> None:
    """Raise :class:`ValueError` when ``parsed`` can never match a real date.

    Vixie day semantics: when neither day field begins with ``*`` they are OR-ed (or
    one of them covers every day), and every month has every weekday, so the
    expression matches. Otherwise the day of month must match (together with the
    weekday when both are restricted), so some selected day must fit some selected
    month, February counted with 29 days. That suffices: over the 400-year Gregorian
    cycle every existing (month, day) falls on each of the seven weekdays.
    """
    dom_text, month_text, dow_text = parsed.fields[-3:]
    if not (dom_text.startswith("*") or dow_text.startswith("*")):
        return
    days, months = parsed.values[3], parsed.values[4]
    if min(days) <= max(_MONTH_DAYS[month - 1] for month in months):
        return
    raise _cron_error(
        expr,
        f"it never fires: day of month {dom_text!r} does not occur in month {month_text!r}",
    )


def validate_cron(expr: str, *, must_fire: bool = True) -> str:
    """Validate a cron expression and return it normalized.

    Accepted: what Vixie cron accepts (numbers, ``*``, ranges ``a-b``, lists ``a,b``,
    steps on ``*`` or on a range, month and weekday names such as ``JAN`` or ``mon``,
    weekday 7 for Sunday), in 5 fields or 6 with seconds first, and the macros in
    :data:`MACROS`. Rejected, with :class:`ValueError`: other field counts (including the
    7-field year form), out-of-range values, reversed ranges, zero or oversized steps,
    croniter extensions (``H``, ``L``, ``W``, ``#``, ``?``), and expressions that never
    fire (``0 0 30 2 *``: no selected day of month occurs in a selected month) unless
    ``must_fire`` is false (records stored before that rule).

    Normalization collapses whitespace and lower-cases macros; nothing else changes.
    """
    parsed = _parse_cron(expr)
    if must_fire:
        _check_fires(expr, parsed)
    return _normalized(expr, parsed)


def _normalized(expr: str, parsed: _Cron) -> str:
    """``expr`` (already parsed into ``parsed``) with whitespace collapsed, macros lower-cased."""
    text = expr.strip()
    if text.startswith("@"):
        return text.lower()
    return " ".join(parsed.fields)


def is_wildcard(expr: str) -> bool:
    """Whether ``expr`` is a *wildcard* job in the DST sense of docs/design.md.

    True exactly when its minute or hour field **begins with** ``*``, as Vixie cron's
    ``entry.c`` sets ``MIN_STAR``/``HR_STAR``: ``*/20 1 * * *`` and ``5 */2 * * *`` are
    wildcard jobs, ``0-59/20 1 * * *``, ``0,20,40 1 * * *`` and ``5,*/20 1 * * *`` are
    fixed-time ones. For a 6-field expression the minute and hour are fields 2 and 3; the
    seconds field never counts. Macros are expanded first, so ``@hourly``
    (``0 * * * *``) is a wildcard job and ``@daily`` a fixed-time one. Raises
    :class:`ValueError` for an invalid expression.
    """
    return _parse_cron(expr).wildcard


# ------------------------------------------------------------------ zones and instants


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    # ZoneInfo raises ValueError for malformed keys ("../x") and OSError subclasses for
    # names that hit a directory or an unreadable file.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA time zone, else raise :class:`ValueError`."""
    _zone(name)
    return name


def _require_aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value.isoformat()!r}")
    return value.astimezone(UTC)


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # zoneinfo always knows the offset of an instant
    return offset


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """Naive local wall time of ``instant`` in ``zone``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _first_instant(low: datetime, high: datetime, reached: Callable[[datetime], bool]) -> datetime:
    """Smallest instant in ``(low, high]`` for which ``reached`` holds, to the microsecond.

    ``reached`` must be false at ``low``, true at ``high`` and monotonic in between (it
    is used across a single DST transition, where that holds).
    """
    while high - low > _ONE_US:
        middle = low + (high - low) // 2
        if reached(middle):
            high = middle
        else:
            low = middle
    return high


def _gap_end(wall: datetime, zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The transition instant that ends the gap containing naive ``wall``.

    zoneinfo maps a gap wall time with fold=1 to an instant before the transition and
    with fold=0 to one at or after it, so the transition is the first instant in
    ``(before, after]`` whose wall time is >= ``wall``.
    """
    return _first_instant(before, after, lambda instant: _wall(instant, zone) >= wall)


def _instants(wall: datetime, zone: ZoneInfo, *, fixed: bool) -> list[datetime]:
    """Real instants (UTC, ascending) at which a job due at naive ``wall`` runs.

    Once-existing wall times give one instant. In a gap a fixed-time job runs at the
    first instant after the gap and a wildcard job not at all; at a fold a fixed-time
    job runs at the first occurrence only and a wildcard job at both.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # repeated wall time (fall-back)
        return [first] if fixed else [first, second]
    # Nonexistent wall time (spring-forward gap): fold=1 lands before the gap.
    return [_gap_end(wall, zone, second, first)] if fixed else []


def _local_to_utc(value: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall time in ``zone`` to UTC under the fixed-time DST rule."""
    return _instants(value, zone, fixed=True)[0]


def _coerce_instant(value: datetime, zone: ZoneInfo, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        return _local_to_utc(value, zone)
    return _require_aware(value, what)


def parse_instant(text: str, timezone: str = "UTC") -> datetime:
    """Parse an instant and return it as an aware UTC datetime.

    Accepts RFC 3339 with an offset or ``Z`` (``2027-01-01T10:00:00+01:00``), or a naive
    ISO date-time (``2027-01-01T10:00`` or with a space), which is a wall time in
    ``timezone``: a time in a spring-forward gap means the first instant after the gap,
    an ambiguous time its first occurrence. A date without a time is rejected.
    """
    zone = _zone(timezone)
    if not isinstance(text, str):
        raise ValueError(f"invalid instant {text!r}: expected a string")
    stripped = text.strip()
    hint = "write it like 2027-01-01T10:00:00+01:00, 2027-01-01T09:00:00Z or 2027-01-01T10:00"
    if len(stripped) < 11 or stripped[10] not in "Tt ":
        raise ValueError(f"invalid instant {text!r}: {hint}")
    try:
        value = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"invalid instant {text!r}: {hint}") from None
    return _coerce_instant(value, zone, "instant")


# ---------------------------------------------------------------------------- triggers


class Trigger(abc.ABC):
    """When a schedule fires. Build instances with :func:`build_trigger` or :func:`parse_spec`.

    Instances are immutable values: equal when kind, spec, time zone and window are equal.
    ``start_at`` and ``end_at`` are aware UTC datetimes or ``None``.
    """

    kind: Literal[
        "cron", "every", "at", "hourly", "daily", "weekly", "monthly", "on_demand", "continuous"
    ]
    timezone: str
    start_at: datetime | None
    end_at: datetime | None

    def __init__(self, *, timezone: str, start_at: datetime | None, end_at: datetime | None):
        self._zone = _zone(timezone)
        self.timezone = timezone
        # Naive bounds are resolved by build_trigger; here they must be aware already.
        self.start_at = None if start_at is None else _require_aware(start_at, "start_at")
        self.end_at = None if end_at is None else _require_aware(end_at, "end_at")
        if start_at is not None and end_at is not None and start_at > end_at:
            raise ValueError(
                f"start_at {start_at.isoformat()!r} is after end_at {end_at.isoformat()!r}"
            )

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """The trigger as :func:`parse_spec` accepts it (the window is not included)."""

    @abc.abstractmethod
    def _next(self, after: datetime) -> datetime | None:
        """First occurrence strictly after UTC ``after``, ignoring the window."""

    def next_after(self, after: datetime) -> datetime | None:
        """First occurrence strictly after ``after`` within the window, in UTC.

        ``after`` is an aware datetime in any zone (a naive one raises
        :class:`ValueError`). The result is ``>= start_at`` and ``<= end_at`` when those
        are set, and ``None`` when no such occurrence exists.
        """
        after_utc = _require_aware(after, "after")
        if self.start_at is not None and after_utc < self.start_at:
            # "Strictly after start_at - 1us" is ">= start_at" at datetime's resolution.
            after_utc = self.start_at - _ONE_US
        found = self._next(after_utc)
        if found is None or (self.end_at is not None and found > self.end_at):
            return None
        return found

    def occurrences(self, after: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` successive occurrences strictly after ``after`` (UTC, ascending)."""
        found: list[datetime] = []
        current: datetime | None = after
        while len(found) < limit and current is not None:
            current = self.next_after(current)
            if current is not None:
                found.append(current)
        return found

    def describe(self) -> str:
        """Plain English, e.g. ``At 09:30, Monday through Friday (Europe/Berlin)``."""
        # Imported here because describe.py imports this module (macro expansion).
        from firecron.core.describe import describe_window

        return self._describe() + describe_window(self.start_at, self.end_at)

    @abc.abstractmethod
    def _describe(self) -> str: ...

    def _key(self) -> tuple[object, ...]:
        return (self.kind, self.spec, self.timezone, self.start_at, self.end_at)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trigger):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        window = "".join(
            f", {name}={value.isoformat()!r}"
            for name, value in (("start_at", self.start_at), ("end_at", self.end_at))
            if value is not None
        )
        return f"{type(self).__name__}({self.spec!r}, timezone={self.timezone!r}{window})"


class CronTrigger(Trigger):
    """A cron expression on the wall clock of ``timezone`` (see the module docstring)."""

    kind = "cron"

    def __init__(
        self,
        expression: str,
        *,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        end_at: datetime | None = None,
    ):
        super().__init__(timezone=timezone, start_at=start_at, end_at=end_at)
        # A trigger is also built for stored schedules, which may predate the never-fires
        # rule: such a one simply has no next occurrence (it is exhausted).
        parsed = _parse_cron(expression)
        self.expression = _normalized(expression, parsed)
        self._croniter_expr = parsed.for_croniter()
        self.wildcard = parsed.wildcard

    @property
    def spec(self) -> str:
        return self.expression

    def _describe(self) -> str:
        from firecron.core.describe import describe_cron

        text = describe_cron(self.expression)
        return text if self.timezone == "UTC" else f"{text} ({self.timezone})"

    def _walls(self, start: datetime) -> Iterator[datetime]:
        """Matching naive wall times strictly after naive ``start``, ascending."""
        try:
            walls = croniter(
                self._croniter_expr,
                start,
                ret_type=datetime,
                day_or=True,
                # Needed for Vixie's "both day fields must match" (see _Cron.for_croniter).
                implement_cron_bug=True,
                second_at_beginning=True,
            )
        except CroniterError as exc:  # validated already; guards croniter disagreeing
            raise _cron_error(self.expression, str(exc)) from None
        for _ in range(_MAX_CANDIDATES):
            try:
                yield walls.get_next(datetime)
            except CroniterBadDateError:  # no match for decades, e.g. '0 0 31 2 *'
                return

    def _next(self, after: datetime) -> datetime | None:
        zone = self._zone
        fixed = not self.wildcard
        best: datetime | None = None
        # Scanning wall times upward from local(after) finds every instant after `after`
        # in real-time order, except the second run of a repeated wall time, whose wall
        # time may lie before local(after); _next_repeat covers those.
        for wall in self._walls(_wall(after, zone)):
            later = [instant for instant in _instants(wall, zone, fixed=fixed) if instant > after]
            if later:
                best = later[0]
                break
        if not fixed:
            repeat = self._next_repeat(after)
            if repeat is not None and (best is None or repeat < best):
                best = repeat
        return best

    def _next_repeat(self, after: datetime) -> datetime | None:
        """First second run (fold=1) of a repeated wall time in the next fall-back.

        Only a fall-back within ``_FOLD_WINDOW`` of ``after`` matters: a later one cannot
        precede what the upward scan in :meth:`_next` already found within that window
        (folds in tz data are at most an hour).
        """
        zone = self._zone
        horizon = after + _FOLD_WINDOW
        before = _offset(after, zone)
        drop = before - _offset(horizon, zone)
        if drop <= timedelta(0):
            return None
        fall = _first_instant(after, horizon, lambda instant: _offset(instant, zone) < before)
        repeat_from = _wall(fall, zone)
        wall = next(self._walls(repeat_from - _ONE_US), None)
        if wall is None or wall >= repeat_from + drop:
            return None
        return wall.replace(tzinfo=zone, fold=1).astimezone(UTC)


class EveryTrigger(Trigger):
    """A fixed interval: ``anchor + k * interval`` for ``k >= 0``, in UTC, ignoring DST.

    The anchor is ``start_at``, or the Unix epoch when there is none.
    """

    kind = "every"

    def __init__(
        self,
        interval: timedelta,
        *,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        end_at: datetime | None = None,
    ):
        super().__init__(timezone=timezone, start_at=start_at, end_at=end_at)
        if not isinstance(interval, timedelta) or interval < _MIN_INTERVAL:
            raise ValueError(f"invalid interval {interval!r}: it must be at least 1s")
        self.interval = interval
        self.anchor = self.start_at if self.start_at is not None else _EPOCH

    @property
    def spec(self) -> str:
        return f"every {format_duration(self.interval)}"

    def _describe(self) -> str:
        from firecron.core.describe import describe_every

        return describe_every(self.interval)

    def _next(self, after: datetime) -> datetime | None:
        if after < self.anchor:
            return self.anchor
        steps = (after - self.anchor) // self.interval + 1
        return self.anchor + steps * self.interval


class AtTrigger(Trigger):
    """A single instant ``at`` (aware, UTC)."""

    kind = "at"

    def __init__(
        self,
        at: datetime,
        *,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        end_at: datetime | None = None,
    ):
        super().__init__(timezone=timezone, start_at=start_at, end_at=end_at)
        self.at = _require_aware(at, "at")

    @property
    def spec(self) -> str:
        return f"at {rfc3339(self.at)}"

    def _describe(self) -> str:
        from firecron.core.describe import describe_at

        return describe_at(self.at, self.timezone)

    def _next(self, after: datetime) -> datetime | None:
        return self.at if self.at > after else None


class FrequencyTrigger(Trigger):
    """A prebuilt frequency (:class:`~firecron.core.frequencies.Frequency`) on the wall
    clock of ``timezone``.

    Where the frequency has cron equivalents it fires exactly as they do (their union,
    for a ``daily`` with several times), DST rules included. A ``monthly`` day counted
    from the month's end has none: its wall time is found with :mod:`calendar` and
    mapped to an instant by the fixed-time rule (a time in a gap runs at the first
    instant after the gap, a repeated time at its first occurrence).
    """

    # Bounds the month scan of a day from the end. Every month has days -1 to -28, and
    # day -31 (the only rarer one: 31-day months) never skips more than one month, so
    # the next occurrence is always within three months; the rest guards bugs.
    _MAX_MONTHS: Final = 24

    def __init__(
        self,
        frequency: Frequency,
        *,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        end_at: datetime | None = None,
    ):
        super().__init__(timezone=timezone, start_at=start_at, end_at=end_at)
        if not isinstance(frequency, Frequency):
            raise ValueError(f"invalid frequency {frequency!r}")
        self.frequency = frequency
        self.kind = frequency.kind
        crons = frequency.crons()
        # No window on the parts: next_after applies this trigger's own.
        self._crons = (
            None if crons is None else tuple(CronTrigger(expr, timezone=timezone) for expr in crons)
        )

    @property
    def spec(self) -> str:
        return self.frequency.text

    def _describe(self) -> str:
        from firecron.core.describe import describe_frequency

        text = describe_frequency(self.frequency)
        return text if self.timezone == "UTC" else f"{text} ({self.timezone})"

    def _next(self, after: datetime) -> datetime | None:
        if self._crons is None:
            return self._next_from_end(after)
        found = [instant for cron in self._crons if (instant := cron.next_after(after))]
        return min(found, default=None)

    def _next_from_end(self, after: datetime) -> datetime | None:
        """Next occurrence of ``monthly`` on a day counted from the end (``day < 0``)."""
        zone = self._zone
        hour, minute = clock_parts(self.frequency.times[0])
        wall = _wall(after, zone)
        # Start a month early: the fixed-time mapping may put a wall time's instant after
        # `after` although the wall time itself lies before local(after) (a gap moves it
        # later). Wall times ascend month by month and the mapping never reverses their
        # order, so the first instant past `after` is the answer.
        year, month = (wall.year, wall.month - 1) if wall.month > 1 else (wall.year - 1, 12)
        for _ in range(self._MAX_MONTHS):
            try:
                day = calendar.monthrange(year, month)[1] + 1 + self.frequency.day
                instant = (
                    _instants(datetime(year, month, day, hour, minute), zone, fixed=True)[0]
                    if day >= 1
                    else None
                )
            except (OverflowError, ValueError):  # beyond datetime's years
                return None
            if instant is not None and instant > after:
                return instant
            year, month = (year, month + 1) if month < 12 else (year + 1, 1)
        return None


class OnDemandTrigger(Trigger):
    """No trigger at all: an on-demand schedule (none of cron, every or at), which runs
    only when triggered, chained or submitted. It has no occurrence and no window."""

    kind = "on_demand"

    def __init__(self, *, timezone: str = "UTC"):
        super().__init__(timezone=timezone, start_at=None, end_at=None)

    @property
    def spec(self) -> str:
        return "on demand"

    def _describe(self) -> str:
        from firecron.core.describe import describe_on_demand

        return describe_on_demand()

    def _next(self, after: datetime) -> datetime | None:
        return None


class ContinuousTrigger(Trigger):
    """``continuous``: the next generation may start at any moment, so its "occurrence" is
    the instant asked about. Used to make a continuous schedule due when it is applied or
    resumed; the tick then starts a generation unless one is alive (``planning.plan``)."""

    kind = "continuous"

    def __init__(self, *, timezone: str = "UTC"):
        super().__init__(timezone=timezone, start_at=None, end_at=None)

    @property
    def spec(self) -> str:
        return "continuous"

    def _describe(self) -> str:
        return "continuously: exactly one instance at a time"

    def _next(self, after: datetime) -> datetime | None:
        return after


def build_trigger(
    *,
    cron: str | None = None,
    every: timedelta | None = None,
    at: datetime | None = None,
    frequency: Frequency | None = None,
    timezone: str = "UTC",
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> Trigger:
    """Build a trigger from exactly one of ``cron``, ``every``, ``at`` and ``frequency``
    (a prebuilt frequency, see :mod:`firecron.core.frequencies`).

    Naive ``at``, ``start_at`` and ``end_at`` are wall times in ``timezone`` (a time in a
    spring-forward gap means the first instant after the gap, an ambiguous time its first
    occurrence); aware ones may be in any zone. ``every`` must be at least 1 second and
    ``start_at`` must not be after ``end_at``. Raises :class:`ValueError` otherwise.
    """
    given = [
        name
        for name, value in (("cron", cron), ("every", every), ("at", at), ("frequency", frequency))
        if value is not None
    ]
    if len(given) != 1:
        got = ", ".join(given) if given else "none"
        raise ValueError(f"give exactly one of cron, every, at or frequency (got {got})")
    zone = _zone(timezone)
    start = None if start_at is None else _coerce_instant(start_at, zone, "start_at")
    end = None if end_at is None else _coerce_instant(end_at, zone, "end_at")
    if cron is not None:
        return CronTrigger(cron, timezone=timezone, start_at=start, end_at=end)
    if every is not None:
        return EveryTrigger(every, timezone=timezone, start_at=start, end_at=end)
    if frequency is not None:
        return FrequencyTrigger(frequency, timezone=timezone, start_at=start, end_at=end)
    assert at is not None
    return AtTrigger(_coerce_instant(at, zone, "at"), timezone=timezone, start_at=start, end_at=end)


def parse_spec(spec: str, timezone: str = "UTC") -> Trigger:
    """Parse the CLI's SPEC into a trigger in ``timezone``.

    Forms: a cron expression or macro (see :func:`validate_cron`); ``every <duration>``
    (``every 15m``, ``every 10s``, ``every 1h30m``; at least 1 second); ``at <instant>``
    (see :func:`parse_instant`); a prebuilt frequency (``hourly :15``, ``daily 02:30``,
    ``weekly mon,fri 09:00``, ``monthly last 06:00``: see
    :func:`~firecron.core.frequencies.parse_frequency`). Raises :class:`ValueError`
    quoting the bad text.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"invalid schedule {spec!r}: give a cron expression, 'every 15m', 'at <time>' "
            "or 'daily 02:30'"
        )
    text = spec.strip()
    word, *tail = text.split(None, 1)
    keyword, rest = word.lower(), "".join(tail)
    if keyword == "every":
        try:
            interval = parse_duration(rest.strip())
        except ValueError:
            raise ValueError(
                f"invalid interval in {spec!r}: "
                "write it like 'every 15m', 'every 10s' or 'every 1h30m'"
            ) from None
        if interval < _MIN_INTERVAL:
            raise ValueError(f"invalid interval in {spec!r}: it must be at least 1s")
        return build_trigger(every=interval, timezone=timezone)
    if keyword == "at":
        return build_trigger(at=parse_instant(rest, timezone), timezone=timezone)
    frequency = parse_frequency(text)
    if frequency is not None:
        return build_trigger(frequency=frequency, timezone=timezone)
    validate_cron(text)  # the CLI's SPEC is input: a cron that never fires is refused
    return build_trigger(cron=text, timezone=timezone)


def jitter_offset(schedule_id: str, occurrence: datetime, jitter: timedelta) -> timedelta:
    """Deterministic offset in ``[0, jitter)``, in whole milliseconds.

    Derived from SHA-256 of ``f"{schedule_id}|{occurrence in UTC, isoformat}"`` so every
    dispatcher computes the same fire time. ``timedelta(0)`` when ``jitter`` is under 1ms.
    """
    if jitter < timedelta(0):
        raise ValueError(f"jitter must not be negative, got {jitter}")
    span_ms = jitter // timedelta(milliseconds=1)
    if span_ms == 0:
        return timedelta(0)
    key = f"{schedule_id}|{_require_aware(occurrence, 'occurrence').isoformat()}"
    digest = hashlib.sha256(key.encode()).digest()
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % span_ms)
