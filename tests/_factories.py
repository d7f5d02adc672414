"""Small builders of models for tests, at fixed times (never the clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec, ScheduleState, Target
from firecron.core.runs import TERMINAL_STATES, Run, RunState, scheduled_run_id

if TYPE_CHECKING:
    from firecron.store.base import Store

T0 = datetime(2027, 1, 1, tzinfo=UTC)
"""The fixed 'now' of the tests."""
MINUTE = timedelta(minutes=1)
TARGET_URL = "https://example.com/hook"

_DEFAULT: Any = object()


def make_spec(schedule_id: str, **overrides: Any) -> ScheduleSpec:
    """A valid spec: every minute, POST to example.com; ``overrides`` replace fields."""
    fields: dict[str, Any] = {"id": schedule_id, "every": "1m", "target": {"url": TARGET_URL}}
    fields.update(overrides)
    return ScheduleSpec.model_validate(fields)


def make_state(next_fire_at: datetime | None = T0, **overrides: Any) -> ScheduleState:
    """A state due at ``next_fire_at`` (None: idle); ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "next_fire_at": next_fire_at,
        "next_occurrence": next_fire_at,
        "created_at": T0 - timedelta(days=1),
        "updated_at": T0 - timedelta(days=1),
    }
    fields.update(overrides)
    return ScheduleState.model_validate(fields)


def make_run(
    schedule_id: str,
    scheduled_for: datetime = T0,
    *,
    state: RunState = RunState.pending,
    watch_at: datetime | None = _DEFAULT,
    created_at: datetime | None = None,
    run_id: str | None = None,
    **overrides: Any,
) -> Run:
    """A run of ``schedule_id`` for the occurrence ``scheduled_for``.

    Its id is :func:`scheduled_run_id` unless ``run_id`` is given; ``created_at``
    defaults to ``scheduled_for``; ``watch_at`` defaults to one minute after creation
    for non-terminal states and to None for terminal ones.
    """
    created = scheduled_for if created_at is None else created_at
    if watch_at is _DEFAULT:
        watch_at = None if state in TERMINAL_STATES else created + MINUTE
    fields: dict[str, Any] = {
        "id": run_id or scheduled_run_id(schedule_id, scheduled_for),
        "schedule_id": schedule_id,
        "scheduled_for": scheduled_for,
        "fire_at": scheduled_for,
        "state": state,
        "target": Target(url=TARGET_URL),
        "created_at": created,
        "updated_at": created,
        "watch_at": watch_at,
    }
    fields.update(overrides)
    return Run.model_validate(fields)


async def store_schedule(store: Store, now: datetime, **fields: Any) -> ScheduleSpec:
    """Store a schedule built from ``fields``: due at ``now`` when it has a trigger (an
    ``every`` is anchored there), idle when it is on demand. ``pipeline={...}`` is a
    pipeline definition: the schedule targets it and carries its snapshot, as the file
    parser would make it."""
    if "pipeline" in fields:
        pipeline = PipelineSpec.model_validate(fields.pop("pipeline"))
        fields["target"] = {"pipeline": pipeline.id}
        fields["pipeline_spec"] = pipeline
    if "every" in fields:
        fields.setdefault("start_at", now)
    spec = ScheduleSpec.model_validate(fields)
    if spec.on_demand:
        state = ScheduleState(created_at=now, updated_at=now)
    else:
        state = planning.initial_state(spec, now - timedelta(hours=1))
    await store.put_schedule(spec, state, expect_version=None)
    return spec
