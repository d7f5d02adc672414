"""Worker entry points used only by the tests, served like ``functions/main.py``.

- ``sleepy``: ``main.sleep`` (the same function, not a copy) with a 0.3 s heartbeat,
  so cancellation and heartbeat staleness show within a second or two.
- ``bad_output``: returns what the SDK must refuse: ``params["kind"]`` ``huge``
  (more than 64 KiB of JSON) or ``set`` (not JSON).
- ``gated``: works until the state key ``params["key"]`` holds a value (a test sets it
  with ``firecron.State``), then returns it: a run as long as the test wants.

The workers of ``functions/main.py`` itself are served from that file.
"""

from __future__ import annotations

import inspect
import sys
import time
from datetime import timedelta
from pathlib import Path

import firecron

# functions/ is the Cloud Functions source root, not a package: main is imported from it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))
import main

_sleep = inspect.unwrap(main.sleep)
"""The plain function under ``@firecron.worker``: it can be declared again with options."""


@firecron.worker(heartbeat_interval=timedelta(seconds=0.3))
def sleepy(ctx: firecron.RunContext) -> object:
    """``main.sleep``: sleeps ``params["seconds"]``; stops early when cancelled."""
    return _sleep(ctx)


@firecron.worker
def bad_output(ctx: firecron.RunContext) -> object:
    """An output the SDK must refuse."""
    if ctx.params.get("kind") == "set":
        return {"tags": {"a", "b"}}
    return {"blob": "x" * (64 * 1024)}


@firecron.worker
def gated(ctx: firecron.RunContext) -> object:
    """Waits until the state key ``params["key"]`` is set, then returns its value."""
    key = str(ctx.params["key"])
    while (value := ctx.state.get(key)) is None:
        if ctx.cancelled:
            return {"released": None, "cancelled": True}
        time.sleep(0.05)  # the worker polls the store: what the test sets, it sees soon
    return {"released": value}
