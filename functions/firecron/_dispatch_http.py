"""The ``dispatch`` HTTP endpoint behind ``functions/main.py``: authenticate, tick, answer JSON.

Settings are read once per process. Each request runs one tick on its own event loop
and answers ``200`` with the tick summary, or ``500`` with one error line when the
tick could not run at all (store unreachable, bad configuration), so Cloud
Scheduler records the failure and retries. Caller authentication is checked by
:func:`firecron.oidc.check_dispatch_caller` before anything else.

Scale-out (docs/design.md, "Shards"), all by one-way POSTs from dispatch to itself,
each with an OIDC token for dispatch's own audience, the scheduler's kind of call:

- **Fan-out.** With ``FIRECRON_SHARDS=N`` above 1, the root call (no ``shard``
  parameter, Cloud Scheduler's) ticks nothing itself: it POSTs N shard ticks,
  ``?shard=0`` to ``?shard=N-1``, and Cloud Run spreads them over instances. It answers
  ``200`` with what each POST got, or ``500`` when one could not be sent (the
  scheduler's retry re-sends them all, which is harmless: claims are compare-and-sets).
- **Continuation.** A tick that ran out of ``FIRECRON_TICK_BUDGET`` with work still due
  POSTs ``?continuation=K+1`` (with its ``shard``, if any) for the next page, unless it
  was already continuation ``FIRECRON_MAX_CONTINUATIONS``; its summary says
  ``continuations: 1``. A continuation that finds nothing due, or finishes within its
  budget, ends the chain.
- **Through Cloud Tasks when a queue is configured** (``FIRECRON_TASKS_QUEUE``, always
  so as deployed): each self-call is an HTTP task on that queue, with an ``oidc_token``
  of ``FIRECRON_TASKS_SERVICE_ACCOUNT`` for dispatch's audience. Why: dispatch's ingress
  is internal-only, and a POST from dispatch to its own ``run.app`` URL leaves through
  the internet (no VPC egress), so Cloud Run would refuse it; a task sent by Cloud Tasks
  counts as internal. Each task has a new name: a second root call in the same minute
  (a retry, a manual run) must tick again, and repeated ticks are harmless (claims are
  compare-and-sets), so a name that refused repeats would only delay due work.
- Otherwise (local, functions-framework): a direct one-way POST, which counts as sent
  once written, acknowledged or not within ``FIRECRON_ACK_TIMEOUT`` (the callee answers
  only when its tick ends).
- The URL called is ``FIRECRON_DISPATCH_AUDIENCE`` (dispatch's own ``run.app`` URL, as
  deployed), else the request's own URL without its query (local runs only: without an
  audience nothing is authenticated, and a deployed dispatch refuses to run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from datetime import timedelta
from typing import Any

from firecron.core.lifecycle import SendOutcome
from firecron.core.shards import Shard
from firecron.dispatch import run_tick
from firecron.errors import FirecronError, InvalidInputError, SignatureError, UserError
from firecron.settings import Settings
from firecron.store import open_store
from firecron.transport import Dispatch, GoogleIdTokens, Sender, SendResult
from firecron.transport.cloud_tasks import TaskQueue, dispatch_deadline
from firecron.transport.sender import user_agent

__all__ = ["dispatch_endpoint"]

log = logging.getLogger("firecron.dispatch")
_lock = threading.Lock()
_settings: Settings | None = None


def _load_settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _log_ticks()
            _settings = Settings.from_env()
        return _settings


def _log_ticks() -> None:
    """Make this logger's INFO lines (one per tick) reach stderr, which Cloud Run sends to
    Cloud Logging. Python drops INFO records when nothing configured logging (the last
    resort handler takes WARNING and above), and functions-framework configures none; an
    application that set up its own root handlers keeps them, and gets the lines there."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _response(payload: dict[str, Any], status: int) -> Any:
    import flask

    return flask.Response(json.dumps(payload), status=status, mimetype="application/json")


_SENT = frozenset({SendOutcome.acknowledged, SendOutcome.unacknowledged})


