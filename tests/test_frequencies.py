"""Prebuilt frequencies (``hourly``, ``daily``, ``weekly``, ``monthly``): issue 18, item 1.

Each kind is checked against its cron equivalent wherever one exists (the cron math is
itself checked against a real-time reference in tests/test_triggers.py), and a
``monthly`` day counted from the month's end against a calendar reference: the day
comes from :func:`calendar.monthrange`, and that month's fire instant from a cron
expression naming the day and the month explicitly (``30 2 28 3 *``), so the DST rule
is the one cron follows. DST examples are written out literally at the 2027
transitions (Europe/Berlin: 03-28 02:00 -> 03:00 and 10-31 03:00 -> 02:00, both at
01:00Z; America/New_York: 03-14 at 07:00Z).
"""

from __future__ import annotations

import calendar
import io
import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rich.console import Console

from _cli import run_cli
from _dst import transitions
from firecron.core import planning
from firecron.core.frequencies import WEEKDAYS, Frequency, parse_frequency
from firecron.core.models import INPUT, ScheduleSpec
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file
from firecron.core.triggers import FrequencyTrigger, Trigger, build_trigger, parse_spec
from firecron.settings import Settings
from firecron.store.base import Store

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute shift
    "America/Santiago",  # a gap at midnight
    "Asia/Kolkata",  # no DST
    "UTC",
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ONE_US = timedelta(microseconds=1)
URL = "https://example.com/hook"
ONE_LINERS = [
    "hourly :15",
    "daily 02:30",
    "daily 02:30,14:00",
    "weekly mon,fri 09:00",
    "monthly 1 06:00",
    "monthly last 06:00",
    "monthly -3 06:00",
]
"""Every form the README's table lists, in its order (and the schedules-file test's)."""


def z(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An instant in 2027, UTC."""
    return datetime(2027, month, day, hour, minute, tzinfo=UTC)


def wall_of(instant: datetime, zone: str) -> datetime:
    return instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def test_transitions_are_found() -> None:
    # Guards the strategies below: without transitions they would test no DST at all.
    assert z(3, 28, 1) in transitions("Europe/Berlin")
    assert z(11, 7, 6) in transitions("America/New_York")
    assert len(transitions("America/Santiago")) == 6
    assert transitions("Asia/Kolkata") == ()


@st.composite
def zone_and_after(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant, half the time within a day of one of its transitions."""
    zone = draw(st.sampled_from(ZONES))
    near = transitions(zone)
    use_near = draw(st.booleans())
    if near and use_near:
        after = draw(st.sampled_from(near)) + timedelta(seconds=draw(st.integers(-86400, 86400)))
    else:
        after = draw(
            st.datetimes(datetime(2026, 1, 1), datetime(2028, 11, 30), timezones=st.just(UTC))
        )
    return zone, after.replace(microsecond=draw(st.sampled_from([0, 1, 999_999])))


clocks = st.tuples(st.integers(0, 23), st.integers(0, 59))


def clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


def same(a: Trigger, b: Trigger, after: datetime, count: int = 12) -> None:
    got, want = a.occurrences(after, count), b.occurrences(after, count)
    assert got == want, (a, b, after)
    assert all(x < y for x, y in pairwise([after, *got]))


# ------------------------------------------------------------ equal to their cron equivalents


@SETTINGS
@given(minute=st.integers(0, 59), za=zone_and_after())
def test_hourly_is_its_cron(minute: int, za: tuple[str, datetime]) -> None:
    zone, after = za
    trigger = build_trigger(frequency=Frequency.of_hourly(minute), timezone=zone)
    same(trigger, build_trigger(cron=f"{minute} * * * *", timezone=zone), after, 30)


@SETTINGS
@given(
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=4),
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=3),
    za=zone_and_after(),
)
def test_daily_is_its_cron(hours: set[int], minutes: set[int], za: tuple[str, datetime]) -> None:
    # Every (hour, minute) pair of the two sets is one cron expression, so the daily's
    # union of one-time crons must fire exactly as that single cron: gap times collapse
    # into one run, repeated times run once.
    zone, after = za
    times = [clock(h, m) for h in hours for m in minutes]
    trigger = build_trigger(frequency=Frequency.of_daily(times), timezone=zone)
    cron = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    same(trigger, build_trigger(cron=cron, timezone=zone), after, 20)


