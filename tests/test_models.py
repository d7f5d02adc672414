"""Schedule model validation, durations and the schedules file: bad input gets one clear line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from firecron.core.durations import MAX_DURATION, format_duration, parse_duration
from firecron.core.models import EARLIEST_INSTANT, INPUT, MAX_PARAMS_DEPTH, ScheduleSpec, TaskSpec
from firecron.core.schedule_file import (
    ScheduleFileError,
    format_validation_error,
    parse_schedule_file,
)
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
        (
            {"cron": "0 * * * *"},
            "at most one of 'cron', 'every', 'at', 'hourly', 'daily', 'weekly', 'monthly' or "
            "'continuous' (found: cron, every)",
        ),
        ({"every": "0s"}, "at least 1s"),
        ({"every": None, "cron": "61 * * * *"}, "61"),
        ({"every": None, "cron": "* * *"}, "* * *"),
        ({"timezone": "Europe/Berlinn"}, "Europe/Berlinn"),
        ({"target": {"url": "ftp://x"}}, "ftp://x"),
        (
            {"target": {"url": "https://a.example", "function": "f"}},
            "set exactly one of 'url', 'function', 'pipeline', 'notify' or 'wait' (found: url, function)",
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


def test_a_spec_without_a_trigger_is_on_demand() -> None:
    on_demand = _spec(every=None)
    assert on_demand.on_demand is True
    assert (on_demand.cron, on_demand.every, on_demand.at) == (None, None, None)
    assert _spec().on_demand is False
    assert _spec(every=None, cron="@daily").on_demand is False


def test_a_task_takes_its_condition_as_if() -> None:
    task = TaskSpec.model_validate(
        {"id": "load", "target": {"function": "load"}, "after": ["x"], "if": "params.a == 1"}
    )
    assert task.if_ == "params.a == 1"
    assert task.model_dump(by_alias=True)["if"] == "params.a == 1"
    with pytest.raises(ValidationError, match="set exactly one of 'target', 'notify' or 'wait'"):
        TaskSpec.model_validate({"id": "t"})
    with pytest.raises(ValidationError, match="a 'url' or a 'function'"):
        TaskSpec.model_validate({"id": "t", "target": {"pipeline": "p"}})


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


# ------------------------------------------------------------------ bounds on input


def test_durations_are_at_most_ten_years() -> None:
    assert parse_duration("3650d") == MAX_DURATION == timedelta(days=3650)
    assert parse_duration("3649d23h59m59s999ms") < MAX_DURATION
    for over in ("3651d", "3650d1ms", "99999999d", timedelta(days=3651)):
        with pytest.raises(ValueError, match=r"too long: at most 3650d \(ten years\)"):
            parse_duration(over)
    # What firecron wrote itself (a record read back) is not re-judged.
    assert parse_duration("99999999d", bounded=False) == timedelta(days=99999999)


@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize(
    "huge", ["99999999999999999999999d", "1000000000d", "9" * 5000 + "s", "9" * 40, 10**40]
)
def test_a_duration_too_large_for_an_integer_is_a_value_error(huge: object, bounded: bool) -> None:
    # Before: OverflowError ("Python int too large to convert to C int"), a traceback.
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(huge, bounded=bounded)
    assert len(str(info.value)) < 120
    assert "\n" not in str(info.value)


def _input(**fields: object) -> ScheduleSpec:
    base: dict[str, object] = {"id": "job", "every": "1m", "target": {"function": "hello"}}
    base.update(fields)
    return ScheduleSpec.model_validate(base, context=INPUT)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"every": "3651d"}, "every"),
        ({"jitter": "99999999d"}, "jitter"),
        ({"timeout": "3651d"}, "timeout"),
        ({"expected_duration": "3651d"}, "expected_duration"),
        ({"retention": "3651d"}, "retention"),
        ({"retry": {"backoff": "3651d"}}, "retry.backoff"),
        ({"retry": {"max_backoff": "3651d"}}, "retry.max_backoff"),
        ({"misfire": {"grace": "3651d"}}, "misfire.grace"),
    ],
)
def test_every_duration_field_is_bounded_on_input(fields: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        _input(**fields)
    [line] = format_validation_error(info.value)
    assert line.startswith(f"{where}: duration '")
    assert line.endswith("is too long: at most 3650d (ten years)")
    ScheduleSpec.model_validate(
        {"id": "job", "target": {"function": "hello"}, "every": "1m", **fields}
    )


@pytest.mark.parametrize("field", ["at", "start_at", "end_at"])
def test_instants_are_from_1970_to_before_year_9000_on_input(field: str) -> None:
    fields: dict[str, object] = {"every": None, "at": "2030-01-01T00:00:00Z"}
    if field != "at":
        fields = {}
    for bad in ("9000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"):
        with pytest.raises(ValidationError) as info:
            _input(**{**fields, field: bad})
        [line] = format_validation_error(info.value)
        assert line.startswith(f"{field}: {bad} is out of range"), line
    late = {**fields, field: "8999-12-31T23:59:59Z"}
    if field == "start_at":
        late["end_at"] = "8999-12-31T23:59:59Z"
    assert getattr(_input(**late), field) == datetime(8999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert getattr(_input(**{**fields, field: "1970-01-01T00:00:00Z"}), field) == EARLIEST_INSTANT


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_params_nest_at_most_32_levels_on_input() -> None:
    assert _input(params={"a": _nested(MAX_PARAMS_DEPTH - 1)}).params  # the dict is level 1
    for depth in (MAX_PARAMS_DEPTH, 2000):
        with pytest.raises(ValidationError) as info:
            _input(params={"a": _nested(depth)})
        # One short line, not pydantic's recursion error naming every level.
        assert format_validation_error(info.value) == ["params: nested more than 32 levels deep"]


def test_env_durations_are_bounded() -> None:
    with pytest.raises(InvalidInputError, match="FIRECRON_RUN_RETENTION: duration '99999999d'"):
        Settings.from_env({"FIRECRON_RUN_RETENTION": "99999999d"})
    with pytest.raises(
        InvalidInputError, match=r"^FIRECRON_TICK_BUDGET: duration '9{30}\.\.\.' is too long"
    ):
        Settings.from_env({"FIRECRON_TICK_BUDGET": "9" * 50 + "d"})


def test_a_lone_surrogate_in_the_text_is_one_error_line() -> None:
    # A str holding U+D800 (as a loader without libyaml makes of "\ud800"): libyaml
    # refused to encode it with a UnicodeEncodeError, a traceback.
    text = 'schedules:\n  - id: a\n    every: 1h\n    description: "x\ud800"\n    target: {function: f}\n'
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text)
    assert info.value.errors == ["invalid text: surrogates not allowed at line 4, column 20"]
