"""How firecron writes values out: one-line messages, RFC 3339 instants, plain values.

Pure helpers shared by the core, the stores, the CLI, the dispatcher, the worker and
the notifier, so each rule is written once:

- :func:`one_line`: an error or log text on one line, cut to a limit each caller picks
  (what fits a log line, a stored error field or an HTTP answer differs);
  :func:`error_line` the same for an exception, named by its type.
- :func:`rfc3339`: an instant as RFC 3339 UTC text with ``Z``.
- :func:`plain`: model dumps turned into JSON-ready values, datetimes as the caller
  wants them (aware UTC ``datetime`` for the stores, RFC 3339 text for JSON output).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel

from firecron.core.durations import format_duration

__all__ = ["error_line", "one_line", "plain", "rfc3339", "utc"]


def one_line(text: str, limit: int) -> str:
    """``text`` with every run of whitespace (newlines too) made one space, stripped,
    and cut to at most ``limit`` characters, the last of them ``…`` when cut.

    ``limit`` must be at least 1.
    """
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_line(exc: BaseException, limit: int) -> str:
    """``exc`` as ``"<Type>: <message>"`` (the type alone when it has no message) by
    :func:`one_line`: for errors whose type says what happened (``ConnectionResetError``)."""
    message = str(exc)
    return one_line(
        f"{type(exc).__name__}: {message}" if message.strip() else type(exc).__name__, limit
    )


def rfc3339(value: datetime) -> str:
    """``value`` (aware) in UTC as ``2027-01-01T09:00:00Z``; fractional seconds only when present."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc(value: datetime) -> datetime:
    """``value`` (aware) as the same instant in UTC."""
    return value.astimezone(UTC)


def plain(value: Any, instant: Callable[[datetime], Any] = utc) -> Any:
    """``value`` with models dumped and every part made JSON-ready, recursively.

    Models become their ``model_dump()``; datetimes become ``instant(value)`` (by
    default the aware UTC datetime, as the stores keep them; :func:`rfc3339` for JSON
    text); durations their text form (``90s``); enums their values; mappings dicts
    with string keys; lists and tuples lists. Anything else is returned as it is.
    """
    if isinstance(value, BaseModel):
        return plain(value.model_dump(mode="python"), instant)
    if isinstance(value, datetime):
        return instant(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v, instant) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, instant) for v in value]
    return value