@SETTINGS
@given(
    days=st.sets(st.sampled_from(WEEKDAYS), min_size=1),
    at=clocks,
    za=zone_and_after(),
)
def test_weekly_is_its_cron(days: set[str], at: tuple[int, int], za: tuple[str, datetime]) -> None:
    zone, after = za
    trigger = build_trigger(frequency=Frequency.of_weekly(sorted(days), clock(*at)), timezone=zone)
    # Written with cron's own names, independently of the frequency's numbering.
    names = ",".join(day.upper() for day in sorted(days))
    same(trigger, build_trigger(cron=f"{at[1]} {at[0]} * * {names}", timezone=zone), after)


@SETTINGS
@given(day=st.integers(1, 31), at=clocks, za=zone_and_after())
def test_monthly_day_is_its_cron(day: int, at: tuple[int, int], za: tuple[str, datetime]) -> None:
    zone, after = za
    trigger = build_trigger(frequency=Frequency.of_monthly(day, clock(*at)), timezone=zone)
    same(trigger, build_trigger(cron=f"{at[1]} {at[0]} {day} * *", timezone=zone), after, 6)


# -------------------------------------------------- days from the end: a calendar reference


def from_end_reference(
    day: int, at: tuple[int, int], zone: str, after: datetime, count: int
) -> list[datetime]:
    """The first ``count`` occurrences after ``after`` of ``monthly: {day: <day>}`` (day < 0).

    Each month's date is ``calendar.monthrange``'s length + 1 + day (none when below 1);
    its instant is the one of a cron naming that exact date, which carries cron's
    fixed-time DST rule.
    """
    local = wall_of(after, zone)
    year, month = local.year, local.month - 1
    if month == 0:
        year, month = year - 1, 12
    found: list[datetime] = []
    while len(found) < count:
        date = calendar.monthrange(year, month)[1] + 1 + day
        if date >= 1:
            cron = build_trigger(cron=f"{at[1]} {at[0]} {date} {month} *", timezone=zone)
            instant = cron.next_after(datetime(year, month, 1, tzinfo=UTC) - timedelta(days=2))
            assert instant is not None
            assert wall_of(instant, zone).date() == datetime(year, month, date).date()
            if instant > after:
                found.append(instant)
        year, month = (year, month + 1) if month < 12 else (year + 1, 1)
    return found


@st.composite
def from_end_cases(draw: st.DrawFn) -> tuple[int, tuple[int, int], str, datetime]:
    """A day from the end, a time, a zone and an ``after``; half of them put the day and
    time right at one of the zone's transitions, so gaps and repeated hours are hit."""
    zone, after = draw(zone_and_after())
    near = transitions(zone)
    use_near = draw(st.booleans())
    if near and use_near:
        shift = draw(st.sampled_from(near))
        wall = wall_of(shift + timedelta(minutes=draw(st.integers(-90, 90))), zone)
        length = calendar.monthrange(wall.year, wall.month)[1]
        day = wall.day - length - 1
        at = (wall.hour, wall.minute)
        after = shift - timedelta(days=draw(st.integers(1, 40)))
    else:
        day = draw(st.sampled_from([-1, -1, -2, -3, -7, -28, -29, -30, -31]))
        at = draw(clocks)
    return day, at, zone, after


@SETTINGS
@given(case=from_end_cases())
def test_monthly_from_end_matches_the_calendar(
    case: tuple[int, tuple[int, int], str, datetime],
) -> None:
    day, at, zone, after = case
    trigger = build_trigger(frequency=Frequency.of_monthly(day, clock(*at)), timezone=zone)
    assert trigger.occurrences(after, 8) == from_end_reference(day, at, zone, after, 8)


@SETTINGS
@given(at=clocks, za=zone_and_after())
def test_monthly_last_is_minus_one_and_the_last_calendar_day(
    at: tuple[int, int], za: tuple[str, datetime]
) -> None:
    zone, after = za
    last = build_trigger(frequency=Frequency.of_monthly("last", clock(*at)), timezone=zone)
    minus_one = build_trigger(frequency=Frequency.of_monthly(-1, clock(*at)), timezone=zone)
    got = last.occurrences(after, 14)
    assert got == minus_one.occurrences(after, 14)
    for instant in got:
        # Even a gap time (run at the gap's end) stays on its day: no zone's gap spans midnight.
        wall = wall_of(instant, zone)
        assert wall.day == calendar.monthrange(wall.year, wall.month)[1]


