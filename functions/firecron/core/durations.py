"""Durations written the way people write them: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``.

Contract:
- :func:`parse_duration` accepts one or more ``<integer><unit>`` groups with units
  ``ms``, ``s``, ``m``, ``h``, ``d`` (largest first is not required, but each unit
  at most once), or a non-negative :class:`~datetime.timedelta`. Anything else raises
  :class:`ValueError` naming the bad text. A bare number (``10``, ``"10"``) is refused
  with a hint (``write 10s``): it has no unit, and reading it as seconds would turn a
  meant ``10m`` into ten seconds without a word.
- A duration longer than :data:`MAX_DURATION` (``3650d``, ten years) is refused with
  :class:`ValueError` unless ``bounded=False``: added to an instant before year 9000
  (see :data:`firecron.core.models.LATEST_INSTANT`) it can never leave the range of
  ``datetime``. Unbounded, anything ``timedelta`` cannot hold is still a
  :class:`ValueError`, never an :class:`OverflowError`.
- :func:`format_duration` is its inverse on whole milliseconds:
  ``parse_duration(format_duration(d)) == d`` for every non-negative ``d`` that is
  a whole number of milliseconds.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

MAX_DURATION = timedelta(days=3650)
"""The longest duration firecron accepts from a user: ten years of 365 days."""

_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_GROUP = re.compile(r"(\d+)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:ms|s|m|h|d))+$")
_BARE = re.compile(r"^[0-9]+$")
_UNIT_MS = {unit: size // timedelta(milliseconds=1) for unit, size in _UNITS.items()}
_MAX_DIGITS = 30
"""More digits than any duration ``timedelta`` holds; longer numbers are not converted."""


def _too_long(value: object, bounded: bool) -> ValueError:
    limit = f"at most {format_duration(MAX_DURATION)} (ten years)"
    if bounded:
        return ValueError(f"duration {_shown(value)} is too long: {limit}")
    return ValueError(f"duration {_shown(value)} is too long to represent")


def _shown(value: object) -> str:
    """``value`` for an error line: its repr, shortened to about 40 characters."""
    text = format_duration(value) if isinstance(value, timedelta) else repr(value)
    if len(text) <= 40:
        return text
    return repr(value[:30] + "...") if isinstance(value, str) else text[:37] + "..."


def parse_duration(value: object, *, bounded: bool = True) -> timedelta:
    """Parse ``value`` (a duration string or a timedelta); see the module contract.

    ``bounded=False`` lifts :data:`MAX_DURATION`: only for values firecron itself
    wrote (a record read back from a store), never for input.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"duration must not be negative, got {value}")
        if bounded and value > MAX_DURATION:
            raise _too_long(value, bounded)
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: write it like 90s, 15m, 2h or 1d")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"duration must not be negative, got {value}")
    if isinstance(value, int) or (isinstance(value, str) and _BARE.match(value.strip())):
        if len(str(value).strip()) > _MAX_DIGITS:
            raise ValueError(f"invalid duration {_shown(value)}: write it like 90s, 15m, 2h or 1d")
        number = int(value)
        raise ValueError(
            f"invalid duration {value!r}: a bare number has no unit; "
            f"write {number}s (or {number}m, {number}h, {number}d)"
        )
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {_shown(value)}: write it like 90s, 15m, 2h or 1d")
    text = value.strip().lower()
    if not _WHOLE.match(text):
        raise ValueError(f"invalid duration {_shown(value)}: write it like 90s, 15m, 2h or 1d")
    # Summed in whole milliseconds (Python integers): a timedelta of 99999999999d
    # would raise OverflowError before any bound could be checked.
    total_ms = 0
    seen: set[str] = set()
    for number, unit in _GROUP.findall(text):
        if unit in seen:
            raise ValueError(f"invalid duration {_shown(value)}: unit {unit!r} appears twice")
        seen.add(unit)
        if len(number.lstrip("0")) > _MAX_DIGITS:
            raise _too_long(value, bounded)
        total_ms += int(number) * _UNIT_MS[unit]
    if bounded and total_ms > MAX_DURATION // timedelta(milliseconds=1):
        raise _too_long(value, bounded)
    try:
        return timedelta(milliseconds=total_ms)
    except OverflowError:
        raise _too_long(value, bounded) from None


def format_duration(value: timedelta) -> str:
    """Format ``value`` compactly (``1h30m``, ``90ms``, ``0s``); sub-millisecond parts are dropped."""
    ms = int(value / timedelta(milliseconds=1))
    if ms == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = int(_UNITS[unit] / timedelta(milliseconds=1))
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
