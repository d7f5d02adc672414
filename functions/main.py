"""Cloud Functions entry points: the dispatcher and the example workers.

Each top-level function is one Cloud Function (``--target NAME``). Workers are plain
functions of a :class:`firecron.RunContext` decorated with ``@firecron.worker``; the
SDK verifies, starts, heartbeats and records each run. Nothing here does I/O at import.
"""

from __future__ import annotations

import time

import flask
import functions_framework

import firecron
from firecron._dispatch_http import dispatch_endpoint

# --- dispatcher entry point --------------------------------------------------------


@functions_framework.http
def dispatch(request: flask.Request) -> flask.Response:
    """Cloud Scheduler's target: verify the caller, run one tick, answer its summary."""
    response: flask.Response = dispatch_endpoint(request)
    return response


# --- example workers ---------------------------------------------------------------


@firecron.worker
def hello(ctx: firecron.RunContext) -> dict[str, str]:
    """Greets ``params["name"]`` (default ``world``)."""
    name = ctx.params.get("name", "world")
    return {"greeting": "hello " + str(name)}


@firecron.worker
def sleep(ctx: firecron.RunContext) -> dict[str, float | bool]:
    """Sleeps ``params["seconds"]`` (default 1), stopping early when the run is cancelled.

    The SDK sends heartbeats from its own thread, so a long sleep needs no
    ``ctx.heartbeat()``; it only has to look at ``ctx.cancelled`` now and then.
    """
    raw = ctx.params.get("seconds", 1)
    seconds = float(raw) if isinstance(raw, int | float | str) else 1.0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if ctx.cancelled:
            return {"slept": round(elapsed, 3), "cancelled": True}
        time.sleep(min(0.1, seconds - elapsed))
    return {"slept": seconds}


@firecron.worker
def fail(ctx: firecron.RunContext) -> None:
    """Always raises, with ``params["message"]`` as the message."""
    raise RuntimeError(ctx.params.get("message", "this worker always fails"))


# --- example pipeline workers (schedules.yaml: the daily-etl pipeline) ---------------


@firecron.worker
def extract(ctx: firecron.RunContext) -> dict[str, object]:
    """Pretends to extract ``params["source"]``: returns how many rows it found.

    ``params["rows"]`` sets the count (default 100); ``params["fail"]`` makes it raise,
    to show a pipeline's error path.
    """
    if ctx.params.get("fail"):
        raise RuntimeError(f"extracting {ctx.params.get('source')} failed (on purpose)")
    rows = ctx.params.get("rows", 100)
    return {"source": ctx.params.get("source"), "rows": rows if isinstance(rows, int) else 0}


@firecron.worker
def join(ctx: firecron.RunContext) -> dict[str, object]:
    """Joins what its upstream tasks extracted (``ctx.upstream``: their outputs by task id)."""
    rows = 0
    sources = []
    for task, out in ctx.upstream.items():
        if isinstance(out, dict) and isinstance(out.get("rows"), int):
            rows += int(out["rows"])  # type: ignore[arg-type]  # checked just above
            sources.append(task)
    return {"rows": rows, "sources": sorted(sources)}


@firecron.worker
def load(ctx: firecron.RunContext) -> dict[str, object]:
    """Pretends to load the joined rows into ``params["table"]``."""
    joined = ctx.upstream.get("join")
    rows = joined.get("rows", 0) if isinstance(joined, dict) else 0
    return {"table": ctx.params.get("table", "warehouse"), "loaded": rows}
