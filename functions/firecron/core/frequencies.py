"""Prebuilt frequencies: ``hourly``, ``daily``, ``weekly`` and ``monthly`` triggers.

A frequency says in words what a cron expression says in fields, and one thing cron
cannot say: a day counted from the month's end (``monthly: {day: last}``, ``day: -3``).
This module holds the pure value (:class:`Frequency`), its parsing from a schedules file
(the ``normalize_*`` functions the models use) and from the CLI's one-line form
(:func:`parse_frequency`), and its cron equivalents. The trigger math is in
:class:`firecron.core.triggers.FrequencyTrigger`, the words in
:func:`firecron.core.describe.describe_frequency`.

The forms, each read on the wall clock of the schedule's ``timezone``:

==============================================  ============================  =========================
schedules file                                  one line (``firecron next``)  cron equivalent
==============================================  ============================  =========================
``hourly: {minute: 15}``                        ``hourly :15``                ``15 * * * *``
``daily: "02:30"``                              ``daily 02:30``               ``30 2 * * *``
``daily: ["02:30", "14:00"]``                   ``daily 02:30,14:00``         one cron per minute
``weekly: {days: [mon, fri], at: "09:00"}``     ``weekly mon,fri 09:00``      ``0 9 * * 1,5``
``monthly: {day: 1, at: "06:00"}``              ``monthly 1 06:00``           ``0 6 1 * *``
``monthly: {day: last, at: "06:00"}``           ``monthly last 06:00``        none
``monthly: {day: -3, at: "06:00"}``             ``monthly -3 06:00``          none
==============================================  ============================  =========================

Contract:

- Days from the end follow iCalendar's ``BYMONTHDAY``: ``-1`` (also written ``last``)
  is the month's last day and ``-3`` its third-to-last (January 29th). A day a month
  does not have is skipped in that month, as cron skips day 31 in April: ``31`` and
  ``-31`` occur only in 31-day months.
- Times are ``HH:MM`` on the 24-hour clock (``9:00`` is read as ``09:00``); weekdays are
  ``mon`` ... ``sun`` (or ``monday`` ... ``sunday``), in any case.
- Everything is pure; bad input raises :class:`ValueError` with one line that quotes it.

DST: every form behaves exactly like its cron equivalent. ``daily``, ``weekly`` and
``monthly`` are fixed-time jobs (a time in a spring-forward gap runs once, at the first
instant after the gap; a repeated time runs at its first occurrence only), and a
``monthly`` day from the end follows the same rule with its own calendar code.
``hourly`` is ``M * * * *``, a wildcard job like ``@hourly``: it follows real time, so
it runs once every real hour across both transitions (read as a fixed-time job,
``M 0-23 * * *``, it would run twice within minutes at spring-forward and leave a
two-hour hole at fall-back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from firecron.core.render import one_line

__all__ = [
    "FREQUENCY_KINDS",
    "MAX_DAILY_TIMES",
    "WEEKDAYS",
    "WEEKDAY_NAMES",
    "Frequency",
    "FrequencyKind",
    "clock_parts",
    "normalize_clock",
    "normalize_month_day",
    "normalize_times",
    "normalize_weekdays",
    "parse_frequency",
]

_SHOWN = 40
"""How much of an offending value an error quotes: a 400-digit day is not one clear line."""


def _shown(value: object) -> str:
    return one_line(repr(value), _SHOWN)


FrequencyKind = Literal["hourly", "daily", "weekly", "monthly"]
FREQUENCY_KINDS: Final[tuple[FrequencyKind, ...]] = ("hourly", "daily", "weekly", "monthly")

#: Weekday names, Monday first (ISO order); cron numbers them Sunday = 0.
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES: Final = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
_WEEKDAY_INDEX: Final = {
    **{name: index for index, name in enumerate(WEEKDAYS)},
    **{name: index for index, name in enumerate(WEEKDAY_NAMES)},
}

#: The most times one ``daily`` may list: more is a cron expression's job.
MAX_DAILY_TIMES: Final = 48

_CLOCK: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_CLOCK_HINT: Final = "write it as HH:MM on the 24-hour clock, e.g. '09:30'"


def clock_parts(text: str) -> tuple[int, int]:
    """``(hour, minute)`` of a time already normalized by :func:`normalize_clock`."""
    hour, minute = text.split(":")
    return int(hour), int(minute)


def normalize_clock(value: object) -> str:
    """A time of day as ``HH:MM`` (``"9:05"`` -> ``"09:05"``), or :class:`ValueError`.

    An integer gets its own hint: YAML 1.1 reads an unquoted ``14:30`` as the base-60
    number 870, so the file's author wrote a time without quotes.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 60 <= value < 24 * 60:
        hour, minute = divmod(value, 60)
        raise ValueError(
            f"invalid time {_shown(value)}: YAML reads an unquoted {hour}:{minute:02d} as a number; "
            f'quote it: "{hour:02d}:{minute:02d}"'
        )
    if not isinstance(value, str):
        raise ValueError(f"invalid time {_shown(value)}: {_CLOCK_HINT}")
    match = _CLOCK.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid time {_shown(value)}: {_CLOCK_HINT}")
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise ValueError(f"invalid time {_shown(value)}: hours go 00-23 and minutes 00-59")
    return f"{hour:02d}:{minute:02d}"


