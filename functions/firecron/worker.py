"""The worker SDK: ``@firecron.worker`` turns ``fn(ctx) -> JSON`` into a Cloud Function.

The decorated function becomes a functions-framework HTTP function
``(flask.Request) -> flask.Response`` that executes each run attempt exactly once.
Per request (see docs/design.md, "Firing: one-way POST" and "Run states"):

1. Only ``POST`` is accepted (405 otherwise).
2. When ``FIRECRON_SIGNING_SECRET`` is set, the Standard Webhooks signature and its
   timestamp are verified; a bad one gets 401 ``{"error": ...}`` and nothing else
   happens. With no secret, requests are accepted unsigned and one warning per process
   says so (``firecron dev`` always sets one); step 4 still holds them to the stored run.
3. The body ``{"run_id", "schedule_id", "scheduled_for", "attempt", "trigger",
   "params"}`` is validated (400 when malformed; 400 when a signed ``webhook-id`` is
   not ``{run_id}/{attempt}``).
4. The run is read: unknown -> 404. The body must agree with the stored run: the same
   ``schedule_id``, ``scheduled_for``, ``params`` and the ``trigger`` its attempt was
   sent with, and an ``attempt`` the run has reached. A body that disagrees is refused
   with 409 ``{"error": ...}``: nothing runs and the run is not written. (Signed or
   not, so a forged or altered body can never choose what executes.)
5. A delivery of an earlier attempt, or of a run that is no longer
   ``pending``/``dispatched``, is acknowledged with 200
   ``{"status": "duplicate", "state": ...}`` and not executed.
6. The run is started by compare-and-set on the version just read
   (:func:`firecron.core.lifecycle.start`); losing that race is also a duplicate. The
   function's :class:`RunContext` is built from the stored run, never from the body.
7. The answer is ``202`` with an ``application/x-ndjson`` body streamed at once: the
   line ``{"run_id", "state": "running"}`` reaches the dispatcher immediately, then the
   function runs inside the same request (a serverless instance keeps its CPU while a
   request is open), the end is recorded, and only then the last line
   ``{"run_id", "state": <final>, "recorded": <bool>}`` is written. Recording comes
   first, so a dispatcher that has already disconnected changes nothing.
8. While the function runs, a daemon thread sends a heartbeat every
   ``heartbeat_interval``. Its reply sets :attr:`RunContext.cancelled` when the
   watchdog asked the run to stop (``cancel_requested``) or when the run is no longer
   this attempt's (lost and retried); such a stale attempt can no longer record
   anything. After a timeout the watchdog waits for the attempt to record its end
   (``timed_out``) before it sends the retry, so attempts do not overlap.
9. The end (:func:`firecron.core.lifecycle.finish`): after a timeout's cancel
   request, ``timed_out`` whatever the function did; otherwise a JSON return value of
   at most :data:`MAX_OUTPUT_BYTES` encoded -> ``succeeded``. An exception ->
   ``lifecycle.attempt_failed(..., failed, ...)``, which
   retries (``retry_wait``) or fails per the run's retry snapshot. An output that is
   not JSON or too large fails the run without a retry: running the function again
   would repeat its side effects only to produce the same output.

Every write is a transition from :mod:`firecron.core.lifecycle`, applied with the
store's compare-and-set, and announced to the :data:`on_change` hooks.

Per process, lazily on the first request: ``Settings.from_env()`` is read once, the
store is opened once, and one background thread runs the asyncio event loop that
every store call is submitted to (the store is async; requests are threads). A
forked process (gunicorn forks after importing the source) starts its own.

Status codes, for the dispatcher: 202 started; 200 duplicate (acknowledged, not
executed); 400/401/404/405/409/413 permanent; 500/503 (settings or store failure)
retryable. Malformed input of any kind (headers, a body over :data:`MAX_BODY_BYTES`,
invalid UTF-8 or JSON, wrong types, out-of-range numbers) is a 4xx with a one-line
``{"error": ...}`` that never quotes a secret, and nothing is read from or written to
the store; a 5xx only ever means an operational failure worth retrying.

Nothing here does I/O at import time, and flask / functions-framework are imported
only when a worker is declared or called, so ``import firecron`` stays light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from firecron import outbox
from firecron.core import lifecycle
from firecron.core.lifecycle import Change, RunTimeouts
from firecron.core.models import JsonValue
from firecron.core.runs import Run, RunState, RunTrigger
from firecron.errors import FirecronError, SignatureError, StoreError
from firecron.outbox import Deliverer

if TYPE_CHECKING:
    import flask

    from firecron.settings import Settings
    from firecron.store.base import Store

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "MAX_BODY_BYTES",
    "MAX_OUTPUT_BYTES",
    "ChangeHook",
    "RunContext",
    "WorkerFunction",
    "on_change",
    "worker",
]

DEFAULT_HEARTBEAT_INTERVAL: Final = timedelta(seconds=15)
"""How often a running attempt heartbeats unless the decorator says otherwise.

