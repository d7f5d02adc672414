"""The shared text helpers: one-line errors, RFC 3339 instants and plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import pytest

from _factories import T0, make_spec
from firecron._output import jsonable
from firecron.core.render import error_line, one_line, plain, rfc3339
from firecron.store._codec import to_record


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("a\n  b\tc ", 10, "a b c"),
        ("abcdef", 6, "abcdef"),
        ("abcdefg", 6, "abcde…"),
        ("", 5, ""),
    ],
)
def test_one_line_collapses_whitespace_and_cuts_to_the_limit(
    text: str, limit: int, expected: str
) -> None:
    assert one_line(text, limit) == expected
    assert len(one_line(text, limit)) <= limit


def test_error_line_names_the_type() -> None:
    assert (
        error_line(ConnectionResetError("peer\nreset"), 100) == "ConnectionResetError: peer reset"
    )
    assert error_line(TimeoutError(), 100) == "TimeoutError"
    assert error_line(ValueError("x" * 50), 20) == "ValueError: " + "x" * 7 + "…"


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(datetime(2027, 1, 1, 9, tzinfo=UTC)) == "2027-01-01T09:00:00Z"
    plus2 = datetime(2027, 1, 1, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(plus2) == "2027-01-01T09:00:00.000005Z"


class _Colour(StrEnum):
    red = "red"


def test_plain_keeps_utc_datetimes_for_stores_and_text_for_json() -> None:
    value = {1: (T0, timedelta(seconds=90), _Colour.red, [None, 2.5])}
    assert plain(value) == {"1": [T0, "1m30s", "red", [None, 2.5]]}
    assert jsonable(value) == {"1": [rfc3339(T0), "1m30s", "red", [None, 2.5]]}
    spec = make_spec("job", timeout="90s")
    assert jsonable(spec) == plain(to_record(spec), rfc3339)