# ------------------------------------------------------------ against cronsim (independent)

# Zones whose shifts are a whole hour at night, where cronsim follows Vixie cron (the
# other zones hit cronsim's known deviations; see tests/test_cronsim_differential.py).
CRONSIM_ZONES = ["Europe/Berlin", "America/New_York"]


@st.composite
def frequency_and_start(draw: st.DrawFn) -> tuple[Frequency, str, str, datetime]:
    """A frequency, its cronsim expression (``L`` for the last day), a zone, and a start
    2 to 60 hours before one of its transitions, 30 s past a minute: never inside a
    repeated hour (cronsim's deviation 3) nor on a fire time (each side's "after")."""
    zone = draw(st.sampled_from(CRONSIM_ZONES))
    hour, minute = draw(clocks)
    kind = draw(st.sampled_from(["hourly", "daily", "weekly", "monthly", "last"]))
    at = clock(hour, minute)
    if kind == "hourly":
        frequency, expr = Frequency.of_hourly(minute), f"{minute} * * * *"
    elif kind == "daily":
        frequency, expr = Frequency.of_daily([at]), f"{minute} {hour} * * *"
    elif kind == "weekly":
        days = sorted(draw(st.sets(st.integers(0, 6), min_size=1)))
        names = [WEEKDAYS[d] for d in days]
        frequency = Frequency.of_weekly(names, at)
        expr = f"{minute} {hour} * * {','.join(str((d + 1) % 7) for d in days)}"
    elif kind == "monthly":
        day = draw(st.integers(1, 31))
        frequency, expr = Frequency.of_monthly(day, at), f"{minute} {hour} {day} * *"
    else:
        frequency, expr = Frequency.of_monthly("last", at), f"{minute} {hour} L * *"
    transition = draw(st.sampled_from(transitions(zone)))
    start = transition - timedelta(hours=draw(st.integers(2, 60)), seconds=draw(st.integers(0, 59)))
    return frequency, expr, zone, start.replace(second=30, microsecond=0)


@SETTINGS
@given(case=frequency_and_start())
def test_every_kind_agrees_with_cronsim_across_dst(
    case: tuple[Frequency, str, str, datetime],
) -> None:
    frequency, expr, zone, start = case
    count = 80 if frequency.kind == "hourly" else 6
    got = build_trigger(frequency=frequency, timezone=zone).occurrences(start, count)
    reference = CronSim(expr, start.astimezone(ZoneInfo(zone)))
    want = [next(reference).astimezone(UTC) for _ in range(count)]
    assert got == want, (frequency, expr, zone, start)


@SETTINGS
@given(
    case=from_end_cases(),
    start=st.integers(0, 60 * 86400),
    length=st.integers(0, 90 * 86400),
)
def test_frequency_occurrences_stay_in_window(
    case: tuple[int, tuple[int, int], str, datetime], start: int, length: int
) -> None:
    day, at, zone, after = case
    frequency = Frequency.of_monthly(day, clock(*at))
    start_at = after + timedelta(seconds=start)
    end_at = start_at + timedelta(seconds=length)
    bounded = build_trigger(frequency=frequency, timezone=zone, start_at=start_at, end_at=end_at)
    free = build_trigger(frequency=frequency, timezone=zone)
    expected = [t for t in free.occurrences(after, 8) if start_at <= t <= end_at]
    got = bounded.occurrences(after, 8)
    assert got[: len(expected)] == expected
    assert all(start_at <= t <= end_at for t in got)


# ------------------------------------------------------------------- DST, written out


