"""Conversion between firecron models and plain records, shared by the backends.

A record is a dict of JSON-compatible values except that datetimes stay
``datetime`` (aware UTC): Firestore stores them as native timestamps, and the SQLite
backend serialises them itself. Durations become their text form (``90s``), enums
their values, so a record read back validates into an equal model.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel

from firecron.core.durations import format_duration
from firecron.core.models import ScheduleSpec, ScheduleState
from firecron.core.runs import Run

__all__ = ["from_record_run", "plain", "to_record"]


def plain(value: Any) -> Any:
    """Recursively turn model dumps into record values (see module docstring)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def to_record(model: BaseModel) -> dict[str, Any]:
    """A record of ``model`` (spec, state or run)."""
    result: dict[str, Any] = plain(model.model_dump(mode="python"))
    return result


def from_record_run(record: dict[str, Any]) -> Run:
    """Validate a run record back into a :class:`Run`."""
    return Run.model_validate(record)


def spec_from_record(record: dict[str, Any]) -> ScheduleSpec:
    """Validate a spec record back into a :class:`ScheduleSpec`."""
    return ScheduleSpec.model_validate(record)


def state_from_record(record: dict[str, Any]) -> ScheduleState:
    """Validate a state record back into a :class:`ScheduleState`."""
    return ScheduleState.model_validate(record)
