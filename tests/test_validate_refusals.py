"""Schedules that cannot work are refused at validate (and apply), one line each.

Each kind is checked at the model or core level and through the real ``firecron``
entry point (``main``, which maps errors to exit codes): a cron that never matches, an
``at`` that can no longer fire, a target the SSRF guard always refuses, NaN or
Infinity in params, and a duration without a unit.
"""

from __future__ import annotations

import asyncio
import calendar
import json
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from firecron.cli import main
from firecron.core import planning
from firecron.core.models import INPUT, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import RunState
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file
from firecron.core.triggers import jitter_offset, parse_spec, validate_cron
from firecron.store import open_store

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def _spec(context: dict[str, bool] | None = None, **fields: object) -> ScheduleSpec:
    base: dict[str, object] = {"id": "job", "every": "1m", "target": {"function": "hello"}}
    base.update(fields)
    return ScheduleSpec.model_validate(base, context=context)


def _file_errors(
    text: str, *, now: datetime | None = NOW, allow_private: bool = False
) -> list[str]:
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text, "s.yaml", now=now, allow_private_targets=allow_private)
    return info.value.errors


def _entry(body: str, schedule_id: str = "x") -> str:
    """A schedules file with one entry; ``body`` holds its fields, one per line."""
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    return f"schedules:\n  - id: {schedule_id}\n{lines}"


# ------------------------------------------------------------------ never-matching cron

NEVER = ["0 2 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "0 0 30 2 */2", "0 0 0 31 4 *"]


@pytest.mark.parametrize("expr", NEVER)
def test_a_cron_that_never_matches_is_refused_by_the_model(expr: str) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(every=None, cron=expr, context=INPUT)
    assert "never fires" in str(info.value)
    with pytest.raises(ValueError, match="never fires"):
        parse_spec(expr)


@pytest.mark.parametrize("expr", NEVER)
def test_a_stored_cron_that_never_matches_still_reads_back_exhausted(expr: str) -> None:
    """Stored before the rule (it was accepted then): it must not break reads of the store."""
    spec = _spec(every=None, cron=expr)
    assert planning.initial_state(spec, NOW).exhausted


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 29 2 *",  # leap years only
        "0 0 31 2 1",  # neither day field starts with '*': OR-ed, so every Monday in February
        "0 0 31 2 1-5",
        "0 0 31 2,3 *",  # March has a 31st
        "0 0 * 2 MON",
        "0 0 */30 2 *",  # days 1 and 31: the 1st fits
    ],
)
def test_crons_that_match_some_day_are_accepted(expr: str) -> None:
    assert parse_spec(expr).next_after(NOW) is not None


@cache
def _calendar() -> frozenset[tuple[int, int, int]]:
    """Every (month, day, cron weekday) of one 400-year Gregorian cycle."""
    found: set[tuple[int, int, int]] = set()
    day = date(2000, 1, 1)
    while day.year < 2400:
        found.add((day.month, day.day, day.isoweekday() % 7))
        day += timedelta(days=1)
    return frozenset(found)


def _day_field(values: list[int], star_step: int | None) -> tuple[str, set[int], bool]:
    """A day-of-month field: '*/step' (starts with '*') or a list; its days; whether starred."""
    if star_step is not None:
        return f"*/{star_step}", set(range(1, 32, star_step)), True
    return ",".join(map(str, values)), set(values), False


# The first example builds the calendar (146,097 days): no per-example deadline.
@settings(deadline=None)
@given(
    days=st.lists(st.integers(28, 31), min_size=1, max_size=3),
    day_step=st.one_of(st.none(), st.integers(1, 31)),
    months=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    weekdays=st.one_of(st.none(), st.lists(st.integers(0, 6), min_size=1, max_size=2)),
    star_weekdays=st.booleans(),
)
def test_never_matches_agrees_with_a_400_year_calendar_search(
    days: list[int],
    day_step: int | None,
    months: list[int],
    weekdays: list[int] | None,
    star_weekdays: bool,
) -> None:
    dom_text, dom, dom_star = _day_field(days, day_step)
    if weekdays is None:
        dow_text, dow, dow_star = "*", set(range(7)), True
    elif star_weekdays:
        dow_text, dow, dow_star = f"*/{weekdays[0] + 1}", set(range(0, 7, weekdays[0] + 1)), True
    else:
        dow_text, dow, dow_star = ",".join(map(str, weekdays)), set(weekdays), False
    expr = f"0 0 {dom_text} {','.join(map(str, months))} {dow_text}"
    if dom_star or dow_star:  # Vixie: a day field starting with '*' makes them AND
        matches = any(m in months and d in dom and w in dow for m, d, w in _calendar())
    else:
        matches = any(m in months and (d in dom or w in dow) for m, d, w in _calendar())
    if matches:
        assert validate_cron(expr) == expr
    else:
        with pytest.raises(ValueError, match="never fires"):
            validate_cron(expr)


