"""Conversion between firecron models and plain records, shared by the backends.

A record is a dict of JSON-compatible values except that datetimes stay
``datetime`` (aware UTC): Firestore stores them as native timestamps, and the SQLite
backend serialises them itself. Durations become their text form (``90s``), enums
their values, so a record read back validates into an equal model.

:func:`to_json` is the record as JSON text (datetimes as ISO 8601 in UTC), the form
both backends store whole models in; :func:`run_from_json` and friends read it back.
It is built for speed (every claim and outcome write encodes a run): pydantic's own
dump, then the C JSON encoder, which calls back only for datetimes and durations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel

from firecron.core.durations import format_duration
from firecron.core.models import StoredSchedule
from firecron.core.render import plain
from firecron.core.runs import Run
from firecron.errors import StoreError

# plain is re-exported for the backends: the walk itself is shared with the CLI output.
__all__ = ["plain", "readable_schedules", "run_from_json", "to_json", "to_record"]

_log = logging.getLogger("firecron.store")
_Item = TypeVar("_Item")


def readable_schedules(
    items: Iterable[_Item], decode: Callable[[_Item], StoredSchedule]
) -> list[StoredSchedule]:
    """``decode`` of each item, leaving out (with one error line each) those it cannot read.

    For the due query: one record that no longer decodes (written by hand, or by a
    version with other rules) must not stop the tick for every other schedule. It stays
    due, so it is reported at every tick until it is fixed or deleted. ``decode`` raises
    :class:`StoreError` for an unreadable record; anything else propagates.
    """
    readable: list[StoredSchedule] = []
    for item in items:
        try:
            readable.append(decode(item))
        except StoreError as exc:
            _log.error("%s; left out of the due schedules until it is fixed or deleted", exc)
    return readable


def to_record(model: BaseModel) -> dict[str, Any]:
    """A record of ``model`` (spec, state or run): :func:`~firecron.core.render.plain` of it."""
    result: dict[str, Any] = plain(model.model_dump(mode="python"))
    return result


# Text of the durations seen so far: runs repeat the same few (retry backoffs, timeouts),
# and formatting one costs more than the rest of its encoding.
_duration_texts: dict[timedelta, str] = {}
_DURATION_CACHE_SIZE = 1024


def _duration_text(value: timedelta) -> str:
    text = _duration_texts.get(value)
    if text is None:
        text = format_duration(value)
        if len(_duration_texts) < _DURATION_CACHE_SIZE:
            _duration_texts[value] = text
    return text


def _json_default(value: object) -> object:
    # Only what the C encoder cannot write reaches here. Enums need nothing: firecron's
    # are StrEnums, which the encoder writes as their string values.
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return _duration_text(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def to_json(model: BaseModel) -> str:
    """``model``'s record as compact JSON text; datetimes become ISO 8601 in UTC.

    It reads back exactly like ``json.dumps`` of :func:`to_record` with datetimes
    rendered by ``isoformat()``, at a third of the cost (no Python-level walk over the
    dump). Non-ASCII text is kept as is, not escaped.
    """
    return json.dumps(
        model.model_dump(), default=_json_default, separators=(",", ":"), ensure_ascii=False
    )


def run_from_json(text: str | bytes) -> Run:
    """Validate :func:`to_json` text (or any JSON run record) into a :class:`Run`.

    Raises ``pydantic.ValidationError`` for bad JSON or an invalid record.
    """
    return Run.model_validate_json(text)
