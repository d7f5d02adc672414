"""Plain-English descriptions of triggers, for the CLI and the UI.

Contract: every function returns one short line and is pure (no clock reads). Cron
expressions are validated and macros expanded first, so an invalid expression raises
:class:`ValueError` exactly as :func:`firecron.core.triggers.validate_cron` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor

from firecron.core.frequencies import WEEKDAY_NAMES, WEEKDAYS, Frequency
from firecron.core.triggers import expand_macro, validate_cron

__all__ = [
    "ON_DEMAND",
    "describe_at",
    "describe_cron",
    "describe_every",
    "describe_frequency",
    "describe_on_demand",
    "describe_window",
]

ON_DEMAND = "on demand"
"""How listings name the trigger of a schedule with none (no cron, every, at, frequency
or continuous)."""

_UNITS: tuple[tuple[str, timedelta], ...] = (
    ("day", timedelta(days=1)),
    ("hour", timedelta(hours=1)),
    ("minute", timedelta(minutes=1)),
    ("second", timedelta(seconds=1)),
    ("millisecond", timedelta(milliseconds=1)),
)


@lru_cache(maxsize=1024)
def describe_cron(expr: str) -> str:
    """Describe a cron expression or macro, e.g. ``At 09:30, Monday through Friday``.

    6-field expressions have seconds first. Times use the 24-hour clock. Valid
    expressions that cron-descriptor cannot phrase come back as ``cron '<expr>'``.
    """
    expanded = expand_macro(validate_cron(expr))
    # Cached because cron-descriptor loads its locale on every construction.
    try:
        descriptor = ExpressionDescriptor(
            expanded, use_24hour_time_format=True, day_of_week_start_index_zero=True
        )
        return str(descriptor.get_description())
    # cron-descriptor chokes on some valid forms (e.g. '0,*/1' in a field); a plain
    # fallback beats failing a listing.
    except Exception:
        return f"cron {expanded!r}"


def describe_every(interval: timedelta) -> str:
    """Describe an interval: ``every 15 minutes``, ``every hour``, ``every 1 hour 30 minutes``.

    Parts below a millisecond are dropped.
    """
    remaining = interval
    parts: list[tuple[int, str]] = []
    for name, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append((count, name))
    if not parts:
        return "every 0 seconds"
    if len(parts) == 1 and parts[0][0] == 1:
        return f"every {parts[0][1]}"
    return "every " + " ".join(
        f"{count} {name}{'' if count == 1 else 's'}" for count, name in parts
    )


def describe_frequency(frequency: Frequency) -> str:
    """Describe a prebuilt frequency: ``hourly, at 15 minutes past the hour``,
    ``daily at 02:30 and 14:00``, ``weekly on Monday and Friday at 09:00``,
    ``monthly on the last day at 06:00``, ``monthly on the 3rd-to-last day at 06:00``.

    A day that some months lack (29th to 31st, or as far from the end) says that those
    months are skipped.
    """
    if frequency.kind == "hourly":
        minute = frequency.minute
        if minute == 0:
            return "hourly, on the hour"
        return f"hourly, at {minute} minute{'' if minute == 1 else 's'} past the hour"
    times = _and(frequency.times)
    if frequency.kind == "daily":
        return f"daily at {times}"
    if frequency.kind == "weekly":
        return f"weekly on {_and(WEEKDAY_NAMES[WEEKDAYS.index(d)].title() for d in frequency.days)} at {times}"
    day = frequency.day
    skips = " (skipped in months without that day)" if abs(day) >= 29 else ""
    if day == -1:
        return f"monthly on the last day at {times}"
    if day < 0:
        return f"monthly on the {_ordinal(-day)}-to-last day at {times}{skips}"
    return f"monthly on the {_ordinal(day)} at {times}{skips}"


def _ordinal(number: int) -> str:
    suffixes = {1: "st", 2: "nd", 3: "rd"}
    suffix = "th" if 11 <= number % 100 <= 13 else suffixes.get(number % 10, "th")
    return f"{number}{suffix}"


def _and(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = list(items)
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _utc_text(instant: datetime) -> str:
    text = instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    if instant.microsecond:
        text = instant.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


def describe_at(instant: datetime, timezone: str) -> str:
    """Describe a one-shot instant in ``timezone`` and in UTC.

    ``once, at 2027-01-01 10:00 CET (2027-01-01T09:00:00Z)``; for UTC only the UTC form
    is given. ``instant`` must be aware.
    """
    if instant.tzinfo is None:
        raise ValueError(f"instant must be timezone-aware, got {instant.isoformat()!r}")
    if timezone == "UTC":
        return f"once, at {_utc_text(instant)}"
    local = instant.astimezone(ZoneInfo(timezone))
    clock = "%H:%M:%S" if local.second else "%H:%M"
    return f"once, at {local.strftime(f'%Y-%m-%d {clock} %Z')} ({_utc_text(instant)})"


def describe_window(start_at: datetime | None, end_at: datetime | None) -> str:
    """Suffix for a trigger's window: ``, from 2027-01-01T00:00:00Z until ...``, or ``""``."""
    text = ""
    if start_at is not None:
        text += f", from {_utc_text(start_at)}"
    if end_at is not None:
        text += f", until {_utc_text(end_at)}"
    return text


def describe_on_demand() -> str:
    """Describe an on-demand schedule's trigger (it has none): how it runs instead.

    Listings name the trigger itself :data:`ON_DEMAND`; this is what it means.
    """
    return "runs only when triggered, chained or submitted from a worker"
