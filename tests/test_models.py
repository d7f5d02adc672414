"""Schedule model validation, durations and the schedules file: bad input gets one clear line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from firecron.core.durations import format_duration, parse_duration
from firecron.core.models import ScheduleSpec
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file
from firecron.errors import InvalidInputError
from firecron.settings import Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        (" 2H ", timedelta(hours=2)),
        (timedelta(seconds=30), timedelta(seconds=30)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["10x", "", "m5", "1.5h", "-5s", "5s5s", True, 1.5, -3, "1 h", "²", 10, "45"]
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("bare", "hint"), [(10, "write 10s"), ("90", "write 90s"), (0, "write 0s")]
)
def test_a_bare_number_is_refused_with_a_unit_hint(bare: object, hint: str) -> None:
    # It used to be read as seconds, so `every: 10` meant 10s whatever the author meant.
    with pytest.raises(ValueError, match=f"bare number has no unit; {hint}"):
        parse_duration(bare)


@given(st.integers(min_value=0, max_value=10**11))
def test_format_duration_round_trips(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


def _spec(**fields: object) -> ScheduleSpec:
    base: dict[str, object] = {"id": "job", "every": "1m", "target": {"function": "hello"}}
    base.update(fields)
    return ScheduleSpec.model_validate(base)


def test_defaults() -> None:
    spec = _spec()
    assert spec.timezone == "UTC"
    assert spec.enabled is True
    assert spec.overlap.value == "skip"
    assert spec.misfire.policy.value == "coalesce"
    assert spec.misfire.grace == timedelta(hours=24)
    assert spec.retry.max_attempts == 3
    assert spec.retry.backoff == timedelta(seconds=10)
    assert spec.target.is_worker is True
    assert _spec(target={"url": "https://x.example/h"}).target.is_worker is False
    assert _spec(target={"url": "https://x.example/h", "worker": True}).target.is_worker is True


def test_naive_times_are_read_in_the_schedule_zone() -> None:
    spec = _spec(every=None, at="2027-07-01T10:00:00", timezone="Europe/Berlin")
    assert spec.at == datetime(2027, 7, 1, 8, 0, tzinfo=UTC)
    spec = _spec(start_at="2027-01-01T00:00:00Z", end_at="2027-02-01T00:00:00+01:00")
    assert spec.start_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert spec.end_at == datetime(2027, 1, 31, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"id": "Bad_Id"}, "id"),
        ({"cron": "0 * * * *"}, "exactly one of 'cron', 'every' or 'at'"),
        ({"every": None}, "exactly one of"),
        ({"every": "0s"}, "at least 1s"),
        ({"every": None, "cron": "61 * * * *"}, "61"),
        ({"every": None, "cron": "* * *"}, "* * *"),
        ({"timezone": "Europe/Berlinn"}, "Europe/Berlinn"),
        ({"target": {"url": "ftp://x"}}, "ftp://x"),
        (
            {"target": {"url": "https://a.example", "function": "f"}},
            "exactly one of 'url' or 'function'",
        ),
        ({"target": {"function": "f", "worker": False}}, "always a worker"),
        ({"colour": "red"}, "colour"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"retry": {"tries": 3}}, "tries"),
        ({"misfire": "sometimes"}, "sometimes"),
        ({"overlap": "queue"}, "queue"),
        ({"start_at": "2027-02-01T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"}, "end_at"),
        ({"timeout": "1m", "expected_duration": "2m"}, "expected_duration"),
        ({"jitter": "soon"}, "soon"),
    ],
)
def test_invalid_specs_name_the_problem(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(**fields)
    assert fragment in str(info.value)


def test_misfire_shorthand() -> None:
    assert _spec(misfire="skip").misfire.policy.value == "skip"


GOOD = """
schedules:
  - id: hello
    every: 10s
    target: {function: hello}
    params: {name: firecron}
  - id: nightly
    cron: "30 2 * * *"
    timezone: Europe/Berlin
    at_is_not_a_timestamp: no
    target: {url: "https://example.com/hook"}
