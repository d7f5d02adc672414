"""A worker that reports what it was told, for tests/test_worker_integrity.py."""

from __future__ import annotations

import firecron


@firecron.worker
def echo(ctx: firecron.RunContext) -> dict[str, object]:
    """Returns the context it executed with, so a test can see where each field came from."""
    return {
        "run_id": ctx.run_id,
        "schedule_id": ctx.schedule_id,
        "scheduled_for": ctx.scheduled_for.isoformat(),
        "attempt": ctx.attempt,
        "trigger": ctx.trigger.value,
        "params": ctx.params,
    }