@pytest.mark.parametrize(
    ("spec", "zone", "after", "expected"),
    [
        # hourly is `M * * * *`, a wildcard job: once every real hour across both shifts.
        (
            "hourly :30",
            "Europe/Berlin",
            z(3, 27, 23),
            [z(3, 27, 23, 30), z(3, 28, 0, 30), z(3, 28, 1, 30), z(3, 28, 2, 30)],
        ),
        (
            "hourly :30",
            "Europe/Berlin",
            z(10, 30, 23),
            [z(10, 30, 23, 30), z(10, 31, 0, 30), z(10, 31, 1, 30), z(10, 31, 2, 30)],
        ),
        # daily is fixed-time: a gap time runs at the gap's end, two gap times once.
        ("daily 02:30", "Europe/Berlin", z(3, 27, 2), [z(3, 28, 1), z(3, 29, 0, 30)]),
        ("daily 02:00,02:30", "Europe/Berlin", z(3, 27, 2), [z(3, 28, 1), z(3, 29, 0)]),
        # ... and a repeated time runs at its first occurrence only.
        ("daily 02:30", "Europe/Berlin", z(10, 30, 2), [z(10, 31, 0, 30), z(11, 1, 1, 30)]),
        # 2027-03-28 and 2027-10-31 are Sundays.
        ("weekly sun 02:30", "Europe/Berlin", z(3, 22), [z(3, 28, 1), z(4, 4, 0, 30)]),
        ("weekly sun 02:30", "Europe/Berlin", z(10, 25), [z(10, 31, 0, 30), z(11, 7, 1, 30)]),
        # 2027-10-31 is the last day of October and Berlin's fall-back: first 02:30 only.
        (
            "monthly last 02:30",
            "Europe/Berlin",
            z(10, 1),
            [z(10, 31, 0, 30), z(11, 30, 1, 30), z(12, 31, 1, 30)],
        ),
        # 2027-03-28 is March's 4th-to-last day and Berlin's spring gap: 03:00 CEST.
        ("monthly -4 02:30", "Europe/Berlin", z(3, 1), [z(3, 28, 1), z(4, 27, 0, 30)]),
        # 2027-03-14 is March's 18th-to-last day, New York's spring gap (07:00Z).
        ("monthly -18 02:30", "America/New_York", z(3, 1), [z(3, 14, 7), z(4, 13, 6, 30)]),
        ("monthly 28 02:30", "Europe/Berlin", z(3, 1), [z(3, 28, 1), z(4, 28, 0, 30)]),
        # Day -31 exists in 31-day months only; -30 skips February alone.
        ("monthly -31 06:00", "UTC", z(1, 2), [z(3, 1, 6), z(5, 1, 6), z(7, 1, 6)]),
        ("monthly -30 06:00", "UTC", z(1, 2), [z(1, 2, 6), z(3, 2, 6), z(4, 1, 6)]),
        ("monthly 31 06:00", "UTC", z(1, 31, 7), [z(3, 31, 6), z(5, 31, 6)]),
        # A leap year's February: last is the 29th, -3 the 27th.
        (
            "monthly last 06:00",
            "UTC",
            datetime(2028, 2, 1, tzinfo=UTC),
            [datetime(2028, 2, 29, 6, tzinfo=UTC)],
        ),
        (
            "monthly -3 06:00",
            "UTC",
            datetime(2028, 2, 1, tzinfo=UTC),
            [datetime(2028, 2, 27, 6, tzinfo=UTC)],
        ),
    ],
)
def test_dst_and_calendar_examples(
    spec: str, zone: str, after: datetime, expected: list[datetime]
) -> None:
    assert parse_spec(spec, zone).occurrences(after, len(expected)) == expected


def test_the_examples_fall_where_they_say() -> None:
    # The literal cases above rely on these calendar facts.
    assert datetime(2027, 3, 28).strftime("%a") == "Sun" == datetime(2027, 10, 31).strftime("%a")
    assert calendar.monthrange(2027, 3)[1] + 1 - 4 == 28
    assert calendar.monthrange(2027, 3)[1] + 1 - 18 == 14
    assert calendar.monthrange(2028, 2)[1] == 29


def test_last_day_at_the_end_of_datetime() -> None:
    trigger = parse_spec("monthly last 06:00", "UTC")
    assert trigger.occurrences(datetime(9999, 11, 1, tzinfo=UTC), 3) == [
        datetime(9999, 11, 30, 6, tzinfo=UTC),
        datetime(9999, 12, 31, 6, tzinfo=UTC),
    ]


# ---------------------------------------------------------------- one line, words, schedules


