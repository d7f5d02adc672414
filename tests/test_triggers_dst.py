"""DST rules of cron triggers (docs/design.md, "Semantics > Triggers"), at the 2027 transitions.

A job is *wildcard* when its minute or hour field begins with ``*`` (Vixie's
``MIN_STAR``/``HR_STAR``, set from the field's first character in ``entry.c``), and
*fixed-time* otherwise; a step or a later ``*`` does not make a job wildcard.

Europe/Berlin: spring 2027-03-28 02:00 -> 03:00 (01:00Z), fall 2027-10-31 03:00 -> 02:00 (01:00Z).
America/New_York: spring 2027-03-14 02:00 -> 03:00 (07:00Z), fall 2027-11-07 02:00 -> 01:00 (06:00Z).

Every expected list is written out literally; the transition dates themselves are checked
against zoneinfo first so that a wrong date fails loudly instead of testing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from firecron.core.triggers import build_trigger, parse_instant, parse_spec


def z(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An instant in 2027, UTC."""
    return datetime(2027, month, day, hour, minute, second, tzinfo=UTC)


def walls(instants: list[datetime], zone: str) -> list[str]:
    """Local wall times with zone abbreviation, to make failures readable."""
    return [i.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M:%S %Z") for i in instants]


@dataclass(frozen=True)
class Transition:
    zone: str
    spring: datetime  # first instant after the gap (UTC)
    fall: datetime  # first instant of the second pass through the repeated hour (UTC)
    gap_wall: datetime  # a naive wall time inside the spring gap
    fold_wall: datetime  # a naive wall time inside the repeated hour


BERLIN = Transition(
    "Europe/Berlin",
    z(3, 28, 1),
    z(10, 31, 1),
    datetime(2027, 3, 28, 2, 30),
    datetime(2027, 10, 31, 2, 30),
)
NEW_YORK = Transition(
    "America/New_York",
    z(3, 14, 7),
    z(11, 7, 6),
    datetime(2027, 3, 14, 2, 30),
    datetime(2027, 11, 7, 1, 30),
)


@pytest.mark.parametrize("t", [BERLIN, NEW_YORK], ids=lambda t: t.zone)
def test_transition_dates_are_real(t: Transition) -> None:
    zone = ZoneInfo(t.zone)
    one_s = timedelta(seconds=1)
    # Offsets change exactly at the stated instants: +1h in spring, -1h in fall.
    for instant, change in ((t.spring, timedelta(hours=1)), (t.fall, -timedelta(hours=1))):
        before = (instant - one_s).astimezone(zone).utcoffset()
        after = instant.astimezone(zone).utcoffset()
        assert before is not None
        assert after is not None
        assert after - before == change
    # The gap wall time does not exist: fold=1 maps before fold=0.
    gap0 = t.gap_wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    gap1 = t.gap_wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    assert gap1 < t.spring <= gap0
    # The fold wall time exists twice, one hour apart, straddling the fall transition.
    fold0 = t.fold_wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    fold1 = t.fold_wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    assert fold0 < t.fall <= fold1
    assert fold1 - fold0 == timedelta(hours=1)


# (zone, spec, after, expected occurrences in UTC)
CASES: list[tuple[str, str, str, datetime, list[datetime]]] = [
    # --- fixed-time job whose time falls in the gap: once, at the first instant after it
    (
        "fixed in gap",
        "Europe/Berlin",
        "30 2 * * *",
        z(3, 27, 0),
        [z(3, 27, 1, 30), z(3, 28, 1), z(3, 29, 0, 30)],
    ),
    (
        "fixed in gap",
        "America/New_York",
        "30 2 * * *",
        z(3, 13, 0),
        [z(3, 13, 7, 30), z(3, 14, 7), z(3, 15, 6, 30)],
    ),
    # --- two gap times of a fixed job collapse into one run
    (
        "fixed list in gap",
        "Europe/Berlin",
        "0,30 2 * * *",
        z(3, 28, 0),
        [z(3, 28, 1), z(3, 29, 0), z(3, 29, 0, 30)],
    ),
    (
        "fixed list in gap",
        "America/New_York",
        "0,30 2 * * *",
        z(3, 14, 0),
        [z(3, 14, 7), z(3, 15, 6), z(3, 15, 6, 30)],
    ),
    # --- the gap substitute does not duplicate a real time right after the gap
    (
        "fixed gap + 03:00",
        "Europe/Berlin",
        "0 2,3 * * *",
        z(3, 28, 0),
        [z(3, 28, 1), z(3, 29, 0), z(3, 29, 1)],
    ),
    # --- fixed job in the repeated hour: once, at the first occurrence
    (
        "fixed in fold",
        "Europe/Berlin",
        "30 2 * * *",
        z(10, 30, 12),
        [z(10, 31, 0, 30), z(11, 1, 1, 30)],
    ),
    (
        "fixed in fold",
        "America/New_York",
        "30 1 * * *",
        z(11, 6, 12),
        [z(11, 7, 5, 30), z(11, 8, 6, 30)],
    ),
    (
        "fixed list in fold",
        "Europe/Berlin",
        "0,45 2 * * *",
        z(10, 30, 23),
        [z(10, 31, 0), z(10, 31, 0, 45), z(11, 1, 1)],
    ),
    # `after` inside the second pass: the repeated wall time is not run again
    (
        "fixed in fold, after in 2nd pass",
        "Europe/Berlin",
        "30 2 * * *",
        z(10, 31, 1),
        [z(11, 1, 1, 30)],
    ),
    (
        "fixed in fold, after in 2nd pass",
        "America/New_York",
        "30 1 * * *",
        z(11, 7, 6),
        [z(11, 8, 6, 30)],
    ),
    (
        "fixed in fold, after between passes",
        "America/New_York",
        "0,30 1 * * *",
        z(11, 7, 5, 45),
        [z(11, 8, 6)],
    ),
    # --- wildcard jobs: the gap is skipped, constant real-time spacing
    (
        "wildcard gap",
        "Europe/Berlin",
        "*/15 * * * *",
        z(3, 28, 0, 30),
        [z(3, 28, 0, 45), z(3, 28, 1), z(3, 28, 1, 15), z(3, 28, 1, 30)],
    ),
    (
        "wildcard gap",
        "America/New_York",
        "*/15 * * * *",
        z(3, 14, 6, 30),
        [z(3, 14, 6, 45), z(3, 14, 7), z(3, 14, 7, 15)],
    ),
    (
        "wildcard gap",
        "Europe/Berlin",
        "0 * * * *",
        z(3, 27, 23, 30),
        [z(3, 28, 0), z(3, 28, 1), z(3, 28, 2)],
    ),
    (
        "wildcard gap",
        "America/New_York",
        "0 * * * *",
        z(3, 14, 5, 30),
        [z(3, 14, 6), z(3, 14, 7), z(3, 14, 8)],
    ),
    # hour-only step on the gap hour: nothing that day
    (
        "wildcard hour in gap",
        "Europe/Berlin",
        "*/30 2 * * *",
        z(3, 28, 0),
        [z(3, 29, 0), z(3, 29, 0, 30)],
    ),
    # --- wildcard jobs: the repeated hour runs twice
    (
        "wildcard fold",
        "Europe/Berlin",
        "*/30 * * * *",
        z(10, 30, 23, 45),
        [z(10, 31, 0), z(10, 31, 0, 30), z(10, 31, 1), z(10, 31, 1, 30), z(10, 31, 2)],
    ),
    (
        "wildcard fold",
        "Europe/Berlin",
        "*/15 * * * *",
        z(10, 30, 23, 30),
        [z(10, 30, 23, 45)]
        + [z(10, 31, 0, m) for m in (0, 15, 30, 45)]
        + [z(10, 31, 1, m) for m in (0, 15, 30, 45)]
        + [z(10, 31, 2)],
    ),
    (
        "wildcard fold",
        "America/New_York",
        "*/15 * * * *",
        z(11, 7, 4, 30),
        [z(11, 7, 4, 45)]
        + [z(11, 7, 5, m) for m in (0, 15, 30, 45)]
        + [z(11, 7, 6, m) for m in (0, 15, 30, 45)]
        + [z(11, 7, 7)],
    ),
    (
        "wildcard fold",
        "Europe/Berlin",
        "0 * * * *",
        z(10, 30, 22, 30),
        [z(10, 30, 23), z(10, 31, 0), z(10, 31, 1), z(10, 31, 2)],
    ),
    (
        "wildcard fold",
        "America/New_York",
        "0 * * * *",
        z(11, 7, 3, 30),
        [z(11, 7, 4), z(11, 7, 5), z(11, 7, 6), z(11, 7, 7)],
    ),
    (
        "wildcard hour in fold",
        "Europe/Berlin",
        "*/30 2 * * *",
        z(10, 30, 12),
        [z(10, 31, 0), z(10, 31, 0, 30), z(10, 31, 1), z(10, 31, 1, 30), z(11, 1, 1)],
    ),
    # `after` inside the first pass: the second pass of earlier wall times still comes
    (
        "wildcard fold, after in 1st pass",
        "Europe/Berlin",
        "*/30 * * * *",
        z(10, 31, 0, 45),
        [z(10, 31, 1), z(10, 31, 1, 30)],
    ),
    (
        "wildcard fold, after in 2nd pass",
        "America/New_York",
        "*/30 * * * *",
        z(11, 7, 6, 10),
        [z(11, 7, 6, 30), z(11, 7, 7)],
    ),
    # --- only a field that BEGINS with '*' makes a job wildcard (Vixie's MIN_STAR/HR_STAR).
    # The example: cron fires 3 times in New York's repeated hour, not 6.
    (
        "range step is fixed in fold",
        "America/New_York",
        "0-59/20 1 * * *",
        z(11, 7, 4),
        [z(11, 7, 5), z(11, 7, 5, 20), z(11, 7, 5, 40), z(11, 8, 6)],
    ),
    (
        "list is fixed in fold",
        "America/New_York",
        "0,20,40 1 * * *",
        z(11, 7, 4),
        [z(11, 7, 5), z(11, 7, 5, 20), z(11, 7, 5, 40), z(11, 8, 6)],
    ),
    (
        "star step is wildcard in fold",
        "America/New_York",
        "*/20 1 * * *",
        z(11, 7, 4),
        [z(11, 7, 5, m) for m in (0, 20, 40)]
        + [z(11, 7, 6, m) for m in (0, 20, 40)]
        + [z(11, 8, 6)],
    ),
    (
        "star-first list is wildcard in fold",
        "Europe/Berlin",
        "*/20,5 2 * * *",
        z(10, 30, 23),
        [z(10, 31, 0, m) for m in (0, 5, 20, 40)] + [z(10, 31, 1, m) for m in (0, 5, 20, 40)],
    ),
    (
        "star later in a list is fixed in fold",
        "Europe/Berlin",
        "5,*/20 2 * * *",
        z(10, 30, 23),
        [z(10, 31, 0, m) for m in (0, 5, 20, 40)] + [z(11, 1, 1), z(11, 1, 1, 5)],
    ),
    (
        "hour star step is wildcard in fold",
        "Europe/Berlin",
        "5 */2 * * *",
        z(10, 30, 23),
        [z(10, 31, 0, 5), z(10, 31, 1, 5), z(10, 31, 3, 5)],
    ),
    (
        "range step is fixed in gap",
        "Europe/Berlin",
        "0-59/20 2 * * *",
        z(3, 28, 0),
        [z(3, 28, 1), z(3, 29, 0), z(3, 29, 0, 20)],
    ),
    (
        "hour range step is fixed in gap",
        "Europe/Berlin",
        "0 0-23/2 * * *",
        z(3, 27, 22, 30),
        [z(3, 27, 23), z(3, 28, 1), z(3, 28, 2)],
    ),
    (
        "hour range step is fixed in gap",
        "America/New_York",
        "30 0-23/2 * * *",
        z(3, 14, 5),
        [z(3, 14, 5, 30), z(3, 14, 7), z(3, 14, 8, 30)],
    ),
    # --- @hourly (a wildcard job) across both transitions
    (
        "@hourly spring",
        "Europe/Berlin",
        "@hourly",
        z(3, 27, 23, 30),
        [z(3, 28, 0), z(3, 28, 1), z(3, 28, 2)],
    ),
    (
        "@hourly fall",
        "Europe/Berlin",
        "@hourly",
        z(10, 30, 23, 30),
        [z(10, 31, 0), z(10, 31, 1), z(10, 31, 2)],
    ),
    (
        "@hourly spring",
        "America/New_York",
        "@hourly",
        z(3, 14, 5, 30),
        [z(3, 14, 6), z(3, 14, 7), z(3, 14, 8)],
    ),
    (
        "@hourly fall",
        "America/New_York",
        "@hourly",
        z(11, 7, 4, 30),
        [z(11, 7, 5), z(11, 7, 6), z(11, 7, 7)],
    ),
    # --- @daily is fixed at midnight; unaffected
    ("@daily", "America/New_York", "@daily", z(11, 6, 12), [z(11, 7, 4), z(11, 8, 5)]),
    # --- 6-field expressions, seconds first
    (
        "6-field fixed in gap",
        "Europe/Berlin",
        "15 30 2 * * *",
        z(3, 28, 0),
        [z(3, 28, 1), z(3, 29, 0, 30, 15)],
    ),
    (
        "6-field fixed in gap",
        "America/New_York",
        "15 30 2 * * *",
        z(3, 14, 0),
        [z(3, 14, 7), z(3, 15, 6, 30, 15)],
    ),
    (
        "6-field seconds-only wildcard in gap",
        "Europe/Berlin",
        "* 30 2 * * *",
        z(3, 28, 0),
        [z(3, 28, 1), z(3, 29, 0, 30)],
    ),
    (
        "6-field wildcard across gap",
        "Europe/Berlin",
        "*/20 * * * * *",
        z(3, 28, 0, 59, 30),
        [z(3, 28, 0, 59, 40), z(3, 28, 1), z(3, 28, 1, 0, 20)],
    ),
    (
        "6-field wildcard hour in gap",
        "America/New_York",
        "0 */20 2 * * *",
        z(3, 14, 6),
        [z(3, 15, 6), z(3, 15, 6, 20)],
    ),
    (
        "6-field fixed in fold",
        "Europe/Berlin",
        "0 30 2 * * *",
        z(10, 30, 12),
        [z(10, 31, 0, 30), z(11, 1, 1, 30)],
    ),
    (
        "6-field wildcard in fold",
        "America/New_York",
        "0 */30 1 * * *",
        z(11, 7, 4),
        [z(11, 7, 5), z(11, 7, 5, 30), z(11, 7, 6), z(11, 7, 6, 30), z(11, 8, 6)],
    ),
]


@pytest.mark.parametrize(
    ("zone", "spec", "after", "expected"),
    [case[1:] for case in CASES],
    ids=[f"{case[0]}|{case[1]}|{case[2]}" for case in CASES],
)
def test_cron_dst_rules(zone: str, spec: str, after: datetime, expected: list[datetime]) -> None:
    trigger = parse_spec(spec, zone)
    got = trigger.occurrences(after, len(expected))
    assert walls(got, zone) == walls(expected, zone)
    assert got == expected
    assert all(o.tzinfo is UTC for o in got)


def test_macro_and_expansion_agree_across_transitions() -> None:
    for zone, after in (
        ("Europe/Berlin", z(3, 27)),
        ("Europe/Berlin", z(10, 30)),
        ("America/New_York", z(3, 13)),
        ("America/New_York", z(11, 6)),
    ):
        hourly = parse_spec("@hourly", zone).occurrences(after, 60)
        assert hourly == parse_spec("0 * * * *", zone).occurrences(after, 60)
        # 24 wall hours span 23 real hours in spring and 25 in fall; @hourly follows real time.
        assert all(b - a == timedelta(hours=1) for a, b in pairwise(hourly))


def test_next_after_accepts_aware_local_after_in_either_fold() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    trigger = parse_spec("*/30 * * * *", "Europe/Berlin")
    first_pass = datetime(2027, 10, 31, 2, 45, tzinfo=berlin, fold=0)  # 00:45Z
    second_pass = datetime(2027, 10, 31, 2, 45, tzinfo=berlin, fold=1)  # 01:45Z
    assert trigger.next_after(first_pass) == z(10, 31, 1)
    assert trigger.next_after(second_pass) == z(10, 31, 2)


def test_fixed_job_in_gap_does_not_rerun_after_its_substitute() -> None:
    for t in (BERLIN, NEW_YORK):
        trigger = parse_spec("0,15,30,45 2 * * *", t.zone)
        assert trigger.next_after(t.spring - timedelta(microseconds=1)) == t.spring
        following = trigger.next_after(t.spring)
        assert following is not None
        # The next day's 02:00 in summer time: 23 real hours after 03:00 in summer time.
        assert following == t.spring + timedelta(hours=23)


# --------------------------------------------------------------------------- every


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
def test_every_ignores_dst(zone: str) -> None:
    trigger = parse_spec("every 1h", zone)
    for t in (BERLIN, NEW_YORK):
        got = trigger.occurrences(t.spring - timedelta(hours=2, minutes=30), 5)
        start = t.spring - timedelta(hours=2)
        assert got == [start + k * timedelta(hours=1) for k in range(5)]
        got = trigger.occurrences(t.fall - timedelta(hours=2, minutes=30), 5)
        start = t.fall - timedelta(hours=2)
        assert got == [start + k * timedelta(hours=1) for k in range(5)]


def test_every_anchored_at_naive_start_in_fold_uses_first_occurrence() -> None:
    trigger = build_trigger(
        every=timedelta(minutes=45),
        timezone="Europe/Berlin",
        start_at=datetime(2027, 10, 31, 2, 30),
    )
    assert trigger.start_at == z(10, 31, 0, 30)
    assert trigger.occurrences(z(1, 1, 0), 4) == [
        z(10, 31, 0, 30),
        z(10, 31, 1, 15),
        z(10, 31, 2),
        z(10, 31, 2, 45),
    ]


# ------------------------------------------------------------------------------ at


@pytest.mark.parametrize(
    ("zone", "text", "expected"),
    [
        ("Europe/Berlin", "2027-03-28T02:30", z(3, 28, 1)),  # gap: first instant after it
        ("America/New_York", "2027-03-14T02:30", z(3, 14, 7)),
        ("Europe/Berlin", "2027-03-28 02:00:00", z(3, 28, 1)),  # gap start too
        ("Europe/Berlin", "2027-10-31T02:30", z(10, 31, 0, 30)),  # fold: first occurrence
        ("America/New_York", "2027-11-07T01:30", z(11, 7, 5, 30)),
        ("Europe/Berlin", "2027-10-31T02:30:00+01:00", z(10, 31, 1, 30)),  # explicit offset wins
        ("America/New_York", "2027-11-07T01:30:00-05:00", z(11, 7, 6, 30)),
        ("America/New_York", "2027-11-07T06:30:00Z", z(11, 7, 6, 30)),
    ],
)
def test_at_local_times_at_transitions(zone: str, text: str, expected: datetime) -> None:
    assert parse_instant(text, zone) == expected
    trigger = parse_spec(f"at {text}", zone)
    assert trigger.kind == "at"
    assert trigger.next_after(expected - timedelta(seconds=1)) == expected
    assert trigger.next_after(expected) is None
    naive_or_aware = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert build_trigger(at=naive_or_aware, timezone=zone).next_after(z(1, 1, 0)) == expected


# ------------------------------------------------------------------- start/end window


def test_window_bounds_are_inclusive_and_naive_bounds_follow_the_fixed_rule() -> None:
    # start in the fold -> first occurrence (00:30Z); end in the gap -> first instant after it.
    trigger = build_trigger(
        cron="*/15 * * * *",
        timezone="Europe/Berlin",
        start_at=datetime(2027, 10, 31, 2, 30),
        end_at=z(10, 31, 1, 30),
    )
    assert trigger.occurrences(z(1, 1, 0), 100) == [
        z(10, 31, 0, 30),
        z(10, 31, 0, 45),
        z(10, 31, 1),
        z(10, 31, 1, 15),
        z(10, 31, 1, 30),
    ]
    spring = build_trigger(
        cron="*/15 * * * *", timezone="Europe/Berlin", end_at=datetime(2027, 3, 28, 2, 30)
    )
    assert spring.end_at == z(3, 28, 1)
    assert spring.occurrences(z(3, 28, 0), 100) == [
        z(3, 28, 0, 15),
        z(3, 28, 0, 30),
        z(3, 28, 0, 45),
        z(3, 28, 1),
    ]


def test_window_applies_to_every_and_at() -> None:
    every = build_trigger(
        every=timedelta(hours=1),
        timezone="America/New_York",
        start_at=datetime(2027, 3, 14, 1, 30),
        end_at=datetime(2027, 3, 14, 4, 30),
    )
    assert every.occurrences(z(1, 1, 0), 10) == [z(3, 14, 6, 30), z(3, 14, 7, 30), z(3, 14, 8, 30)]
    at = build_trigger(at=z(3, 14, 7), start_at=z(3, 14, 7, 0, 1))
    assert at.next_after(z(1, 1, 0)) is None
    at = build_trigger(at=z(3, 14, 7), end_at=z(3, 14, 6))
    assert at.next_after(z(1, 1, 0)) is None
    with pytest.raises(ValueError, match="after end_at"):
        build_trigger(cron="@daily", start_at=z(3, 2, 0), end_at=z(3, 1, 0))