def _query_int(args: Any, name: str, lo: int, hi: int) -> int | None:
    """The integer query parameter ``name`` in ``[lo, hi]``, None when absent.

    :class:`InvalidInputError` (one line naming the parameter) otherwise.
    """
    raw = args.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name}={raw!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise InvalidInputError(f"{name}={value}: must be {lo} to {hi}")
    return value


def _tick_deadline(settings: Settings) -> timedelta:
    """How long Cloud Tasks holds a self-call task: the tick's budget and a minute for
    the store and the sends it waits on, within Cloud Tasks' bounds."""
    return dispatch_deadline(settings.tick_budget + timedelta(minutes=1))


async def _call_self(settings: Settings, url: str, queries: list[str]) -> list[SendResult]:
    """One one-way call of dispatch at ``url?query`` per query, at once, in order: Cloud
    Tasks tasks (a new name each) when a queue is configured, else direct POSTs (module
    docstring). One queue client, or one sender and one ID token, serves them all."""
    headers = {"content-type": "application/json", "user-agent": user_agent()}
    if settings.tasks_queue is None and settings.dispatch_audience:
        # A task carries an oidc_token instead; a direct POST, this ID token.
        token = await GoogleIdTokens().token(settings.dispatch_audience)
        headers["authorization"] = f"Bearer {token}"
    calls = [
        Dispatch(url=f"{url}?{q}", body=b"{}", headers=headers, key=f"dispatch-{uuid.uuid4().hex}")
        for q in queries
    ]
    if settings.tasks_queue is not None:
        queue = TaskQueue(
            settings.tasks_queue,
            service_account=settings.tasks_service_account,
            allow_private_targets=settings.allow_private_targets,
            emulator_host=settings.tasks_emulator_host,
        )
        deadline = _tick_deadline(settings)
        try:
            return await asyncio.gather(
                *(
                    queue.enqueue(c, oidc_audience=settings.dispatch_audience, deadline=deadline)
                    for c in calls
                )
            )
        finally:
            await queue.aclose()
    sender = Sender(
        concurrency=len(calls),
        max_open=len(calls),
        ack_timeout=settings.ack_timeout.total_seconds(),
        allow_private_targets=settings.allow_private_targets,
    )
    try:
        return await asyncio.gather(*(sender.send(c) for c in calls))
    finally:
        await sender.aclose()


async def _fan_out(settings: Settings, url: str) -> tuple[dict[str, Any], bool]:
    """Send the N shard ticks at once; the answer, and whether every one was sent."""
    results = await _call_self(settings, url, [f"shard={i}" for i in range(settings.shards)])
    errors = [f"shard {i}: {r.error}" for i, r in enumerate(results) if r.outcome not in _SENT]
    payload = {
        "shards": settings.shards,
        "outcomes": [r.outcome.value for r in results],
        "errors": errors,
    }
    return payload, not errors


async def _tick(
    settings: Settings, shard: Shard | None, continuation: int, url: str
) -> dict[str, Any]:
    store = open_store(settings.store_url, settings.namespace)
    try:
        summary = await run_tick(settings, store, shard=shard, continuation=continuation)
    finally:
        await store.close()
    if summary.more_due and continuation < settings.max_continuations:
        query = f"continuation={continuation + 1}"
        if shard is not None:
            query = f"shard={shard.index}&{query}"
        # Not sent (or no ID token): the next minute's tick goes on where this one stopped.
        try:
            [result] = await _call_self(settings, url, [query])
        except FirecronError as exc:
            summary.errors.append(f"continuation: {exc}")
        else:
            if result.outcome in _SENT:
                summary.continuations = 1
            else:
                summary.errors.append(f"continuation: {result.error}")
    return summary.as_dict()


def dispatch_endpoint(request: Any) -> Any:
    """Handle one Cloud Scheduler call (a ``flask.Request``); returns a ``flask.Response``."""
    try:
        settings = _load_settings()
    except UserError as exc:
        log.error("dispatch: bad configuration: %s", exc)
        return _response({"error": f"bad configuration: {exc}"}, 500)
    from firecron.oidc import check_dispatch_caller

    try:
        check_dispatch_caller(request.headers.get("authorization"), settings)
    except SignatureError as exc:
        log.warning("dispatch: refused caller: %s", exc)
        return _response({"error": str(exc)}, 401)
    except FirecronError as exc:
        log.error("dispatch: %s", exc)
        return _response({"error": str(exc)}, 500)
    try:
        index = _query_int(request.args, "shard", 0, settings.shards - 1)
        continuation = _query_int(request.args, "continuation", 1, settings.max_continuations)
    except InvalidInputError as exc:
        return _response({"error": str(exc)}, 400)
    url = settings.dispatch_audience or request.base_url
    if index is None and settings.shards > 1:
        try:
            payload, sent = asyncio.run(_fan_out(settings, url))
        except FirecronError as exc:  # no ID token, say
            log.error("dispatch: fan-out failed: %s", exc)
            return _response({"error": f"fan-out failed: {exc}"}, 500)
        log.info("dispatch: fan-out %s", json.dumps(payload))
        return _response(payload, 200 if sent else 500)
    shard = None if index is None else Shard(index, settings.shards)
    try:
        summary = asyncio.run(_tick(settings, shard, continuation or 0, url))
    except FirecronError as exc:
        log.error("dispatch: tick failed: %s", exc)
        return _response({"error": f"tick failed: {exc}"}, 500)
    line = {k: summary[k] for k in ("due", "claimed", "fired", "watched", "shard", "continuation")}
    task = request.headers.get("x-cloudtasks-taskname")
    if task:
        # Which self-call this tick was (a fan-out's names repeat within a minute).
        line["task"] = task
    log.info("dispatch: %s", json.dumps(line))
    return _response(summary, 200)
