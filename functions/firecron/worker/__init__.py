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
   first, so a dispatcher that has already disconnected changes nothing. A delivery
   from Cloud Tasks (``delivery: cloud_tasks``; its ``X-CloudTasks-TaskName`` header)
   is answered at the end instead: the function runs, the end is recorded, and only
   then ``200`` with that last line as the whole body (Cloud Tasks holds the request
   open for the work and waits for its answer; the dispatcher is not waiting at all).
8. The attempt holds a lease on its run: the watchdog may declare it lost once its
   ``heartbeat_timeout`` (5 minutes by default, or the schedule's) has passed since
   the latest renewal (``heartbeat_at``) or the start. While the function runs, a
   daemon thread checks in every ``heartbeat_interval`` (by default a fifth of the
   lease: 60 s). A check-in renews the lease (one write) only when at most two
   intervals of it are left, so a 5-minute run renews once; otherwise it reads the run
   (one read). Either sets :attr:`RunContext.cancelled` when the watchdog asked the
   run to stop (``cancel_requested``: seen within one interval) or when the run is no
   longer this attempt's (lost and retried); such a stale attempt can no longer record
   anything. Lines the function logged are written at each check-in (nothing when it
   logged nothing). After a timeout the watchdog waits for the attempt to record its
   end (``timed_out``) before it sends the retry, so attempts do not overlap.
9. The end (:func:`firecron.core.lifecycle.finish`): after a timeout's cancel
   request, ``timed_out`` whatever the function did; otherwise a JSON return value of
   at most :data:`MAX_OUTPUT_BYTES` encoded -> ``succeeded``. An exception ->
   ``lifecycle.attempt_failed(..., failed, ...)``, which
   retries (``retry_wait``) or fails per the run's retry snapshot. An output that is
   not JSON or too large fails the run without a retry: running the function again
   would repeat its side effects only to produce the same output.

Every write is a transition from :mod:`firecron.core.lifecycle`, applied with the
store's compare-and-set, and announced to the :data:`on_change` hooks. Settings, the
store and the event loop its calls run on are started once per process, on the first
request.

Status codes, for the dispatcher: 202 started (200 with the final line, through
Cloud Tasks); 200 duplicate (acknowledged, not
executed); 400/401/404/405/409/413 permanent; 500/503 (settings or store failure)
retryable. Malformed input of any kind (headers, a body over :data:`MAX_BODY_BYTES`,
invalid UTF-8 or JSON, wrong types, out-of-range numbers) is a 4xx with a one-line
``{"error": ...}`` that never quotes a secret, and nothing is read from or written to
the store; a 5xx only ever means an operational failure worth retrying.

Nothing here does I/O at import time, and flask / functions-framework are imported
only when a worker is declared or called, so ``import firecron`` stays light.

Where each part lives:

- :mod:`._registry`: the ``@worker`` decorator and the per-module registry of
  declared workers that ``firecron dev`` reads (:func:`declared_in`);
- :mod:`._http`: the HTTP edge, steps 1 to 3 and the status codes;
- :mod:`._execution`: :class:`RunContext`, the start (steps 4 to 6), the call, the
  check-ins and the end (steps 7 to 9), and the :data:`on_change` hooks;
- :mod:`._runtime`: the per-process settings, store, loop thread and store clock;
- :mod:`._logs`: the capture of each attempt's log records (``logging`` in the
  function's thread, ``ctx.log``), stored beside the run in batches (``firecron logs``).
"""

from __future__ import annotations

from firecron.worker._execution import (
    CHECK_INS_PER_LEASE,
    FENCE_HEADER,
    MAX_OUTPUT_BYTES,
    ChangeHook,
    RunContext,
    WorkerFunction,
    on_change,
)

# The `X as X` imports re-export private names that tests import from here.
from firecron.worker._execution import _Delivery as _Delivery
from firecron.worker._execution import _encode_output as _encode_output
from firecron.worker._execution import _Execution as _Execution
from firecron.worker._http import MAX_BODY_BYTES
from firecron.worker._registry import (
    DeclaredWorker,
    declared_in,
    worker,
)
from firecron.worker._runtime import _Runtime as _Runtime

__all__ = [
    "CHECK_INS_PER_LEASE",
    "FENCE_HEADER",
    "MAX_BODY_BYTES",
    "MAX_OUTPUT_BYTES",
    "ChangeHook",
    "DeclaredWorker",
    "RunContext",
    "WorkerFunction",
    "declared_in",
    "on_change",
    "worker",
]
