"""Durations written the way people write them: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``.

Contract:
- :func:`parse_duration` accepts one or more ``<integer><unit>`` groups with units
  ``ms``, ``s``, ``m``, ``h``, ``d`` (largest first is not required, but each unit
  at most once), or a non-negative :class:`~datetime.timedelta`. Anything else raises
  :class:`ValueError` naming the bad text. A bare number (``10``, ``"10"``) is refused
  with a hint (``write 10s``): it has no unit, and reading it as seconds would turn a
  meant ``10m`` into ten seconds without a word.
- :func:`format_duration` is its inverse on whole milliseconds:
  ``parse_duration(format_duration(d)) == d`` for every non-negative ``d`` that is
  a whole number of milliseconds.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["format_duration", "parse_duration"]

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


def parse_duration(value: object) -> timedelta:
    """Parse ``value`` (a duration string or a timedelta); see the module contract."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"duration must not be negative, got {value}")
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: write it like 90s, 15m, 2h or 1d")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"duration must not be negative, got {value}")
    if isinstance(value, int) or (isinstance(value, str) and _BARE.match(value.strip())):
        number = int(value)
        raise ValueError(
            f"invalid duration {value!r}: a bare number has no unit; "
            f"write {number}s (or {number}m, {number}h, {number}d)"
        )
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: write it like 90s, 15m, 2h or 1d")
    text = value.strip().lower()
    if not _WHOLE.match(text):
        raise ValueError(f"invalid duration {value!r}: write it like 90s, 15m, 2h or 1d")
    total = timedelta(0)
    seen: set[str] = set()
    for number, unit in _GROUP.findall(text):
        if unit in seen:
            raise ValueError(f"invalid duration {value!r}: unit {unit!r} appears twice")
        seen.add(unit)
        total += int(number) * _UNITS[unit]
    return total


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