def test_the_calendar_has_leap_days() -> None:
    assert (2, 29, 0) in _calendar()
    assert not any(d > calendar.monthrange(2001, m)[1] + (m == 2) for m, d, _ in _calendar())


# ---------------------------------------------------------------------------- at


def _stored_at(spec: ScheduleSpec) -> StoredSchedule:
    """The schedule as a store holds it when applied before ``at`` and not ticked since."""
    assert spec.at is not None
    state = ScheduleState(next_occurrence=spec.at, next_fire_at=spec.at)
    return StoredSchedule(spec=spec, state=state, version="v1")


def _fires(spec: ScheduleSpec, now: datetime) -> bool:
    """Whether a tick at ``now`` fires the pending ``at`` occurrence (the planner's verdict)."""
    runs = planning.plan(_stored_at(spec), None, now).runs
    return any(run.state is RunState.pending for run in runs)


@pytest.mark.parametrize(
    ("misfire", "age", "refused"),
    [
        ({}, timedelta(hours=24, seconds=1), True),  # default grace 24h
        ({}, timedelta(hours=23, minutes=59), False),
        ({"misfire": {"grace": "1h"}}, timedelta(hours=1, seconds=1), True),
        ({"misfire": {"grace": "1h"}}, timedelta(minutes=59), False),
        ({"misfire": {"policy": "all", "grace": "10m"}}, timedelta(minutes=11), True),
        # skip fires only on-time occurrences: within the 2-minute misfire threshold.
        ({"misfire": "skip"}, timedelta(minutes=2, seconds=1), True),
        ({"misfire": "skip"}, timedelta(minutes=1, seconds=59), False),
    ],
)
def test_an_at_is_refused_exactly_when_the_planner_could_never_fire_it(
    misfire: dict[str, object], age: timedelta, refused: bool
) -> None:
    at = NOW - age
    spec = _spec(None, every=None, at=at.isoformat(), **misfire)
    text = _entry(
        f"at: {at.isoformat()}\ntarget: {{function: hello}}\n"
        + (f"misfire: {json.dumps(misfire['misfire'])}" if misfire else "")
    )
    if refused:
        (line,) = _file_errors(text)
        assert line.startswith("schedules[0] (id=x): at: ")
        assert "can never fire" in line
        # The planner agrees, now and at any later tick.
        assert not _fires(spec, NOW)
        assert not _fires(spec, NOW + timedelta(days=3))
    else:
        assert parse_schedule_file(text, now=NOW).schedules[0].at == at
        assert _fires(spec, NOW)


def test_an_at_with_jitter_under_skip_is_judged_by_its_fire_time() -> None:
    at = NOW - timedelta(minutes=2, seconds=30)
    spec = _spec(every=None, at=at.isoformat(), misfire="skip", jitter="10m")
    offset = jitter_offset(spec.id, at, spec.jitter)
    fires = at + offset >= NOW - planning.DEFAULT_MISFIRE_THRESHOLD
    assert _fires(spec, NOW) is fires
    text = _entry(f"at: {at.isoformat()}\nmisfire: skip\njitter: 10m\ntarget: {{function: hello}}")
    if fires:
        parse_schedule_file(text, now=NOW)
    else:
        _file_errors(text)


def test_an_at_outside_its_window_is_refused_even_without_now() -> None:
    text = _entry(
        "at: 2099-01-01T00:00:00Z\nstart_at: 2099-02-01T00:00:00Z\ntarget: {function: hello}"
    )
    (line,) = _file_errors(text, now=None)
    assert line == (
        "schedules[0] (id=x): at: 2099-01-01T00:00:00Z is before start_at "
        "2099-02-01T00:00:00Z: it never fires"
    )
    text = _entry("at: 2099-03-01T00:00:00Z\nend_at: 2099-02-01T00:00:00Z\ntarget: {function: h}")
    assert "is after end_at" in _file_errors(text, now=None)[0]


