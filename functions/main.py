"""Cloud Functions entry points: the dispatcher, the admin API and console, and the
example workers.

Each top-level function is one Cloud Function (``--target NAME``). Workers are plain
functions of a :class:`firecron.RunContext` decorated with ``@firecron.worker``; the
SDK verifies, starts, checks in on and records each run. Nothing here does I/O at import.
"""

from __future__ import annotations

import time

import flask
import functions_framework

import firecron
from firecron._dispatch_http import dispatch_endpoint
from firecron.api import serve_request

# --- dispatcher entry point --------------------------------------------------------


@functions_framework.http
def dispatch(request: flask.Request) -> flask.Response:
    """Cloud Scheduler's target: verify the caller, run one tick, answer its summary."""
    response: flask.Response = dispatch_endpoint(request)
    return response


# --- admin entry point -------------------------------------------------------------


@functions_framework.http
def admin(request: flask.Request) -> flask.Response:
    """The admin API (``/api/v1``) and the web console (``/``), for the members in
    ``FIRECRON_ADMIN_MEMBERS`` (their Google ID tokens are verified)."""
    return serve_request(request)


# --- example workers ---------------------------------------------------------------


@firecron.worker
def hello(ctx: firecron.RunContext) -> dict[str, str]:
    """Greets ``params["name"]`` (default ``world``)."""
    name = ctx.params.get("name", "world")
    return {"greeting": "hello " + str(name)}


@firecron.worker
def sleep(ctx: firecron.RunContext) -> dict[str, float | bool]:
    """Sleeps ``params["seconds"]`` (default 1), stopping early when the run is cancelled.

    The SDK checks in from its own thread (and renews the run's lease), so a long
    sleep needs no ``ctx.heartbeat()``; it only has to look at ``ctx.cancelled`` now
    and then.
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


@firecron.worker
def tail(ctx: firecron.RunContext) -> dict[str, object]:
    """Follows a (simulated) stream: exactly one instance at a time, under a continuous
    schedule (``schedules.yaml``: ``tail-stream``).

    The stream's offset lives in the state key ``params["offset_key"]`` (default
    ``tail/{schedule_id}/offset``): each generation reads it, consumes batches while
    ``ctx.keep_going()``, and records progress after each batch with a *fenced* write.
    If this instance was frozen long enough to be declared lost and its successor took
    over, the write is refused (:class:`firecron.Fenced`) and it stops, so the offset
    never goes backwards and no batch is recorded twice. ``ctx.heartbeat()`` after each
    batch also tells it at once when a pause asked it to stop.

    Params: ``batch`` (records per read, default 10), ``poll_seconds`` (the wait between
    reads, default 1).
    """
    key = str(ctx.params.get("offset_key") or f"tail/{ctx.schedule_id}/offset")
    batch = _positive_int(ctx.params.get("batch"), 10)
    poll = _positive_float(ctx.params.get("poll_seconds"), 1.0)
    stored = ctx.state.get(key)
    start = stored.get("offset", 0) if isinstance(stored, dict) else 0
    offset = start if isinstance(start, int) else 0
    batches, fenced = 0, False
    while ctx.keep_going():
        records = _stream_read(offset, batch)
        # Process the records here (write them to a sink, with ctx.fence_headers() on
        # the request, so that the sink too can refuse a stale generation).
        try:
            ctx.state.set(
                key,
                {"offset": offset + len(records), "generation": ctx.generation},
                fence=True,
            )
        except firecron.Fenced:
            fenced = True  # a newer generation owns the stream: leave it alone
            break
        offset += len(records)
        batches += 1
        ctx.heartbeat()
        _nap_until_next_read(ctx, poll)
    return {
        "generation": ctx.generation,
        "from": start,
        "to": offset,
        "batches": batches,
        "fenced": fenced,
    }


def _stream_read(offset: int, count: int) -> list[dict[str, int]]:
    """The simulated stream: record ``n`` is ``{"seq": n, "value": n * n}``."""
    return [{"seq": n, "value": n * n} for n in range(offset, offset + count)]


def _nap_until_next_read(ctx: firecron.RunContext, seconds: float) -> None:
    """Wait ``seconds``, in short steps that stop as soon as the instance should return."""
    deadline = time.monotonic() + seconds
    while ctx.keep_going() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.05, left))


def _positive_int(value: object, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return default
    return value


def _positive_float(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return float(value)