@pytest.mark.parametrize(
    ("spec", "text", "words"),
    [
        ("hourly :15", "hourly :15", "hourly, at 15 minutes past the hour"),
        ("HOURLY 5", "hourly :05", "hourly, at 5 minutes past the hour"),
        ("hourly :00", "hourly :00", "hourly, on the hour"),
        ("daily 02:30", "daily 02:30", "daily at 02:30"),
        ("daily 14:00,2:30", "daily 02:30,14:00", "daily at 02:30 and 14:00"),
        ("daily 1:00,2:00,3:00", "daily 01:00,02:00,03:00", "daily at 01:00, 02:00 and 03:00"),
        ("weekly fri,Monday 09:00", "weekly mon,fri 09:00", "weekly on Monday and Friday at 09:00"),
        ("weekly sun 9:05", "weekly sun 09:05", "weekly on Sunday at 09:05"),
        ("monthly 1 06:00", "monthly 1 06:00", "monthly on the 1st at 06:00"),
        ("monthly 22 06:00", "monthly 22 06:00", "monthly on the 22nd at 06:00"),
        ("monthly 13 06:00", "monthly 13 06:00", "monthly on the 13th at 06:00"),
        ("monthly last 06:00", "monthly last 06:00", "monthly on the last day at 06:00"),
        ("monthly -1 06:00", "monthly last 06:00", "monthly on the last day at 06:00"),
        ("monthly -3 06:00", "monthly -3 06:00", "monthly on the 3rd-to-last day at 06:00"),
        (
            "monthly 31 06:00",
            "monthly 31 06:00",
            "monthly on the 31st at 06:00 (skipped in months without that day)",
        ),
        (
            "monthly -30 06:00",
            "monthly -30 06:00",
            "monthly on the 30th-to-last day at 06:00 (skipped in months without that day)",
        ),
    ],
)
def test_one_line_form_and_words(spec: str, text: str, words: str) -> None:
    trigger = parse_spec(spec)
    assert isinstance(trigger, FrequencyTrigger)
    assert trigger.spec == text
    assert parse_spec(text) == trigger  # the spec text reads back as the same trigger
    assert trigger.describe() == words
    assert parse_spec(spec, "Europe/Berlin").describe() == f"{words} (Europe/Berlin)"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("hourly", "write it like 'hourly :15'"),
        ("hourly :60", "invalid minute 60: use 0 to 59"),
        ("hourly quarter", "invalid minute 'quarter'"),
        ("daily", "write it like 'daily 02:30'"),
        ("daily 24:00", "invalid time '24:00': hours go 00-23"),
        ("daily 2:3", "invalid time '2:3'"),
        ("daily 02:30,02:30", "time 02:30 is listed twice"),
        ("weekly mon 09:00 extra", "write it like 'weekly mon,fri 09:00'"),
        ("weekly mon,fry 09:00", "'fry' is not a weekday"),
        ("weekly mon,mon 09:00", "mon is listed twice"),
        ("monthly 0 06:00", "invalid day 0"),
        ("monthly 32 06:00", "invalid day 32"),
        ("monthly -32 06:00", "invalid day -32"),
        ("monthly first 06:00", "invalid day 'first'"),
        ("monthly last", "write it like 'monthly 1 06:00'"),
    ],
)
def test_one_line_form_rejects(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        parse_spec(spec)
    message = str(info.value)
    assert fragment in message
    assert repr(spec) in message
    assert "\n" not in message


def test_other_specs_are_not_frequencies() -> None:
    assert parse_frequency("30 2 * * *") is None
    assert parse_frequency("every 15m") is None
    assert parse_frequency("") is None
    assert build_trigger(cron="@daily").kind == "cron"


def spec_of(**fields: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"id": "s", "target": {"url": URL}, **fields}, context=INPUT)


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"hourly": {"minute": 15}}, "hourly :15"),
        ({"hourly": {}}, "hourly :00"),
        ({"daily": "2:30"}, "daily 02:30"),
        ({"daily": ["14:00", "02:30"]}, "daily 02:30,14:00"),
        ({"weekly": {"days": ["fri", "MON"], "at": "09:00"}}, "weekly mon,fri 09:00"),
        ({"weekly": {"days": "mon,fri", "at": "09:00"}}, "weekly mon,fri 09:00"),
        ({"monthly": {"day": 1, "at": "06:00"}}, "monthly 1 06:00"),
        ({"monthly": {"day": "last", "at": "06:00"}}, "monthly last 06:00"),
        ({"monthly": {"day": -3, "at": "06:00"}}, "monthly -3 06:00"),
    ],
)
def test_schedule_fields_build_the_frequency(fields: dict[str, object], text: str) -> None:
    spec = spec_of(timezone="Europe/Berlin", **fields)
    trigger = planning.trigger_of(spec)
    assert trigger == parse_spec(text, "Europe/Berlin")
    assert not spec.on_demand
    # A stored spec reads back (not as input) to the same definition.
    again = ScheduleSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    assert planning.trigger_of(again) == trigger