def test_without_now_the_time_checks_are_skipped() -> None:
    text = _entry("at: 2020-01-01T00:00:00Z\ntarget: {function: hello}")
    assert parse_schedule_file(text).schedules[0].id == "x"


# ----------------------------------------------------------------------------- targets

ALWAYS_REFUSED = [
    "https://169.254.169.254/computeMetadata/v1/",
    "http://169.254.169.254/latest/meta-data/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://169.254.10.20/",
    "https://[fe80::1]/hook",
    "https://0.0.0.0/",
]
PRIVATE = [
    "https://127.0.0.1:8443/hook",
    "https://localhost/hook",
    "https://10.0.0.5/hook",
    "https://192.168.1.10/hook",
    "https://[::1]/hook",
    "https://100.64.0.1/hook",
    "http://example.com/hook",  # http only where private targets are allowed (dev)
]


@pytest.mark.parametrize("url", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_targets_the_guard_always_refuses_are_refused(url: str, allow_private: bool) -> None:
    text = _entry(f'every: 1m\ntarget: {{url: "{url}"}}')
    (line,) = _file_errors(text, allow_private=allow_private)
    assert line.startswith("schedules[0] (id=x): target.url: ")
    assert "always refused by the SSRF guard" in line


@pytest.mark.parametrize("url", PRIVATE)
def test_private_targets_follow_the_allow_private_setting(url: str) -> None:
    text = _entry(f'every: 1m\ntarget: {{url: "{url}"}}')
    (line,) = _file_errors(text, allow_private=False)
    assert line.startswith("schedules[0] (id=x): target.url: ")
    assert parse_schedule_file(text, now=NOW, allow_private_targets=True).schedules


def test_public_names_pass_without_dns_and_sinks_are_checked_too() -> None:
    text = _entry('every: 1m\ntarget: {url: "https://hooks.example.com/x"}') + (
        "notifications:\n  sinks:\n"
        '    meta: {type: webhook, url: "https://169.254.169.254/x?token=SECRET"}\n'
        '    fine: {type: webhook, url: "https://alerts.example.com/x"}\n'
    )
    (line,) = _file_errors(text)
    assert line.startswith("notifications.sinks.meta.url: https://169.254.169.254/x is always")
    assert "SECRET" not in line


# ------------------------------------------------------------------------------ params


@pytest.mark.parametrize(
    ("yaml_value", "path", "shown"),
    [
        (".nan", "params.v", "NaN"),
        (".inf", "params.v", "Infinity"),
        ("-.inf", "params.v", "-Infinity"),
        ("1.0e+999", "params.v", "Infinity"),
        ("[1, {deep: .NaN}]", "params.v[1].deep", "NaN"),
    ],
)
def test_nan_and_infinity_in_params_are_refused_naming_the_path(
    yaml_value: str, path: str, shown: str
) -> None:
    (line,) = _file_errors(
        _entry(f"every: 1m\ntarget: {{function: hello}}\nparams: {{v: {yaml_value}}}")
    )
    assert line.startswith(f"schedules[0] (id=x): {path}: {shown} is not JSON")
    with pytest.raises(ValidationError, match="is not JSON"):
        _spec(params={"v": float(shown.replace("Infinity", "inf"))})


def test_strings_that_look_like_nan_stay_strings() -> None:
    text = _entry('every: 1m\ntarget: {function: hello}\nparams: {a: NaN, b: "Infinity"}')
    assert parse_schedule_file(text).schedules[0].params == {"a": "NaN", "b": "Infinity"}


def test_trigger_params_are_strict_json_or_plain_strings() -> None:
    from firecron.cli import _parse_params

    parsed = _parse_params(("a=NaN", "b=1e999", "c=[1,Infinity]", "d=1.5", "e=3"))
    assert parsed == {"a": "NaN", "b": "1e999", "c": "[1,Infinity]", "d": 1.5, "e": 3}


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("field", "yaml_value", "where"),
    [
        ("every", "10", "every"),
        ("every", '"10"', "every"),
        ("jitter", "5", "jitter"),
        ("timeout", "300", "timeout"),
        ("expected_duration", "60", "expected_duration"),
        ("retention", "86400", "retention"),
        ("retry", "{backoff: 5}", "retry.backoff"),
        ("retry", "{max_backoff: 600}", "retry.max_backoff"),
        ("misfire", "{grace: 3600}", "misfire.grace"),
    ],
)
def test_a_duration_without_a_unit_is_refused_with_a_hint(
    field: str, yaml_value: str, where: str
) -> None:
    trigger = "" if field == "every" else "every: 1m\n"
    text = _entry(f"{trigger}{field}: {yaml_value}\ntarget: {{function: hello}}")
    (line,) = _file_errors(text)
    number = yaml_value.strip('"{}').split(": ")[-1]
    assert line.startswith(f"schedules[0] (id=x): {where}: invalid duration ")
    assert line.endswith(
        f"a bare number has no unit; write {number}s (or {number}m, {number}h, {number}d)"
    )


