"""The chaos suite's worker: sleeps like ``main.sleep`` and logs each attempt's start and end.

Served by functions-framework (``--target chaos_sleepy --source bench/chaos/_worker_app.py``).
Each execution appends JSON lines to ``$CHAOS_ATTEMPT_LOG``: ``{"event": "start"|"end",
"run", "attempt", "pid", "at"}`` with ``at`` from ``time.time()`` (comparable across
processes), so overlap is measured on the worker side (``bench/chaos/_count.py``).
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import firecron


def _log(event: str, ctx: firecron.RunContext, **extra: object) -> None:
    line = {
        "event": event,
        "run": ctx.run_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "at": time.time(),
        **extra,
    }
    path = os.environ.get("CHAOS_ATTEMPT_LOG")
    if path:
        # One short O_APPEND write per line: lines of concurrent processes never interleave.
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")


@firecron.worker(heartbeat_interval=timedelta(seconds=0.3))
def chaos_sleepy(ctx: firecron.RunContext) -> dict[str, object]:
    """Sleeps ``params["seconds"]`` in 50 ms steps; stops early when cancelled."""
    raw = ctx.params.get("seconds", 1)
    seconds = float(raw) if isinstance(raw, int | float | str) else 1.0
    _log("start", ctx)
    started = time.monotonic()
    cancelled = False
    while (elapsed := time.monotonic() - started) < seconds:
        if ctx.cancelled:
            cancelled = True
            break
        time.sleep(min(0.05, seconds - elapsed))
    _log("end", ctx, cancelled=cancelled)
    return {"attempt": ctx.attempt, "cancelled": cancelled}