"""


def test_schedule_file_collects_every_error_with_entry_and_field() -> None:
    text = """
schedules:
  - id: ok
    every: 1m
    target: {function: hello}
  - id: two
    cron: "61 * * * *"
    target: {function: hello}
    colour: red
  - every: 1m
    target: {function: hello}
  - id: ok
    every: 2m
    target: {function: hello}
  - id: four
    every: 1m
    target: {function: hello}
    retry: {max_attempts: 0}
extra: 1
"""
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text, "s.yaml")
    errors = info.value.errors
    assert "unknown top-level key 'extra'" in errors
    assert any(e.startswith("schedules[1] (id=two): cron:") and "61" in e for e in errors)
    assert "schedules[1] (id=two): unknown key 'colour'" in errors
    assert "schedules[2]: id: required" in errors
    assert any(e.startswith("schedules[3] (id=ok): duplicate id 'ok'") for e in errors)
    assert any(
        e.startswith("schedules[4] (id=four): retry.max_attempts:") and "0" in e for e in errors
    )
    assert all("\n" not in e for e in errors)


def test_schedule_file_valid_and_timestamps_stay_strings() -> None:
    with pytest.raises(ScheduleFileError, match="at_is_not_a_timestamp"):
        parse_schedule_file(GOOD)
    doc = parse_schedule_file(GOOD.replace("    at_is_not_a_timestamp: no\n", ""))
    assert [s.id for s in doc.schedules] == ["hello", "nightly"]
    # An unquoted YAML timestamp is parsed by firecron in the schedule's zone, not by YAML.
    doc = parse_schedule_file(
        "schedules:\n  - id: once\n    at: 2027-07-01 10:00:00\n    timezone: Europe/Berlin\n"
        "    target: {function: hello}\n"
    )
    assert doc.schedules[0].at == datetime(2027, 7, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("schedules: [\n", "invalid YAML at line"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("schedules: {a: 1}\n", "must be a list"),
        ("schedules:\n  - 42\n", "must be a mapping"),
    ],
)
def test_schedule_file_structural_errors(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleFileError, match=fragment):
        parse_schedule_file(text)


def test_empty_file_is_valid_and_empty() -> None:
    assert parse_schedule_file("").schedules == []


def test_settings_from_env_defaults_and_errors() -> None:
    s = Settings.from_env({})
    assert s.store_url == "sqlite:///.firecron/firecron.db"
    assert (s.concurrency, s.max_open, s.ack_timeout) == (64, 1000, timedelta(seconds=5))
    s = Settings.from_env(
        {"FIRECRON_SIGNING_SECRET": "whsec_bmV3, whsec_b2xk", "FIRECRON_ACK_TIMEOUT": "2s"}
    )
    assert s.signing_secrets == ("whsec_bmV3", "whsec_b2xk")
    assert "whsec_" not in repr(s)
    for env, fragment in [
        ({"FIRECRON_CONCURRENCY": "lots"}, "FIRECRON_CONCURRENCY"),
        ({"FIRECRON_ACK_TIMEOUT": "5 parsecs"}, "FIRECRON_ACK_TIMEOUT"),
        # The same duration rule as the schedules file: a bare number has no unit.
        ({"FIRECRON_RUN_RETENTION": "30"}, "FIRECRON_RUN_RETENTION: .* write 30s"),
        ({"FIRECRON_ALLOW_PRIVATE_TARGETS": "maybe"}, "FIRECRON_ALLOW_PRIVATE_TARGETS"),
        ({"FIRECRON_NAMESPACE": "Bad-NS"}, "FIRECRON_NAMESPACE"),
        ({"FIRECRON_CONCURRENCY": "100", "FIRECRON_MAX_OPEN": "10"}, "FIRECRON_MAX_OPEN"),
    ]:
        with pytest.raises(InvalidInputError, match=fragment):
            Settings.from_env(env)
