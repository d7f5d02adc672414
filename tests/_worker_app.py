"""Worker entry points used only by the tests, served like ``functions/main.py``.

- ``sleepy``: ``main.sleep`` with a 0.3 s heartbeat, so cancellation and heartbeat
  staleness show within a second or two.
- ``bad_output``: returns what the SDK must refuse: ``params["kind"]`` ``huge``
  (more than 64 KiB of JSON) or ``set`` (not JSON).
"""

from __future__ import annotations

import time
from datetime import timedelta

import firecron


@firecron.worker(heartbeat_interval=timedelta(seconds=0.3))
def sleepy(ctx: firecron.RunContext) -> dict[str, float | bool]:
    """Sleeps ``params["seconds"]`` in small steps; stops early when cancelled."""
    raw = ctx.params.get("seconds", 1)
    seconds = float(raw) if isinstance(raw, int | float | str) else 1.0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if ctx.cancelled:
            return {"slept": round(elapsed, 3), "cancelled": True}
        time.sleep(min(0.05, seconds - elapsed))
    return {"slept": seconds}


@firecron.worker
def bad_output(ctx: firecron.RunContext) -> object:
    """An output the SDK must refuse."""
    if ctx.params.get("kind") == "set":
        return {"tags": {"a", "b"}}
    return {"blob": "x" * (64 * 1024)}