# ------------------------------------------------------------------ through the command


def _firecron(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    """Run the ``firecron`` entry point in-process: exit code, stdout and stderr lines."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0), out.splitlines(), err.splitlines()


CLI_CASES = [
    ('cron: "0 2 30 2 *"', "cron: invalid cron expression '0 2 30 2 *': it never fires"),
    ("at: 2020-01-01T00:00:00Z", "at: 2020-01-01T00:00:00Z is more than misfire.grace (1d)"),
    ("every: 10", "every: invalid duration 10: a bare number has no unit; write 10s"),
    ("every: 1m\nparams: {ratio: .nan}", "params.ratio: NaN is not JSON"),
    (
        'every: 1m\ntarget: {url: "https://169.254.169.254/computeMetadata/v1/"}',
        "target.url: https://169.254.169.254/computeMetadata/v1/ is always refused",
    ),
    (
        'every: 1m\ntarget: {url: "https://127.0.0.1:8443/hook"}',
        "target.url: https://127.0.0.1:8443/hook is always refused by the SSRF guard: "
        "127.0.0.1 is loopback",
    ),
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("FIRECRON_ALLOW_PRIVATE_TARGETS", raising=False)
    monkeypatch.delenv("FIRECRON_STORE", raising=False)
    return monkeypatch


@pytest.mark.parametrize(("body", "message"), CLI_CASES)
def test_validate_and_apply_exit_2_with_one_line_and_write_nothing(
    body: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: object
) -> None:
    store = f"sqlite:///{tmp_path / 'firecron.db'}"
    good = tmp_path / "good.yaml"
    good.write_text(_entry("every: 1h\ntarget: {function: hello}", "kept"))
    assert _firecron(capsys, "apply", str(good), "--store", store)[0] == 0

    if "target:" not in body:
        body += "\ntarget: {function: hello}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(_entry(body, "bad"))
    code, out, err = _firecron(capsys, "validate", str(bad))
    assert (code, out, len(err)) == (2, [], 1)
    assert err[0].startswith(f"{bad}: schedules[0] (id=bad): {message}")

    code, out, err = _firecron(capsys, "apply", str(bad), "--store", store)
    assert (code, out, len(err)) == (2, [], 1)
    assert asyncio.run(_stored_ids(store)) == ["kept"]


async def _stored_ids(url: str) -> list[str]:
    store = open_store(url)
    try:
        return [s.id for s in await store.list_schedules()]
    finally:
        await store.close()


def test_validate_reads_allow_private_targets_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(_entry('every: 1m\ntarget: {url: "http://127.0.0.1:8080/hook"}'))
    code, _, err = _firecron(capsys, "validate", str(path))
    assert code == 2
    assert err == [
        f"{path}: schedules[0] (id=x): target.url: http://127.0.0.1:8080/hook is always "
        "refused by the SSRF guard: scheme 'http' not allowed (https only)"
    ]
    env.setenv("FIRECRON_ALLOW_PRIVATE_TARGETS", "1")
    assert _firecron(capsys, "validate", str(path))[:2] == (0, [f"ok: {path}: 1 schedule"])


@pytest.mark.parametrize("spec", ["0 2 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "every 10"])
def test_next_refuses_a_spec_that_cannot_work(
    spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _firecron(capsys, "next", spec)
    assert (code, out, len(err)) == (2, [], 1)
    assert err[0].startswith("error: SPEC: invalid ")
    assert "never fires" in err[0] or "'every 10s'" in err[0]


# -------------------------------------------- values that used to crash at write time

OK = "every: 1h\ntarget: {function: hello}"


def _three(bad: str) -> str:
    """A file ``[ok-1, bad, ok-3]``."""
    return (
        _entry(OK, "ok-1")
        + _entry(bad, "bad").removeprefix("schedules:\n")
        + _entry(OK, "ok-3").removeprefix("schedules:\n")
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            'at: "9999-12-31T23:59:59Z"\njitter: 1d',
            "at: 9999-12-31T23:59:59Z is out of range: firecron accepts instants from "
            "1970-01-01T00:00:00Z to before 9000-01-01T00:00:00Z",
        ),
        ("every: 99999999d", "every: duration '99999999d' is too long: at most 3650d (ten years)"),
        (
            "every: 1h\njitter: 99999999d",
            "jitter: duration '99999999d' is too long: at most 3650d (ten years)",
        ),
        (
            'every: 1h\nstart_at: "9999-12-31T23:59:59Z"',
            "start_at: 9999-12-31T23:59:59Z is out of range",
        ),
        (
            "every: 99999999999999999999999d",
            "every: duration '99999999999999999999999d' is too long: at most 3650d",
        ),
        ("every: 3000000d", "every: duration '3000000d' is too long"),
        (
            "every: 1h\nparams: {a: " + "[" * 40 + "]" * 40 + "}",
            "params: nested more than 32 levels deep",
        ),
    ],
)
def test_values_that_crashed_at_write_time_are_refused_and_nothing_is_written(
    bad: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: object
) -> None:
    store = f"sqlite:///{tmp_path / 'firecron.db'}"
    path = tmp_path / "three.yaml"
    path.write_text(_three(bad + "\ntarget: {function: hello}"))
    for command in (["validate", str(path)], ["apply", str(path), "--store", store]):
        code, out, err = _firecron(capsys, *command)
        assert (code, out, len(err)) == (2, [], 1), err
        assert err[0].startswith(f"{path}: schedules[1] (id=bad): {message}"), err[0]
    assert asyncio.run(_stored_ids(store)) == []


def test_a_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: object
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(_entry(OK + "\ndescription: café", "a").encode("latin-1"))
    store = f"sqlite:///{tmp_path / 'firecron.db'}"
    for command in (["validate", str(path)], ["apply", str(path), "--store", store]):
        # Before: a UnicodeDecodeError traceback.
        code, out, err = _firecron(capsys, *command)
        assert (code, out) == (2, [])
        assert err == [f"error: {path}: not UTF-8 text: byte 0xe9 at line 5, column 21"]


@pytest.mark.parametrize("depth", [900, 2000])
def test_deeply_nested_params_are_one_short_line(
    depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: object
) -> None:
    # 900 levels used to give pydantic's recursion error naming all 900 (a line of 7 kB);
    # 2,000 stop at libyaml's own nesting limit, and at RecursionError in PyYAML's
    # pure-Python composer where libyaml is missing.
    path = tmp_path / "deep.yaml"
    path.write_text(_entry(OK + "\nparams: {a: " + "[" * depth + "]" * depth + "}"))
    code, out, err = _firecron(capsys, "validate", str(path))
    assert (code, out, len(err)) == (2, [], 1)
    assert len(err[0]) < len(str(path)) + 100, err[0]


def test_show_does_not_crash_on_a_schedule_at_the_far_end_of_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: object
) -> None:
    """A schedule stored before the bounds (here written past them) still shows."""
    url = f"sqlite:///{tmp_path / 'firecron.db'}"
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

    async def put() -> None:
        store = open_store(url)
        try:
            for schedule_id, zone in (("far", "UTC"), ("far-east", "Asia/Tokyo")):
                spec = ScheduleSpec.model_validate(
                    {
                        "id": schedule_id,
                        "every": "1h",
                        "timezone": zone,
                        "start_at": "9999-12-31T20:00:00Z",
                        "target": {"function": "hello"},
                    }
                )
                state = ScheduleState(next_occurrence=last, next_fire_at=last)
                await store.put_schedule(spec, state, expect_version=None)
        finally:
            await store.close()

    asyncio.run(put())
    for schedule_id in ("far", "far-east"):
        # Before: OverflowError from the next fire times, and from their local time.
        code, out, err = _firecron(capsys, "show", schedule_id, "--store", url)
        assert (code, err) == (0, [])
        assert any("9999-12-31T23:59:59Z" in line for line in out)
        code, out, err = _firecron(capsys, "show", schedule_id, "--json", "--store", url)
        assert code == 0
        assert [t["utc"] for t in json.loads("\n".join(out))["next"]] == ["9999-12-31T23:59:59Z"]
