"""The pipelines benchmark's worker: ``noop``, a ``@firecron.worker`` that does nothing.

Served by ``functions-framework --target noop --source bench/_noop_worker.py`` (see
``bench/pipelines.py``), so every hop it takes part in costs exactly what the SDK
costs: read and start the run, call the function, record the end, and settle it (claim
and fire the next task) in this process, as a deployed worker does.
"""

from __future__ import annotations

import firecron


@firecron.worker
def noop(ctx: firecron.RunContext) -> None:
    """Return at once: the run's output is ``null``."""
    return None