def normalize_times(value: object) -> tuple[str, ...]:
    """``daily``'s times: one time or a non-empty list of them, sorted, each once.

    Raises :class:`ValueError` for an empty list, a duplicate, more than
    :data:`MAX_DAILY_TIMES` times, or a bad time (see :func:`normalize_clock`).
    """
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("give at least one time, e.g. '02:30'")
    if len(items) > MAX_DAILY_TIMES:
        raise ValueError(
            f"{len(items)} times; at most {MAX_DAILY_TIMES} (write a cron expression instead)"
        )
    times = [normalize_clock(item) for item in items]
    repeated = sorted({time for time in times if times.count(time) > 1})
    if repeated:
        raise ValueError(f"time {repeated[0]} is listed twice")
    return tuple(sorted(times))


def normalize_weekdays(value: object) -> tuple[str, ...]:
    """``weekly``'s days: a list of names (or one name, or ``"mon,fri"``), as short names
    in week order (Monday first), each once. Raises :class:`ValueError` otherwise."""
    if isinstance(value, str):
        items: list[object] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"invalid days {_shown(value)}: give a list of weekdays, e.g. [mon, fri]")
    if not items:
        raise ValueError("give at least one weekday, e.g. [mon, fri]")
    indexes: list[int] = []
    for item in items:
        index = _WEEKDAY_INDEX.get(item.strip().lower()) if isinstance(item, str) else None
        if index is None:
            raise ValueError(
                f"{_shown(item)} is not a weekday: use {', '.join(WEEKDAYS[:-1])} or {WEEKDAYS[-1]}"
            )
        if index in indexes:
            raise ValueError(f"{WEEKDAYS[index]} is listed twice")
        indexes.append(index)
    return tuple(WEEKDAYS[index] for index in sorted(indexes))


def normalize_month_day(value: object) -> int | Literal["last"]:
    """``monthly``'s day: ``1``..``31``, ``-31``..``-1`` (from the month's end, ``-1`` the
    last day) or ``"last"``; a numeric string is read as its number. Kept as written
    (``-1`` stays ``-1``). Raises :class:`ValueError` otherwise."""
    hint = "use 1 to 31, last, or -1 to -31 to count from the month's end"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "last":
            return "last"
        if not re.fullmatch(r"-?[0-9]{1,2}", text):
            raise ValueError(f"invalid day {_shown(value)}: {hint}")
        value = int(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"invalid day {_shown(value)}: {hint}")
    if not (1 <= value <= 31 or -31 <= value <= -1):
        raise ValueError(f"invalid day {_shown(value)}: {hint}")
    return value