@st.composite
def frequency_fields(draw: st.DrawFn) -> dict[str, object]:
    """A schedule's frequency field, as a file writes it, of any kind and shape."""
    times = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: clock(*t))
    kind = draw(st.sampled_from(["hourly", "daily", "weekly", "monthly"]))
    if kind == "hourly":
        return {"hourly": {"minute": draw(st.integers(0, 59))}}
    if kind == "daily":
        listed = sorted(draw(st.sets(times, min_size=1, max_size=6)))
        return {"daily": listed[0] if len(listed) == 1 and draw(st.booleans()) else listed}
    at = draw(times)
    if kind == "weekly":
        days = draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True))
        return {"weekly": {"days": days, "at": at}}
    day = draw(st.one_of(st.integers(1, 31), st.integers(-31, -1), st.just("last")))
    return {"monthly": {"day": day, "at": at}}


@SETTINGS
@given(fields=frequency_fields())
def test_every_frequency_round_trips_through_its_one_line_form(fields: dict[str, object]) -> None:
    # The file's form, the one-line form (`firecron next`, `list`) and the stored form
    # are three spellings of one trigger.
    spec = spec_of(timezone="America/New_York", **fields)
    trigger = planning.trigger_of(spec)
    assert isinstance(trigger, FrequencyTrigger)
    assert parse_spec(trigger.spec, "America/New_York") == trigger
    again = ScheduleSpec.model_validate(spec.model_dump(mode="json"))
    assert planning.trigger_of(again) == trigger


def test_daily_dumps_as_written() -> None:
    assert spec_of(daily="02:30").model_dump(mode="json")["daily"] == "02:30"
    assert spec_of(daily=["14:00", "02:30"]).model_dump(mode="json")["daily"] == ["02:30", "14:00"]
    assert spec_of(weekly={"days": ["sunday"], "at": "9:00"}).model_dump()["weekly"] == {
        "days": ("sun",),
        "at": "09:00",
    }


def test_a_frequency_change_replans() -> None:
    assert spec_of(daily="02:30").trigger_fields() != spec_of(daily="02:31").trigger_fields()
    assert (
        spec_of(daily="02:30").trigger_fields()
        != spec_of(weekly={"days": "mon", "at": "02:30"}).trigger_fields()
    )


def test_exactly_one_trigger() -> None:
    with pytest.raises(ValidationError) as info:
        spec_of(daily="02:30", cron="0 3 * * *")
    assert (
        "set at most one of 'cron', 'every', 'at', 'hourly', 'daily', 'weekly', 'monthly' or 'continuous' (found: cron, daily)"
        in str(info.value)
    )
    with pytest.raises(ValidationError, match=r"found: hourly, monthly"):
        spec_of(hourly={"minute": 1}, monthly={"day": 1, "at": "01:00"})


SCHEDULES = """\
schedules:
  - id: good
    timezone: Europe/Berlin
    weekly: {days: [mon, fri], at: "09:00"}
    target: {url: "https://example.com/hook"}
  - id: unquoted
    daily: 14:30
    target: {url: "https://example.com/hook"}
  - id: days
    weekly: {days: [mon, fry], at: "9"}
    target: {url: "https://example.com/hook"}
  - id: month
    monthly: {day: 0, at: "25:00"}
    target: {url: "https://example.com/hook"}
  - id: minute
    hourly: {minute: 60}
    target: {url: "https://example.com/hook"}
  - id: missing
    monthly: {day: lastt}
    target: {url: "https://example.com/hook"}
  - id: empty
    weekly: {days: [], at: "09:00", on: mon}
    target: {url: "https://example.com/hook"}
  - id: two
    daily: "02:30"
    every: 1h
    target: {url: "https://example.com/hook"}
  - id: scalar
    hourly: 15
    target: {url: "https://example.com/hook"}
"""