Well inside ``RunTimeouts.heartbeat_timeout`` (90 s), so a few lost heartbeats in a row
do not make the watchdog declare a healthy run lost.
"""

MAX_OUTPUT_BYTES: Final = 64 * 1024
"""Largest return value, as compact UTF-8 JSON, that is stored as the run's output."""

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""Largest request body read; a larger one is refused with 413 before it is read.

Four times what a Firestore document (the run, params included) can hold.
"""

_MAX_ERROR_CHARS: Final = 1000
_MAX_ID_CHARS: Final = 1500
_MAX_ATTEMPT: Final = 1_000_000
_STORE_TIMEOUT_S: Final = 60.0
# The final write is retried a little: losing it costs a whole attempt (the watchdog
# would declare the run lost after heartbeat_timeout and run it again).
_END_WRITE_TRIES: Final = 3
_CAS_TRIES: Final = 8
"""Refresh-and-retry rounds of one transition against concurrent watchdog writes."""
_END_WRITE_BACKOFF_S: Final = 0.5
_CLOCK_REFRESH_S: Final = 600.0
"""Seconds between measurements of the local clock's offset to the store's."""
_CLOCK_RETRY_S: Final = 30.0
"""Seconds before a failed measurement is tried again."""
_TIMEOUTS: Final = RunTimeouts()
"""Defaults, for checking a heartbeat interval when a worker is declared (before settings)."""
"""The worker only uses ``heartbeat_timeout``, which the dispatcher's watchdog shares."""

_log = logging.getLogger("firecron.worker")

_T = TypeVar("_T")

ChangeHook = Callable[[Run, Change, Run], None]
"""``hook(run_before, change, run_after)``: see :data:`on_change`."""

on_change: list[ChangeHook] = []
"""Hooks called after every change the SDK applies to a run (start, heartbeats, end).

Each hook gets the run as it was, the applied :class:`~firecron.core.lifecycle.Change`
(``change.event`` names it, e.g. ``run.started``, ``run.succeeded``; heartbeats have
none) and the run as written. This is the seam for run events (pipelines, chaining).
Hooks run synchronously in the thread that made the write (the request thread or the
heartbeat thread) while that run's writes are serialised, in write order: they must be
quick and must not call back into the SDK for the same run. An exception in a hook is
logged and ignored; it never changes the run.
"""


WorkerFunction = Callable[["RunContext"], object]
"""What ``@worker`` decorates: ``fn(ctx)`` returning a JSON-serialisable value."""


