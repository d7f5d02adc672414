"""Properties of firecron.core.triggers, checked against an independent reference.

The reference walks *real* time (every UTC minute, or second for 6-field expressions)
and applies the DST rules directly, with its own cron field matcher. The implementation
walks *wall-clock* time with croniter. Agreement of the two is the main property.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _dst import transitions
from firecron.core.describe import describe_at, describe_cron, describe_every
from firecron.core.triggers import (
    Trigger,
    build_trigger,
    is_wildcard,
    jitter_offset,
    parse_instant,
    parse_spec,
    validate_cron,
    validate_timezone,
)

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ONE_US = timedelta(microseconds=1)

# ------------------------------------------------------------ reference cron matcher

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _value(token: str, names: list[str], offset: int) -> int:
    return int(token) if token.isdigit() else names.index(token.upper()) + offset


def _field_set(field: str, low: int, high: int, names: list[str], offset: int) -> frozenset[int]:
    values: set[int] = set()
    for element in field.split(","):
        rng, _, step_text = element.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            first, last = low, high
        elif "-" in rng:
            a, b = rng.split("-")
            first, last = _value(a, names, offset), _value(b, names, offset)
        else:
            first = last = _value(rng, names, offset)
        values.update(range(first, last + 1, step))
    return frozenset(values)


class Matcher:
    """Vixie cron semantics: day-of-month and day-of-week are OR-ed unless either starts with '*'."""

    def __init__(self, expr: str) -> None:
        fields = MACROS.get(expr, expr).split()
        self.seconds_field = len(fields) == 6
        if not self.seconds_field:
            fields = ["0", *fields]
        sec, minute, hour, dom, month, dow = fields
        self.sec = _field_set(sec, 0, 59, [], 0)
        self.minute = _field_set(minute, 0, 59, [], 0)
        self.hour = _field_set(hour, 0, 23, [], 0)
        self.dom = _field_set(dom, 1, 31, [], 0)
        self.month = _field_set(month, 1, 12, MONTHS, 1)
        self.dow = frozenset(d % 7 for d in _field_set(dow, 0, 7, DAYS, 0))
        self.day_and = dom.startswith("*") or dow.startswith("*")
        # Vixie's MIN_STAR/HR_STAR: set only when the field's first character is '*'.
        self.wildcard = minute.startswith("*") or hour.startswith("*")

    def matches(self, wall: datetime) -> bool:
        if wall.microsecond or wall.second not in self.sec:
            return False
        if wall.minute not in self.minute or wall.hour not in self.hour:
            return False
        if wall.month not in self.month:
            return False
        in_dom = wall.day in self.dom
        in_dow = wall.isoweekday() % 7 in self.dow
        return (in_dom and in_dow) if self.day_and else (in_dom or in_dow)


def wall_of(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def ceil_to(wall: datetime, step: timedelta) -> datetime:
    """Round naive ``wall`` up to a multiple of ``step`` (steps divide a day)."""
    midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - ((midnight - wall) // step) * step


def reference(expr: str, zone: ZoneInfo, after: datetime, horizon: datetime) -> list[datetime]:
    """Occurrences in ``(after, horizon]`` found by walking real time step by step."""
    m = Matcher(expr)
    step = timedelta(seconds=1) if m.seconds_field else timedelta(minutes=1)
    instant = ceil_to(after.replace(tzinfo=None) + ONE_US, step).replace(tzinfo=UTC)
    found: list[datetime] = []
    while instant <= horizon:
        wall = wall_of(instant, zone)
        if m.wildcard:
            run = m.matches(wall)  # gap walls never occur, repeated walls occur twice
        else:
            # Fixed jobs run a repeated wall time only at its first occurrence ...
            run = m.matches(wall) and wall.replace(tzinfo=zone, fold=0).astimezone(UTC) == instant
            # ... and the nominal times inside a gap at the first instant after the gap.
            previous = wall_of(instant - ONE_US, zone)
            if not run and wall - previous > step:
                gap_wall = ceil_to(previous + ONE_US, step)
                while gap_wall < wall and not run:
                    run = m.matches(gap_wall)
                    gap_wall += step
        if run:
            found.append(instant)
        instant += step
    return found


# ------------------------------------------------------------------------ strategies


def _number(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def field_strategy(
    low: int, high: int, *, star_weight: int, hot: list[int] | None = None
) -> st.SearchStrategy[str]:
    pick = (
        _number(low, high) if hot is None else st.one_of(st.sampled_from(hot), _number(low, high))
    )

    @st.composite
    def element(draw: st.DrawFn) -> str:
        kind = draw(st.sampled_from(["num", "num", "range", "range_step", "star_step"]))
        if kind == "num":
            return str(draw(pick))
        if kind == "star_step":
            return f"*/{draw(_number(1, min(high, 30)))}"
        a, b = sorted((draw(pick), draw(pick)))
        if kind == "range":
            return f"{a}-{b}"
        return f"{a}-{b}/{draw(_number(1, max(1, high // 2)))}"

    listed = st.lists(element(), min_size=1, max_size=3).map(",".join)
    return st.one_of(*([st.just("*")] * star_weight), listed)


@st.composite
def cron_exprs(draw: st.DrawFn) -> str:
    # Hours and minutes near the transitions of the test zones are drawn more often,
    # so that fixed jobs land in gaps and folds regularly.
    minute = draw(field_strategy(0, 59, star_weight=1, hot=[0, 15, 30, 45]))
    hour = draw(field_strategy(0, 23, star_weight=1, hot=[0, 1, 2, 3]))
    dom = draw(
        st.one_of(st.just("*"), st.just("*"), st.just("*"), field_strategy(1, 31, star_weight=0))
    )
    month = draw(
        st.one_of(st.just("*"), st.just("*"), st.just("*"), field_strategy(1, 12, star_weight=0))
    )
    dow = draw(
        st.one_of(
            st.just("*"), st.just("*"), st.just("MON-FRI"), field_strategy(0, 7, star_weight=0)
        )
    )
    fields = [minute, hour, dom, month, dow]
    if draw(st.integers(0, 4)) == 0:
        fields.insert(0, draw(field_strategy(0, 59, star_weight=1, hot=[0, 30])))
    expr = " ".join(fields)
    # Days that no selected month has ('31 2') never fire and are refused by validation
    # (tests/test_validate_refusals.py checks that rule against a calendar search).
    try:
        validate_cron(expr)
    except ValueError as exc:
        assume("never fires" not in str(exc))
    return expr


@st.composite
def zone_and_after(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    near = transitions(zone)
    use_near = draw(st.booleans())
    if near and use_near:
        base = draw(st.sampled_from(near))
        after = base + timedelta(seconds=draw(st.integers(-6 * 3600, 6 * 3600)))
    else:
        after = draw(
            st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC))
        )
    if draw(st.booleans()):
        after = after.replace(microsecond=draw(st.integers(0, 999_999)))
    else:
        after = after.replace(microsecond=0)
    return zone, after


def test_transition_finder_sees_the_known_2027_dates() -> None:
    assert datetime(2027, 3, 28, 1, tzinfo=UTC) in transitions("Europe/Berlin")
    assert datetime(2027, 11, 7, 6, tzinfo=UTC) in transitions("America/New_York")
    assert transitions("Asia/Kolkata") == ()
    # Lord Howe shifts by 30 minutes.
    lh = ZoneInfo("Australia/Lord_Howe")
    first = transitions("Australia/Lord_Howe")[0]
    offsets = [(first + d).astimezone(lh).utcoffset() for d in (-ONE_US, timedelta(0))]
    assert offsets[0] is not None
    assert offsets[1] is not None
    assert abs(offsets[1] - offsets[0]) == timedelta(minutes=30)


# ---------------------------------------------------------------------- properties


@SETTINGS
@given(expr=cron_exprs(), za=zone_and_after())
def test_cron_occurrences_match_real_time_reference(expr: str, za: tuple[str, datetime]) -> None:
    zone_name, after = za
    zone = ZoneInfo(zone_name)
    trigger = parse_spec(expr, zone_name)
    limit = 40
    got = trigger.occurrences(after, limit)
    # Soundness, independent of the reference window.
    assert all(o.tzinfo is UTC for o in got)
    assert all(a < b for a, b in pairwise([after, *got]))
    m = Matcher(expr)
    for o in got:
        wall = wall_of(o, zone)
        if m.matches(wall):
            if not m.wildcard:  # fixed jobs: first occurrence of a repeated wall time
                assert wall.replace(tzinfo=zone, fold=0).astimezone(UTC) == o
        else:
            # Only a fixed job's gap substitute may have a non-matching wall time: it
            # must sit exactly at a transition that skipped wall time.
            assert not m.wildcard, (expr, o)
            before = wall_of(o - ONE_US, zone)
            assert wall - before > timedelta(seconds=1), (expr, o)
    # Completeness and exact agreement with the real-time walk.
    span = timedelta(minutes=40) if m.seconds_field else timedelta(hours=26)
    horizon = after + span
    if len(got) == limit:
        horizon = min(horizon, got[-1])
    expected = reference(expr, zone, after, horizon)
    assert [o for o in got if o <= horizon] == expected


@SETTINGS
@given(
    expr=cron_exprs(),
    za=zone_and_after(),
    start_delta=st.integers(-2 * 86400, 2 * 86400),
    length=st.integers(0, 3 * 86400),
)
def test_cron_occurrences_stay_in_window(
    expr: str, za: tuple[str, datetime], start_delta: int, length: int
) -> None:
    zone_name, after = za
    start = after + timedelta(seconds=start_delta)
    end = start + timedelta(seconds=length)
    bounded = build_trigger(cron=expr, timezone=zone_name, start_at=start, end_at=end)
    unbounded = parse_spec(expr, zone_name)
    got = bounded.occurrences(after, 30)
    assert all(start <= o <= end and o > after for o in got)
    assert all(a < b for a, b in pairwise(got))
    # The window only filters: same as the unbounded trigger's occurrences in the window.
    first_from = max(after, start - ONE_US)
    assert got == [o for o in unbounded.occurrences(first_from, 30) if o <= end]


@SETTINGS
@given(
    seconds=st.integers(1, 3 * 86400),
    za=zone_and_after(),
    anchor_delta=st.one_of(st.none(), st.integers(-10 * 86400, 10 * 86400)),
)
def test_every_has_constant_spacing(
    seconds: int, za: tuple[str, datetime], anchor_delta: int | None
) -> None:
    zone_name, after = za
    interval = timedelta(seconds=seconds)
    anchor = None if anchor_delta is None else after + timedelta(seconds=anchor_delta)
    trigger = build_trigger(every=interval, timezone=zone_name, start_at=anchor)
    got = trigger.occurrences(after, 10)
    assert len(got) == 10
    origin = anchor if anchor is not None else datetime(1970, 1, 1, tzinfo=UTC)
    assert got[0] > after
    assert got[0] == origin or got[0] - interval <= after
    assert all(b - a == interval for a, b in pairwise(got))
    assert (got[0] - origin) % interval == timedelta(0)
    assert got[0] >= origin


@SETTINGS
@given(
    schedule_id=st.text(min_size=1, max_size=30),
    occurrence=st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    jitter_ms=st.integers(0, 86_400_000),
)
def test_jitter_is_deterministic_and_in_range(
    schedule_id: str, occurrence: datetime, jitter_ms: int
) -> None:
    jitter = timedelta(milliseconds=jitter_ms)
    offset = jitter_offset(schedule_id, occurrence, jitter)
    assert offset == jitter_offset(schedule_id, occurrence, jitter)
    # The same instant expressed in another zone gives the same offset.
    assert offset == jitter_offset(
        schedule_id, occurrence.astimezone(ZoneInfo("Asia/Kolkata")), jitter
    )
    if jitter_ms == 0:
        assert offset == timedelta(0)
    else:
        assert timedelta(0) <= offset < jitter
    assert offset % timedelta(milliseconds=1) == timedelta(0)


def test_jitter_spreads_and_matches_the_documented_hash() -> None:
    import hashlib

    occurrence = datetime(2027, 1, 1, 9, tzinfo=UTC)
    jitter = timedelta(seconds=60)
    key = b"nightly|2027-01-01T09:00:00+00:00"
    expected_ms = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 60_000
    assert jitter_offset("nightly", occurrence, jitter) == timedelta(milliseconds=expected_ms)
    offsets = {jitter_offset(f"job-{i}", occurrence, jitter) for i in range(50)}
    assert len(offsets) > 40
    with pytest.raises(ValueError, match="negative"):
        jitter_offset("x", occurrence, timedelta(seconds=-1))


# ------------------------------------------------------------------ examples & errors


@pytest.mark.parametrize(
    ("expr", "wildcard"),
    [
        ("0 9 * * *", False),
        ("0,30 2 * * *", False),
        ("0 1-5 * * *", False),
        ("*/5 * * * *", True),
        ("0 */2 * * *", True),
        # Vixie looks only at the first character: a step or a later '*' does not count.
        ("0-30/10 9 * * *", False),
        ("0 9-17/2 * * *", False),
        ("0-59/20 1 * * *", False),
        ("0,20,40 1 * * *", False),
        ("5,*/20 1 * * *", False),
        ("0 1,*/2 * * *", False),
        ("*/20 1 * * *", True),
        ("*/20,5 1 * * *", True),
        ("5 */2 * * *", True),
        ("0 * * * *", True),
        ("* 9 * * *", True),
        ("* 30 2 * * *", False),  # 6-field: the seconds field does not count
        ("0 */5 2 * * *", True),
        ("0 30 * * * *", True),
        ("*/10 0-59/5 2 * * *", False),
        ("@hourly", True),
        ("@daily", False),
        ("@weekly", False),
        ("@yearly", False),
        ("0 9 */2 * *", False),  # day fields do not count
    ],
)
def test_is_wildcard(expr: str, wildcard: bool) -> None:
    assert is_wildcard(expr) is wildcard


@pytest.mark.parametrize(
    ("expr", "normalized"),
    [
        ("0 9 * * MON-FRI", "0 9 * * MON-FRI"),
        ("  0   9 * *   1-5 ", "0 9 * * 1-5"),
        ("15 10 1 JAN,jul sun", "15 10 1 JAN,jul sun"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("*/10 * * * * *", "*/10 * * * * *"),
        ("@Daily", "@daily"),
        ("@midnight", "@midnight"),
        ("@annually", "@annually"),
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap days only, but it fires
        ("0 0 31 2 1", "0 0 31 2 1"),  # day fields OR-ed: every Monday in February
    ],
)
def test_validate_cron_accepts(expr: str, normalized: str) -> None:
    assert validate_cron(expr) == normalized


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "minute value 61 out of range 0-59"),
        ("0 24 * * *", "hour value 24 out of range 0-23"),
        ("0 0 0 * *", "day of month value 0 out of range 1-31"),
        ("0 0 * 13 *", "month value 13 out of range 1-12"),
        ("0 0 * * 8", "day of week value 8 out of range 0-7"),
        ("60 0 0 * * *", "second value 60 out of range 0-59"),
        ("* * * *", "got 4"),
        ("* * * * * * *", "year field is not supported"),
        ("0 0 * * * * 2027", "year field is not supported"),
        ("", "empty"),
        ("hello world", "got 2"),
        ("a b c d e", "not a valid minute value"),
        ("H * * * *", "not a valid minute value"),
        ("H(0-29) * * * *", "invalid element"),
        ("0 0 L * *", "not a valid day of month value"),
        ("0 0 * * 5L", "invalid element"),
        ("0 0 * * MON#2", "invalid element"),
        ("0 0 15W * *", "invalid element"),
        ("0 0 ? * *", "invalid element"),
        ("*/0 * * * *", "step 0 out of range"),
        ("*/90 * * * *", "step 90 out of range"),
        ("5/15 * * * *", "needs a range or '*'"),
        ("30-10 * * * *", "reversed"),
        ("0 0 * FOO *", "not a valid month value"),
        ("JAN * * * *", "not a valid minute value"),
        ("0 0 * * MON-SUN", "reversed"),
        ("1,,2 * * * *", "invalid element"),
        ("@reboot", "unknown macro"),
        ("@every 5m", "unknown macro"),
    ],
)
def test_validate_cron_rejects(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        validate_cron(expr)
    message = str(info.value)
    assert "\n" not in message
    assert repr(expr) in message
    with pytest.raises(ValueError, match=re.escape(repr(expr.strip()))):
        parse_spec(expr) if expr.strip() else validate_cron(expr)


@pytest.mark.parametrize(
    "name", ["Europe/Berlinn", "", "Mars/Olympus", "../etc/passwd", "Europe", "+01:00"]
)
def test_invalid_timezones(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown time zone {name!r}")):
        validate_timezone(name)
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_spec("@daily", name)
    with pytest.raises(ValueError, match="unknown time zone"):
        build_trigger(every=timedelta(minutes=1), timezone=name)


@pytest.mark.parametrize("name", [*ZONES, "Etc/GMT+5", "America/Argentina/Buenos_Aires"])
def test_valid_timezones(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("", "''"),
        ("   ", "'   '"),
        ("every", "'every'"),
        ("every 0s", "'every 0s'"),
        ("every 500ms", "'every 500ms'"),
        ("every fortnight", "'every fortnight'"),
        ("every 5 minutes", "'every 5 minutes'"),
        ("at", "''"),
        ("at tomorrow", "'tomorrow'"),
        ("at 2027-01-01", "'2027-01-01'"),
        ("at 2027-13-01T00:00", "'2027-13-01T00:00'"),
        ("at 2027-01-01T25:00Z", "'2027-01-01T25:00Z'"),
        ("daily", "'daily'"),
        ("0 9 * *", "'0 9 * *'"),
    ],
)
def test_parse_spec_rejects(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(bad)) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("*/15 * * * *", "cron"),
        ("0 30 9 * * MON-FRI", "cron"),
        ("@weekly", "cron"),
        ("every 15m", "every"),
        ("every 10s", "every"),
        ("Every 1h30m", "every"),
        ("at 2027-01-01T10:00:00+01:00", "at"),
        ("at 2027-01-01T09:00:00Z", "at"),
        ("at 2027-01-01T10:00", "at"),
    ],
)
def test_parse_spec_kinds_and_round_trip(spec: str, kind: str) -> None:
    trigger = parse_spec(spec, "Europe/Berlin")
    assert trigger.kind == kind
    assert trigger.timezone == "Europe/Berlin"
    again = parse_spec(trigger.spec, "Europe/Berlin")
    assert again == trigger
    assert hash(again) == hash(trigger)


def test_parse_spec_every_interval_and_at_instant() -> None:
    every = parse_spec("every 1h30m")
    assert every.occurrences(datetime(2027, 1, 1, tzinfo=UTC), 2) == [
        datetime(2027, 1, 1, 1, 30, tzinfo=UTC),
        datetime(2027, 1, 1, 3, tzinfo=UTC),
    ]
    at = parse_spec("at 2027-01-01T10:00:00+01:00", "America/New_York")
    assert at.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2027, 1, 1, 9, tzinfo=UTC)
    assert at.occurrences(datetime(2026, 1, 1, tzinfo=UTC), 5) == [
        datetime(2027, 1, 1, 9, tzinfo=UTC)
    ]


def test_parse_instant() -> None:
    assert parse_instant("2027-01-01T10:00:00+01:00") == datetime(2027, 1, 1, 9, tzinfo=UTC)
    assert parse_instant("2027-01-01T09:00:00Z") == datetime(2027, 1, 1, 9, tzinfo=UTC)
    assert parse_instant("2027-01-01T10:00", "Europe/Berlin") == datetime(2027, 1, 1, 9, tzinfo=UTC)
    assert parse_instant("2027-07-01 10:00:00.250", "Asia/Kolkata") == datetime(
        2027, 7, 1, 4, 30, 0, 250_000, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_instant("yesterday")
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_instant("2027-01-01T10:00", "Nowhere/Special")


def test_build_trigger_argument_checks() -> None:
    with pytest.raises(
        ValueError, match=r"exactly one of cron, every, at or frequency \(got none\)"
    ):
        build_trigger()
    with pytest.raises(ValueError, match="exactly one of cron, every, at or frequency"):
        build_trigger(cron="@daily", every=timedelta(minutes=5))
    with pytest.raises(ValueError, match="at least 1s"):
        build_trigger(every=timedelta(milliseconds=999))
    with pytest.raises(ValueError, match=re.escape("'61 * * * *'")):
        build_trigger(cron="61 * * * *")
    trigger = build_trigger(cron="@daily")
    with pytest.raises(ValueError, match="timezone-aware"):
        trigger.next_after(datetime(2027, 1, 1))


def test_never_firing_expression_is_refused_and_leap_days_fire() -> None:
    with pytest.raises(ValueError, match="never fires"):
        parse_spec("0 0 31 2 *")
    leap = parse_spec("0 0 29 2 *", "Europe/Berlin")
    assert leap.next_after(datetime(2027, 1, 1, tzinfo=UTC)) == datetime(
        2028, 2, 28, 23, tzinfo=UTC
    )


def test_day_of_month_and_week_follow_vixie() -> None:
    # Both restricted -> OR.
    either = parse_spec("0 0 13 * 5").occurrences(datetime(2027, 1, 1, tzinfo=UTC), 4)
    assert [d.day for d in either] == [8, 13, 15, 22]
    # A day field starting with '*' -> AND (Vixie): odd days that are Mondays.
    both = parse_spec("0 0 */2 * 1").occurrences(datetime(2027, 1, 1, tzinfo=UTC), 3)
    assert [(d.day, d.isoweekday()) for d in both] == [(11, 1), (25, 1), (1, 1)]
    # 7 is Sunday as well as 0.
    assert parse_spec("0 0 * * 7").next_after(datetime(2027, 1, 1, tzinfo=UTC)) == datetime(
        2027, 1, 3, tzinfo=UTC
    )


def test_describe() -> None:
    assert describe_cron("30 9 * * 1-5") == "At 09:30, Monday through Friday"
    assert describe_cron("@daily") == "At 00:00"
    assert describe_cron("*/10 * * * * *") == "Every 10 seconds"
    assert describe_every(timedelta(minutes=15)) == "every 15 minutes"
    assert describe_every(timedelta(hours=1)) == "every hour"
    assert describe_every(timedelta(hours=1, minutes=30)) == "every 1 hour 30 minutes"
    berlin_at = datetime(2027, 1, 1, 9, tzinfo=UTC)
    assert (
        describe_at(berlin_at, "Europe/Berlin")
        == "once, at 2027-01-01 10:00 CET (2027-01-01T09:00:00Z)"
    )
    assert describe_at(berlin_at, "UTC") == "once, at 2027-01-01T09:00:00Z"
    with pytest.raises(ValueError, match=re.escape("'61 * * * *'")):
        describe_cron("61 * * * *")


@pytest.mark.parametrize(
    ("trigger", "text"),
    [
        (
            parse_spec("30 9 * * MON-FRI", "Europe/Berlin"),
            "At 09:30, Monday through Friday (Europe/Berlin)",
        ),
        (parse_spec("@hourly"), "Every hour"),
        (parse_spec("every 15m", "Europe/Berlin"), "every 15 minutes"),
        (
            build_trigger(
                cron="0 9 * * *",
                start_at=datetime(2027, 1, 1, tzinfo=UTC),
                end_at=datetime(2027, 6, 30, tzinfo=UTC),
            ),
            "At 09:00, from 2027-01-01T00:00:00Z, until 2027-06-30T00:00:00Z",
        ),
        (
            parse_spec("at 2027-01-01T10:00", "Europe/Berlin"),
            "once, at 2027-01-01 10:00 CET (2027-01-01T09:00:00Z)",
        ),
    ],
)
def test_trigger_describe(trigger: Trigger, text: str) -> None:
    assert trigger.describe() == text


@SETTINGS
@given(expr=cron_exprs())
def test_generated_expressions_validate_and_describe(expr: str) -> None:
    assume(expr.strip())
    assert validate_cron(expr) == expr
    assert describe_cron(expr)


def test_a_stored_cron_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a schedule validates its cron; its trigger reuses that parse, once per text."""
    from _factories import make_spec
    from firecron.core import triggers
    from firecron.core.planning import trigger_of

    fields: list[str] = []
    check = triggers._check_field

    def counted(expr: str, spec: triggers._FieldSpec, text: str) -> frozenset[int]:
        fields.append(text)
        return check(expr, spec, text)

    monkeypatch.setattr(triggers, "_check_field", counted)
    expr = "17 3 1-28/9 * *"  # used by no other test, so no earlier parse is remembered
    spec = make_spec("parsed-once", every=None, cron=expr)
    for _ in range(3):
        trigger_of(spec)
    assert fields == expr.split()
