"""DST transitions, found from the zone database itself, for the trigger tests' strategies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

__all__ = ["transitions"]

_ONE_US = timedelta(microseconds=1)
_STEP = timedelta(hours=6)  # shorter than any offset's life in the zones we test


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """The instants (UTC) at which ``zone_name`` changes its UTC offset in 2026-2028:
    each is the first microsecond of the new offset, found by bisection."""
    zone = ZoneInfo(zone_name)
    found: list[datetime] = []
    t = datetime(2026, 1, 1, tzinfo=UTC)
    while t < datetime(2029, 1, 1, tzinfo=UTC):
        if t.astimezone(zone).utcoffset() != (t + _STEP).astimezone(zone).utcoffset():
            low, high = t, t + _STEP
            while high - low > _ONE_US:
                middle = low + (high - low) // 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        t += _STEP
    return tuple(found)