class RunContext:
    """What a worker function is told about the run attempt it executes.

    Built by the SDK for each execution. It can also be built directly, for unit tests
    of a worker function: then :meth:`heartbeat` does nothing and :attr:`cancelled`
    stays False.
    """

    __slots__ = (
        "_execution",
        "attempt",
        "params",
        "run_id",
        "schedule_id",
        "scheduled_for",
        "trigger",
    )

    def __init__(
        self,
        *,
        run_id: str,
        schedule_id: str,
        scheduled_for: datetime,
        attempt: int = 1,
        params: Mapping[str, JsonValue] | None = None,
        trigger: RunTrigger = RunTrigger.schedule,
    ) -> None:
        self.run_id = run_id
        """The run's id (deterministic for scheduled runs)."""
        self.schedule_id = schedule_id
        """The schedule the run belongs to."""
        self.scheduled_for = scheduled_for
        """Nominal occurrence time, timezone-aware (jitter not included)."""
        self.attempt = attempt
        """This attempt's number, 1 for the first try."""
        self.params: dict[str, JsonValue] = dict(params or {})
        """The schedule's (or the manual trigger's) parameters."""
        self.trigger = trigger
        """Why this attempt was sent (``retry`` for every attempt after the first)."""
        self._execution: _Execution | None = None

    def heartbeat(self) -> None:
        """Send a heartbeat now, in this thread (the SDK also sends them periodically).

        Useful before and after a long blocking call. Never raises: a failed heartbeat
        is logged, and the periodic thread keeps trying. Updates :attr:`cancelled`.
        """
        if self._execution is not None:
            self._execution.beat()

    @property
    def cancelled(self) -> bool:
        """True once the run should stop: the watchdog asked (``cancel_requested``,
        seen in a heartbeat reply) or the run no longer belongs to this attempt.

        Long workers poll it and return early. What they return is still recorded if
        the run is still theirs; after a timeout the attempt ends ``timed_out`` (and
        may be retried) whatever they return.
        """
        return self._execution is not None and self._execution.cancelled.is_set()

    def __repr__(self) -> str:
        # params are left out on purpose: they may hold secrets and reprs end up in logs.
        return (
            f"RunContext(run_id={self.run_id!r}, schedule_id={self.schedule_id!r}, "
            f"scheduled_for={self.scheduled_for.isoformat()!r}, attempt={self.attempt}, "
            f"trigger={self.trigger.value!r})"
        )


@overload
def worker(fn: WorkerFunction, /) -> Callable[[flask.Request], flask.Response]: ...


@overload
def worker(
    *, heartbeat_interval: timedelta | None = None
) -> Callable[[WorkerFunction], Callable[[flask.Request], flask.Response]]: ...


def worker(
    fn: WorkerFunction | None = None, /, *, heartbeat_interval: timedelta | None = None
) -> (
    Callable[[flask.Request], flask.Response]
    | Callable[[WorkerFunction], Callable[[flask.Request], flask.Response]]
):
    """Make ``fn(ctx: RunContext) -> JSON`` a functions-framework HTTP function.

    Use it bare (``@firecron.worker``) or with options
    (``@firecron.worker(heartbeat_interval=timedelta(seconds=5))``). The result keeps
    ``fn``'s name, which is the ``--target`` (the schedule's ``target.function``), and
    is registered with ``functions_framework.http``. See the module docstring for what
    each request does. ``heartbeat_interval`` must be positive and at most a third of
    the watchdog's ``heartbeat_timeout`` (30 s); it defaults to
    :data:`DEFAULT_HEARTBEAT_INTERVAL`. Raises ``ValueError`` otherwise, and
    :class:`~firecron.errors.InvalidInputError` (one line naming the variable, never the
    secret) when ``FIRECRON_SIGNING_SECRET`` holds anything but ``whsec_`` secrets.
    """
    # A bad FIRECRON_SIGNING_SECRET fails here, when the source is loaded, so a deploy
    # or `firecron dev` refuses to start with one line instead of answering every
    # delivery with an error. Reading the environment is not I/O; the rest of the
    # settings are still read on the first request.
    from firecron.transport.signing import parse_signing_secrets

    parse_signing_secrets(os.environ.get("FIRECRON_SIGNING_SECRET", ""))
    interval = DEFAULT_HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval
    # At most a third of the timeout, so two heartbeats in a row may be lost or late
    # before the watchdog declares a healthy run lost.
    longest = _TIMEOUTS.heartbeat_timeout / 3
    if not timedelta(0) < interval <= longest:
        raise ValueError(
            f"heartbeat_interval must be positive and at most {longest}, got {interval}"
        )

    def decorate(func: WorkerFunction) -> Callable[[flask.Request], flask.Response]:
        import functions_framework

        @functools.wraps(func)
        def handler(request: flask.Request) -> flask.Response:
            return _handle(func, interval, request)

        # `firecron dev` finds the workers of a module by this mark.
        handler.__firecron_worker__ = True  # type: ignore[attr-defined]
        # http() registers the name as an HTTP function and returns a transparent wrapper.
        return cast("Callable[[flask.Request], flask.Response]", functions_framework.http(handler))

    return decorate if fn is None else decorate(fn)


