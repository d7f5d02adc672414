"""The continuous benchmark's worker: ``looper``, one instance of a continuous schedule.

Served by ``functions-framework --target looper --source bench/_continuous_worker.py``
(see ``bench/continuous.py``). Each generation works (a short sleep per step) while
``ctx.keep_going()``, then returns, and the SDK records its end and hands over to the
next generation in this process, as a deployed worker does.

It records its own interval, so overlaps are judged from what the instances did, not
from what the store says: one line ``start GEN TIME PID`` when the function is entered
and ``end GEN TIME PID`` when it returns, appended to the file named by
``BENCH_CONTINUOUS_LOG`` (``TIME`` is ``time.time()``, comparable across processes on
one machine). Each line is one ``write`` on an ``O_APPEND`` descriptor: lines from
concurrent writers never interleave, and a line written before a SIGKILL is kept (it
is in the kernel's page cache, not in a buffer of the dead process).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import firecron

LOG_ENV = "BENCH_CONTINUOUS_LOG"
"""The environment variable naming the interval log (required)."""
HEARTBEAT_INTERVAL = timedelta(milliseconds=250)
"""Well below a third of the benchmark's shortest ``heartbeat_timeout`` (3 s): a live
instance is never taken for a dead one, and a dead one's last heartbeat is at most this
old when it dies."""
STEP_S = 0.01
"""One step of work: ``keep_going()`` is asked this often, so a generation returns at
most this long after its window has passed."""


def _record(kind: str, generation: int | None) -> None:
    line = f"{kind} {generation} {time.time():.6f} {os.getpid()}\n".encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@firecron.worker(heartbeat_interval=HEARTBEAT_INTERVAL)
def looper(ctx: firecron.RunContext) -> object:
    """Work while ``ctx.keep_going()``; record the interval around it (module docstring)."""
    _record("start", ctx.generation)
    steps = 0
    while ctx.keep_going():
        steps += 1
        time.sleep(STEP_S)
    _record("end", ctx.generation)
    return {"generation": ctx.generation, "steps": steps}