def test_schedules_file_errors_are_one_line_each_naming_the_field() -> None:
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(SCHEDULES, "s.yaml")
    assert info.value.errors == [
        'schedules[1] (id=unquoted): daily: invalid time 870: YAML reads an unquoted 14:30 as a number; quote it: "14:30"',
        "schedules[2] (id=days): weekly.days: 'fry' is not a weekday: use mon, tue, wed, thu, fri, sat or sun",
        "schedules[2] (id=days): weekly.at: invalid time '9': write it as HH:MM on the 24-hour clock, e.g. '09:30'",
        "schedules[3] (id=month): monthly.day: invalid day 0: use 1 to 31, last, or -1 to -31 to count from the month's end",
        "schedules[3] (id=month): monthly.at: invalid time '25:00': hours go 00-23 and minutes 00-59",
        "schedules[4] (id=minute): hourly.minute: Input should be less than or equal to 59 (got 60)",
        "schedules[5] (id=missing): monthly.day: invalid day 'lastt': use 1 to 31, last, or -1 to -31 to count from the month's end",
        "schedules[5] (id=missing): monthly.at: required",
        "schedules[6] (id=empty): weekly.days: give at least one weekday, e.g. [mon, fri]",
        "schedules[6] (id=empty): weekly: unknown key 'on'",
        "schedules[7] (id=two): set at most one of 'cron', 'every', 'at', 'hourly', 'daily', 'weekly', 'monthly' or 'continuous' (found: every, daily)",
        "schedules[8] (id=scalar): hourly: write it as {minute: 15} (got 15)",
    ]


def test_schedules_file_accepts_every_form() -> None:
    text = """\
schedules:
  - {id: h, hourly: {minute: 15}, target: {url: "https://example.com/hook"}}
  - {id: d, daily: "02:30", target: {url: "https://example.com/hook"}}
  - {id: dl, daily: ["02:30", "14:00"], target: {url: "https://example.com/hook"}}
  - {id: w, weekly: {days: [mon, fri], at: "09:00"}, target: {url: "https://example.com/hook"}}
  - {id: m1, monthly: {day: 1, at: "06:00"}, target: {url: "https://example.com/hook"}}
  - {id: ml, monthly: {day: last, at: "06:00"}, target: {url: "https://example.com/hook"}}
  - {id: m3, monthly: {day: -3, at: "06:00"}, target: {url: "https://example.com/hook"}}
"""
    parsed = parse_schedule_file(text, "s.yaml", now=z(1, 1))
    assert [planning.trigger_of(spec).spec for spec in parsed.schedules] == ONE_LINERS


# ------------------------------------------------------------- stores, CLI and console