@dataclass(frozen=True)
class Frequency:
    """One prebuilt frequency, normalized; build it with the ``of_*`` constructors.

    ``times`` are ``HH:MM`` (sorted; one for ``weekly`` and ``monthly``, none for
    ``hourly``); ``days`` are weekday short names in week order; ``day`` is the month
    day, ``-1`` for the last (``last`` is stored as ``-1``).
    """

    kind: FrequencyKind
    minute: int = 0
    times: tuple[str, ...] = ()
    days: tuple[str, ...] = ()
    day: int = 0

    @classmethod
    def of_hourly(cls, minute: int) -> Frequency:
        """``hourly`` at ``minute`` (0-59) past each hour."""
        if not isinstance(minute, int) or isinstance(minute, bool) or not 0 <= minute <= 59:
            raise ValueError(f"invalid minute {_shown(minute)}: use 0 to 59")
        return cls("hourly", minute=minute)

    @classmethod
    def of_daily(cls, times: object) -> Frequency:
        """``daily`` at one time or a list of times."""
        return cls("daily", times=normalize_times(times))

    @classmethod
    def of_weekly(cls, days: object, at: object) -> Frequency:
        """``weekly`` on ``days`` at time ``at``."""
        return cls("weekly", times=(normalize_clock(at),), days=normalize_weekdays(days))

    @classmethod
    def of_monthly(cls, day: object, at: object) -> Frequency:
        """``monthly`` on ``day`` (see :func:`normalize_month_day`) at time ``at``."""
        number = normalize_month_day(day)
        return cls("monthly", times=(normalize_clock(at),), day=-1 if number == "last" else number)

    @property
    def text(self) -> str:
        """The one-line form :func:`parse_frequency` reads back: ``weekly mon,fri 09:00``."""
        if self.kind == "hourly":
            return f"hourly :{self.minute:02d}"
        times = ",".join(self.times)
        if self.kind == "daily":
            return f"daily {times}"
        if self.kind == "weekly":
            return f"weekly {','.join(self.days)} {times}"
        return f"monthly {'last' if self.day == -1 else self.day} {times}"

    def crons(self) -> tuple[str, ...] | None:
        """Cron expressions whose union of occurrences is this frequency's, or ``None``
        for a ``monthly`` day counted from the end, which cron cannot say.

        One expression per distinct minute, naming every hour it runs at
        (``30 2,14 * * *``): a list of hours is still a fixed-time job (Vixie judges the
        field's first character), and a ``daily`` of 48 half-hours is two crons to step,
        not 48. Times with different minutes cannot share one expression without adding
        their cross product, so the union of these fires exactly as the times say
        (several times in one gap collapse into one run either way).
        """
        if self.kind == "hourly":
            return (f"{self.minute} * * * *",)
        if self.kind == "monthly" and self.day < 0:
            return None
        if self.kind == "daily":
            days = "* * *"
        elif self.kind == "weekly":
            # cron numbers Sunday 0; WEEKDAYS starts on Monday.
            numbers = sorted((WEEKDAYS.index(name) + 1) % 7 for name in self.days)
            days = f"* * {','.join(str(number) for number in numbers)}"
        else:
            days = f"{self.day} * *"
        hours: dict[int, list[int]] = {}
        for minute, hour in sorted(clock_parts(time)[::-1] for time in self.times):
            hours.setdefault(minute, []).append(hour)
        return tuple(f"{m} {','.join(map(str, h))} {days}" for m, h in hours.items())


def parse_frequency(spec: str) -> Frequency | None:
    """Read the one-line form of a frequency, or ``None`` when ``spec``'s first word is
    not ``hourly``, ``daily``, ``weekly`` or ``monthly``.

    Forms: ``hourly :15`` (or ``hourly 15``), ``daily 02:30`` (or ``daily 02:30,14:00``),
    ``weekly mon,fri 09:00``, ``monthly 1 06:00``, ``monthly last 06:00``,
    ``monthly -3 06:00``. Raises :class:`ValueError` quoting ``spec`` when the rest is
    wrong.
    """
    words = spec.split() if isinstance(spec, str) else []
    if not words or words[0].lower() not in FREQUENCY_KINDS:
        return None
    kind, rest = words[0].lower(), words[1:]
    usage = {
        "hourly": "'hourly :15'",
        "daily": "'daily 02:30' or 'daily 02:30,14:00'",
        "weekly": "'weekly mon,fri 09:00'",
        "monthly": "'monthly 1 06:00', 'monthly last 06:00' or 'monthly -3 06:00'",
    }[kind]
    expected = 1 if kind in ("hourly", "daily") else 2
    if len(rest) != expected:
        raise ValueError(f"invalid schedule {_shown(spec)}: write it like {usage}")
    try:
        if kind == "hourly":
            minute = rest[0].removeprefix(":")
            if not re.fullmatch(r"[0-9]{1,2}", minute):
                raise ValueError(f"invalid minute {_shown(rest[0])}: use :00 to :59")
            return Frequency.of_hourly(int(minute))
        if kind == "daily":
            return Frequency.of_daily(_split(rest[0]))
        if kind == "weekly":
            return Frequency.of_weekly(rest[0], rest[1])
        return Frequency.of_monthly(rest[0], rest[1])
    except ValueError as exc:
        raise ValueError(f"invalid schedule {_shown(spec)}: {exc}") from None


def _split(text: str) -> list[str]:
    return [part for part in text.split(",") if part]