# --- per-process runtime ---------------------------------------------------------


class _Runtime:
    """Settings, the store and the event loop that runs every store call, per process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        notifier: Deliverer,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.loop = loop
        self.pid = pid
        self.notifier = notifier
        self.timeouts = RunTimeouts.for_tick(settings.tick_budget, settings.ack_timeout)
        """The same deadlines the dispatcher's watchdog enforces."""
        self.clock = clock or _now
        """The local clock (injectable: tests skew it); :meth:`now` corrects it."""
        self._offset = timedelta(0)
        self._synced_at: float | None = None
        self._sync_lock = threading.Lock()

    def now(self) -> datetime:
        """The local clock corrected to the store's (docs/design.md, "Semantics > Clocks").

        Starts, heartbeats and ends are judged by the dispatcher at the store's time, so
        they are stamped at it too. The offset is measured by one :meth:`Store.clock`
        call when first needed and every :data:`_CLOCK_REFRESH_S` seconds after (Firestore: one
        read); a failed measurement keeps the last offset and is retried after
        :data:`_CLOCK_RETRY_S` seconds.
        """
        synced = self._synced_at
        if synced is None or time.monotonic() - synced >= _CLOCK_REFRESH_S:
            self._sync()
        return self.clock() + self._offset

    def _sync(self) -> None:
        if not self._sync_lock.acquire(blocking=self._synced_at is None):
            return  # another thread is measuring; the current offset is good meanwhile
        try:
            synced = self._synced_at
            if synced is not None and time.monotonic() - synced < _CLOCK_REFRESH_S:
                return
            from firecron.store.base import clock_offset

            try:
                _, self._offset = self.call(clock_offset(self.store, self.clock))
            except Exception as exc:
                _log.warning(
                    "firecron worker: reading the store's clock failed: %s", _describe(exc)
                )
                self._synced_at = time.monotonic() - _CLOCK_REFRESH_S + _CLOCK_RETRY_S
                return
            self._synced_at = time.monotonic()
        finally:
            self._sync_lock.release()

    @classmethod
    def start(cls, clock: Callable[[], datetime] | None = None) -> _Runtime:
        """Read the settings, start the loop thread, open the store on it and measure
        the offset of ``clock`` (default: the system clock) to the store's."""
        from firecron.settings import Settings
        from firecron.store import open_store

        settings = Settings.from_env()
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()

        threading.Thread(target=serve, name="firecron-worker-loop", daemon=True).start()

        async def open_() -> tuple[Store, Deliverer]:
            # Opened on the loop that will use them: async clients bind to their loop.
            from firecron.notify import Notifier

            return open_store(settings.store_url, settings.namespace), Notifier(settings)

        try:
            store, notifier = asyncio.run_coroutine_threadsafe(open_(), loop).result(
                _STORE_TIMEOUT_S
            )
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        if not settings.signing_secrets:
            _log.warning(
                "firecron worker: FIRECRON_SIGNING_SECRET is not set, so requests are "
                "accepted unsigned; set it everywhere (firecron dev sets its own)"
            )
        runtime = cls(settings, store, loop, os.getpid(), notifier, clock)
        runtime.now()  # measures the clock offset now rather than in the first request
        return runtime

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a store coroutine on the loop thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(_STORE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreError(f"store call timed out after {_STORE_TIMEOUT_S:.0f}s") from None


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    """The process's runtime, started on first use (again in a forked child)."""
    global _runtime
    current = _runtime
    if current is not None and current.pid == os.getpid():
        return current
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            # Threads do not survive a fork: a child inherits a dead loop thread.
            _runtime = _Runtime.start()
        return _runtime


def _now() -> datetime:
    return datetime.now(UTC)


# --- one request -----------------------------------------------------------------


class _Delivery(BaseModel):
    """The dispatch body (see ``transport.sender.dispatch_body``).

    Bounded so that nothing read from it can overflow later: ids fit a store key (a
    Firestore document id is at most 1,500 bytes) and ``attempt`` is far above any
    retry policy (at most 100 attempts).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str = Field(min_length=1, max_length=_MAX_ID_CHARS)
    schedule_id: str = Field(min_length=1, max_length=_MAX_ID_CHARS)
    scheduled_for: AwareDatetime
    attempt: int = Field(ge=1, le=_MAX_ATTEMPT, strict=True)
    trigger: RunTrigger
    params: dict[str, JsonValue]


def _json(payload: Mapping[str, Any], status: int) -> flask.Response:
    from flask import Response

    return Response(
        json.dumps(payload, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


def _one_line(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(exc: BaseException) -> str:
    """``"<Type>: <message>"`` on one line, at most 1000 characters."""
    message = str(exc)
    return _one_line(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _read_body(request: flask.Request) -> bytes | None:
    """The whole body, or None when it is over :data:`MAX_BODY_BYTES` (not read then)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    # A chunked body announces no length: read at most one byte past the limit.
    while chunk := request.stream.read(min(64 * 1024, MAX_BODY_BYTES + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
    return b"".join(chunks)


def _handle(fn: WorkerFunction, interval: timedelta, request: flask.Request) -> flask.Response:
    if request.method != "POST":
        response = _json({"error": f"method {request.method} not allowed; use POST"}, 405)
        response.headers["allow"] = "POST"
        return response
    try:
        runtime = _get_runtime()
    except FirecronError as exc:
        # A settings or store URL error: 500 so the dispatcher retries once it is fixed.
        _log.error("firecron worker: cannot start: %s", _one_line(str(exc)))
        return _json({"error": _one_line(str(exc))}, 500)
    body = _read_body(request)
    if body is None:
        return _json(
            {"error": f"request body larger than {MAX_BODY_BYTES:,} bytes; nothing was executed"},
            413,
        )
    secrets = runtime.settings.signing_secrets
    if secrets:
        from firecron.transport.signing import verify_webhook

        try:
            webhook_id: str | None = verify_webhook(
                dict(request.headers.items()), body, secrets, runtime.now()
            )
        except SignatureError as exc:
            return _json({"error": _one_line(str(exc))}, 401)
    else:
        webhook_id = None
    try:
        delivery = _Delivery.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return _json({"error": _one_line(f"invalid body: {detail}", 200)}, 400)
    if webhook_id is not None and webhook_id != f"{delivery.run_id}/{delivery.attempt}":
        return _json({"error": "webhook-id does not match the body's run_id/attempt"}, 400)
    try:
        return _start(runtime, fn, interval, delivery)
    except StoreError as exc:
        _log.error("firecron worker: store error on run %s: %s", delivery.run_id, _describe(exc))
        return _json({"error": _one_line(f"store unavailable: {exc}")}, 503)


def _duplicate(run: Run) -> flask.Response:
    return _json(
        {"status": "duplicate", "run_id": run.id, "attempt": run.attempt, "state": run.state.value},
        200,
    )


def _sent_trigger(run: Run, attempt: int) -> RunTrigger:
    """The ``trigger`` a dispatch of ``attempt`` of ``run`` carries (see ``dispatch_body``)."""
    return RunTrigger.retry if attempt > 1 else run.trigger


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _disagreement(run: Run, delivery: _Delivery) -> str | None:
    """The first body field that disagrees with the stored run, or None when all agree.

    Params are compared as canonical JSON, so ``1`` and ``true`` differ (Python's
    ``==`` would not tell them apart), while key order does not matter.
    """
    if delivery.schedule_id != run.schedule_id:
        return "schedule_id"
    if delivery.scheduled_for != run.scheduled_for:
        return "scheduled_for"
    # An earlier attempt is a late or repeated delivery; a later one was never sent.
    if delivery.attempt > run.attempt:
        return "attempt"
    if delivery.trigger is not _sent_trigger(run, delivery.attempt):
        return "trigger"
    if _canonical(delivery.params) != _canonical(run.params):
        return "params"
    return None


def _start(
    runtime: _Runtime, fn: WorkerFunction, interval: timedelta, delivery: _Delivery
) -> flask.Response:
    from flask import Response

    store = runtime.store
    run = runtime.call(store.get_run(delivery.run_id))
    if run is None:
        return _json({"error": f"unknown run {delivery.run_id!r}"}, 404)
    field = _disagreement(run, delivery)
    if field is not None:
        _log.warning(
            "firecron worker: refused a delivery of run %s: its %s differs from the stored run",
            run.id,
            field,
        )
        return _json(
            {
                "error": f"the body's {field} does not match the stored run {run.id!r}; nothing was executed",
                "field": field,
            },
            409,
        )
    if run.attempt != delivery.attempt or run.state not in (RunState.pending, RunState.dispatched):
        return _duplicate(run)
    change = lifecycle.start(run, runtime.now(), runtime.timeouts)
    # Compare-and-set on the version just read: of two deliveries of this attempt,
    # exactly one starts it. `start` expects pending|dispatched, checked above.
    started = runtime.call(store.update_run(run.id, change.expect, change.changes, current=run))
    if started is None:
        again = runtime.call(store.get_run(run.id))
        return _duplicate(again or run)
    # Everything the function is told comes from the stored record: the body only
    # names the run, and was checked against it above.
    ctx = RunContext(
        run_id=started.id,
        schedule_id=started.schedule_id,
        scheduled_for=started.scheduled_for,
        attempt=started.attempt,
        params=started.params,
        trigger=_sent_trigger(started, started.attempt),
    )
    execution = _Execution(runtime, fn, ctx, started, interval)
    # Events already in the record before this start were emitted by their writers.
    execution.known = {e.id for e in run.events}
    _notify(run, change, started)
    response = Response(execution.stream(), status=202, mimetype="application/x-ndjson")
    response.headers["cache-control"] = "no-store"
    # If the server closes the response before the stream ran (the client went away
    # while the first line was written), the attempt still executes: it is `running`.
    response.call_on_close(execution.run_once)
    return response


def _notify(before: Run, change: Change, after: Run) -> None:
    for hook in list(on_change):
        try:
            hook(before, change, after)
        except Exception:
            _log.exception("firecron worker: on_change hook %r failed on run %s", hook, after.id)


def _line(payload: Mapping[str, Any]) -> bytes:
    return (json.dumps(payload, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class _Outcome:
    """How the function ended: an output to store, or an error."""

    output: JsonValue = None
    error: str | None = None
    retry: bool = True


def _encode_output(value: object) -> _Outcome:
    """Check the return value: JSON, at most ``MAX_OUTPUT_BYTES``; a failure otherwise."""
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return _Outcome(error=_describe_output(exc), retry=False)
    size = len(encoded.encode())
    if size > MAX_OUTPUT_BYTES:
        return _Outcome(
            error=(
                f"output too large: {size:,} bytes of JSON, the limit is "
                f"{MAX_OUTPUT_BYTES:,} (64 KiB); store large results elsewhere and return a reference"
            ),
            retry=False,
        )
    # Round-trip so that only plain JSON types (no tuples, no int keys) reach the store.
    output: JsonValue = json.loads(encoded)
    return _Outcome(output=output)


def _describe_output(exc: BaseException) -> str:
    return _one_line(f"output is not JSON-serialisable: {_describe(exc)}")


class _Execution:
    """One started attempt: runs the function once, heartbeats, records the end.

    ``lock`` serialises this run's store writes between the request thread and the
    heartbeat thread, and ``run`` is the record as last written by us, from which the
    next transition is computed.
    """

    def __init__(
        self,
        runtime: _Runtime,
        fn: WorkerFunction,
        ctx: RunContext,
        run: Run,
        interval: timedelta,
    ) -> None:
        self.runtime = runtime
        self.fn = fn
        self.ctx = ctx
        self.run = run
        self.interval = interval
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.ended = threading.Event()
        """Set when the function has returned: no heartbeat is sent after it."""
        self.orphaned = False
        self.known: set[str] = set()
        """Ids of this run's events already logged and offered to their sinks."""
        """True once a write found the run no longer this attempt's (or not running)."""
        self.final: dict[str, Any] | None = None
        self._ran = False
        self._ran_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        ctx._execution = self
        if run.cancel_requested:
            self.cancelled.set()

    # heartbeats

    def _start_heartbeats(self) -> None:
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"firecron-heartbeat-{self.run.id}", daemon=True
        )
        self._thread.start()

    def _beat_loop(self) -> None:
        while not self.ended.wait(self.interval.total_seconds()):
            if self.orphaned:
                return
            self.beat()

    def beat(self) -> None:
        """One heartbeat; never raises (a failure is logged and the next one retries)."""
        with self.lock:
            if self.ended.is_set() or self.orphaned:
                return
            now = self.runtime.now()
            try:
                before, change, after = self._transition(
                    lambda r: lifecycle.heartbeat(r, now, self.runtime.timeouts)
                )
            except Exception as exc:
                # A store outage must not end the heartbeats: the next one retries.
                _log.warning(
                    "firecron worker: heartbeat of run %s failed: %s", self.run.id, _describe(exc)
                )
                return
            if after is None:
                # Timed out, lost or retried by the watchdog: the work is no longer ours.
                self.orphaned = True
                self.cancelled.set()
                _log.warning(
                    "firecron worker: run %s attempt %d is no longer running here; cancelling",
                    before.id,
                    before.attempt,
                )
                return
            self.run = after
            if after.cancel_requested:
                self.cancelled.set()
            _notify(before, change, after)

    # execution

    def stream(self) -> Iterator[bytes]:
        """The response body: the started line at once, the final line after the end."""
        yield _line({"run_id": self.run.id, "state": RunState.running.value})
        final = self.run_once()
        yield _line(final)

    def run_once(self) -> dict[str, Any]:
        """Run the function and record its end, the first time only; the final line."""
        with self._ran_lock:
            if self._ran:
                return self.final or {"run_id": self.run.id, "state": None}
            self._ran = True
        # The start's event goes out after the 202 (a slow sink must not delay the ack)
        # and before the work (so it precedes the end's).
        self._emit()
        # Heartbeats start with the work, not with the start write: if the stream were
        # never run, the watchdog must see this attempt go silent and retry it.
        self._start_heartbeats()
        try:
            outcome = self._call()
        finally:
            # Stop heartbeats before the end is written; a beat in flight finishes first
            # (the end write below takes the same lock).
            self.ended.set()
        self.final = self._record(outcome)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._emit()
        return self.final

    def _emit(self) -> None:
        """Log this run's new events and try their deliveries once (bounded; never raises)."""
        try:
            self.run = self.runtime.call(
                outbox.emit(
                    self.runtime.store,
                    self.runtime.notifier,
                    self.run,
                    self.known,
                    self.runtime.now(),
                )
            )
        except Exception as exc:
            # Recorded already: the watchdog retries what was not delivered.
            _log.warning("firecron worker: events of run %s: %s", self.run.id, _describe(exc))

    def _call(self) -> _Outcome:
        try:
            value = self.fn(self.ctx)
        except Exception as exc:
            _log.error(
                "firecron worker: run %s attempt %d raised",
                self.ctx.run_id,
                self.ctx.attempt,
                exc_info=exc,
            )
            return _Outcome(error=_describe(exc))
        except BaseException as exc:
            # SystemExit and friends: record the failure, then let them do their job.
            _log.error(
                "firecron worker: run %s attempt %d exited",
                self.ctx.run_id,
                self.ctx.attempt,
                exc_info=exc,
            )
            self.ended.set()
            self._record(_Outcome(error=_describe(exc)))
            raise
        return _encode_output(value)

    def _record(self, outcome: _Outcome) -> dict[str, Any]:
        """Write the end (a lifecycle transition) and describe it as the final line."""
        with self.lock:
            now = self.runtime.now()

            def end(run: Run) -> Change:
                # After a timeout this records `timed_out`: the acknowledgement of the
                # cancel request that the watchdog's retry waits for.
                return lifecycle.finish(
                    run,
                    now,
                    self.runtime.timeouts,
                    output=outcome.output,
                    error=outcome.error,
                    retry=outcome.retry,
                )

            before, change, after = self._write_end(end)
            current: Run | None = after
            if after is None:
                try:
                    current = self.runtime.call(self.runtime.store.get_run(before.id))
                except Exception as exc:
                    _log.warning(
                        "firecron worker: cannot re-read run %s: %s", before.id, _describe(exc)
                    )
                # A retried write whose first try committed after all reads back as ours.
                if (
                    current is not None
                    and current.attempt == before.attempt
                    and current.state is change.new_state
                    and current.updated_at == now
                ):
                    after = current
            if after is not None:
                self.run = after
                _notify(before, change, after)
                return {"run_id": before.id, "state": after.state.value, "recorded": True}
        state = current.state.value if current is not None else None
        _log.warning(
            "firecron worker: the end of run %s attempt %d was not recorded (the run is %s)",
            before.id,
            before.attempt,
            state or "unreadable",
        )
        return {"run_id": before.id, "state": state, "recorded": False}

    def _transition(self, make: Callable[[Run], Change]) -> tuple[Run, Change, Run | None]:
        """Apply ``make(run)`` by version compare-and-set, refreshing on a concurrent write.

        The watchdog may write the run meanwhile (an SLA breach, event deliveries): then
        the run is re-read and, if it is still this attempt in an expected state, the
        change is recomputed from the fresh record, so nothing it wrote is overwritten.
        A run that has moved on to another attempt is never written: every write is a
        compare-and-set on a version of this attempt's record, so a stale attempt (one
        the watchdog declared lost and retried while its instance was frozen) can
        neither extend the new attempt's deadline nor record its output, error or state.
        Returns ``(run the change was computed from, change, recorded run or None)``.
        """
        run = self.run
        change = make(run)
        for _ in range(_CAS_TRIES):
            after = self.runtime.call(
                self.runtime.store.update_run(run.id, change.expect, change.changes, current=run)
            )
            if after is not None:
                return run, change, after
            fresh = self.runtime.call(self.runtime.store.get_run(run.id))
            if fresh is None or fresh.attempt != run.attempt or fresh.state not in change.expect:
                return run, change, None
            run = fresh
            change = make(run)
        return run, change, None

    def _write_end(self, make: Callable[[Run], Change]) -> tuple[Run, Change, Run | None]:
        before, change = self.run, make(self.run)
        for attempt in range(1, _END_WRITE_TRIES + 1):
            try:
                return self._transition(make)
            except Exception as exc:
                _log.warning(
                    "firecron worker: recording the end of run %s failed (try %d/%d): %s",
                    before.id,
                    attempt,
                    _END_WRITE_TRIES,
                    _describe(exc),
                )
                if attempt < _END_WRITE_TRIES:
                    time.sleep(_END_WRITE_BACKOFF_S * attempt)
        return before, change, None
