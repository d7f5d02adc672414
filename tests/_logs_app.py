"""Workers for the log-capture tests (``tests/test_logs.py``), served by functions-framework.

- ``chatty``: logs through ``logging`` in its own thread (INFO, a WARNING with
  ``%``-args, an ERROR with a traceback), through ``ctx.log`` from its thread and from a
  thread it starts, and through ``logging`` from that other thread (which is NOT its
  attempt's: not captured). Attempts up to ``params["fail_attempts"]`` then raise.
  With ``params["wait_for"]`` (a path) it logs ``waiting`` first and works until that
  file exists: the test sees that line stored while the run still runs (a heartbeat
  flushed it) and can follow the run.
- ``flood``: logs ``params["lines"]`` lines of ``params["size"]`` characters (more than
  the 256 KiB cap in all), then one WARNING, and returns.

A 0.3 s heartbeat, so lines are flushed within a second while a run works.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import firecron

_BEAT = timedelta(seconds=0.3)
_log = logging.getLogger("logs_app")


@firecron.worker(heartbeat_interval=_BEAT)
def chatty(ctx: firecron.RunContext) -> object:
    """Logs in every way a function can (see the module docstring)."""
    barrier = ctx.params.get("wait_for")
    if isinstance(barrier, str):
        _log.info("waiting for %s", Path(barrier).name)
        while not Path(barrier).exists():
            if ctx.cancelled:
                return {"cancelled": True}
            time.sleep(0.01)
    _log.info("attempt %d starts", ctx.attempt)
    _log.debug("debug is below the root's INFO: not captured")
    _log.warning("rows=%d left=%s", 7, "none")
    try:
        raise ValueError("bad row 3")
    except ValueError:
        _log.exception("row failed")
    ctx.log.info("from ctx.log")

    def other() -> None:
        ctx.log.warning("ctx.log from another thread")
        _log.info("plain logging from another thread")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    fail_attempts = ctx.params.get("fail_attempts", 0)
    if isinstance(fail_attempts, int) and ctx.attempt <= fail_attempts:
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")
    _log.info("done")
    return {"attempt": ctx.attempt}


@firecron.worker(heartbeat_interval=_BEAT)
def flood(ctx: firecron.RunContext) -> object:
    """Logs ``params["lines"]`` lines of ``params["size"]`` characters."""
    lines = int(str(ctx.params.get("lines", 0)))
    size = int(str(ctx.params.get("size", 0)))
    for n in range(1, lines + 1):
        _log.info("%06d %s", n, "é" * size)
    _log.warning("flooded %d lines", lines)
    return {"logged": lines}