async def test_frequencies_round_trip_through_the_store(store: Store) -> None:
    specs = [
        spec_of(id="h", hourly={"minute": 15}),
        spec_of(id="d", daily=["14:00", "02:30"], timezone="Europe/Berlin"),
        spec_of(id="w", weekly={"days": ["mon", "fri"], "at": "09:00"}),
        spec_of(id="m", monthly={"day": "last", "at": "06:00"}),
        spec_of(id="n", monthly={"day": -3, "at": "06:00"}),
    ]
    for spec in specs:
        await store.put_schedule(spec, planning.initial_state(spec, z(1, 1)), expect_version=None)
    for spec in specs:
        stored = await store.get_schedule(spec.id)
        assert stored is not None
        assert stored.spec == spec
        assert planning.trigger_of(stored.spec) == planning.trigger_of(spec)
        assert stored.state.next_occurrence == planning.trigger_of(spec).next_after(
            z(1, 1) - ONE_US
        )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "hourly :15",
            ["2027-03-28T00:15:00+01:00", "2027-03-28T01:15:00+01:00", "2027-03-28T03:15:00+02:00"],
        ),
        ("daily 02:30", ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]),
        ("weekly mon,fri 09:00", ["2027-03-29T09:00:00+02:00", "2027-04-02T09:00:00+02:00"]),
        ("monthly 1 06:00", ["2027-04-01T06:00:00+02:00", "2027-05-01T06:00:00+02:00"]),
        ("monthly last 06:00", ["2027-03-31T06:00:00+02:00", "2027-04-30T06:00:00+02:00"]),
        ("monthly -3 06:00", ["2027-03-29T06:00:00+02:00", "2027-04-28T06:00:00+02:00"]),
    ],
)
def test_cli_next(spec: str, expected: list[str]) -> None:
    proc = run_cli(
        "next",
        spec,
        "--tz",
        "Europe/Berlin",
        "--after",
        "2027-03-27T23:00:00Z",
        "-n",
        str(len(expected)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected


def test_cli_next_refuses_a_bad_frequency_in_one_line() -> None:
    proc = run_cli("next", "weekly mon,fry 09:00")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: SPEC: invalid schedule 'weekly mon,fry 09:00': 'fry' is not a weekday: "
        "use mon, tue, wed, thu, fri, sat or sun"
    ]


def test_cli_list_and_show_say_it_in_words(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(
        "schedules:\n"
        "  - id: report\n"
        "    timezone: Europe/Berlin\n"
        "    monthly: {day: last, at: '06:00'}\n"
        "    target: {url: 'https://example.com/hook'}\n"
    )
    store = f"sqlite:///{tmp_path / 'f.db'}"
    assert run_cli("apply", str(file), "--store", store).returncode == 0
    shown = json.loads(run_cli("show", "report", "--json", "--store", store).stdout)
    assert shown["description_of_trigger"] == "monthly on the last day at 06:00 (Europe/Berlin)"
    assert shown["spec"]["monthly"] == {"day": "last", "at": "06:00"}
    assert all(
        n["local"].endswith("T06:00:00+01:00") or n["local"].endswith("T06:00:00+02:00")
        for n in shown["next"]
    )
    table = run_cli("show", "report", "--store", store).stdout
    assert "monthly last 06:00" in table
    assert "monthly on the last day at 06:00" in table
    listed = json.loads(run_cli("list", "--json", "--store", store).stdout)
    assert listed["schedules"][0]["trigger"] == "monthly last 06:00"


def test_console_says_it_in_words() -> None:
    from firecron.core.models import StoredSchedule

    spec = spec_of(timezone="Europe/Berlin", weekly={"days": ["mon", "fri"], "at": "09:00"})
    stored = StoredSchedule(spec=spec, state=planning.initial_state(spec, z(1, 1)), version="v1")
    assert (
        planning.trigger_words(stored.spec)
        == "weekly on Monday and Friday at 09:00 (Europe/Berlin)"
    )


def test_dev_view_says_it_in_words(tmp_path: Path) -> None:
    from firecron.core.models import StoredSchedule
    from firecron.dev import DevStack

    spec = spec_of(timezone="Europe/Berlin", monthly={"day": -3, "at": "06:00"})
    stored = StoredSchedule(spec=spec, state=planning.initial_state(spec, z(1, 1)), version="v1")
    stack = DevStack(
        Settings().with_store(f"sqlite:///{tmp_path / 'dev.db'}"),
        None,
        port=1,
        source=tmp_path / "main.py",
        console=Console(file=io.StringIO(), width=300),
    )
    view = io.StringIO()
    Console(file=view, width=300).print(stack._view([stored], []))
    lines = [line.rstrip() for line in view.getvalue().splitlines()]
    header = lines.index("Upcoming") + 1
    assert lines[header].split()[-1] == "WHEN"
    row = lines[header + 1]
    assert row.split()[0] == "s"
    assert "2027-01-29 06:00:00 CET" in row
    assert row.endswith("monthly on the 3rd-to-last day at 06:00 (Europe/Berlin)")


def readme_frequencies() -> list[list[str]]:
    """The rows of the README's Frequencies table, cells stripped of their backticks."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Frequencies", 1)[1].split("\n\n", 2)[2]
    rows = [line for line in section.split("\n\n", 1)[0].splitlines() if line.startswith("| `")]
    return [[cell.strip().replace("`", "") for cell in row.strip("|").split(" | ")] for row in rows]


def test_the_readme_frequencies_table_is_true() -> None:
    rows = readme_frequencies()
    assert [row[1] for row in rows] == ONE_LINERS
    start = z(1, 1) - ONE_US
    for form, line, cron, first in rows:
        key, _, value = form.partition(": ")
        spec = parse_schedule_file(
            f"schedules:\n  - id: s\n    {key}: {value}\n    target: {{url: '{URL}'}}\n", "README"
        ).schedules[0]
        trigger = planning.trigger_of(spec)
        assert trigger == parse_spec(line), form
        times = [t.strftime("%Y-%m-%d %H:%M") for t in trigger.occurrences(start, 3)]
        assert ", ".join(times) == first, form
        if cron != "none":
            crons = [build_trigger(cron=expr.strip()) for expr in cron.split(" and ")]
            merged = sorted(t for c in crons for t in c.occurrences(start, 400))[:400]
            assert trigger.occurrences(start, 400) == merged, form
