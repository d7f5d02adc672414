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
- One-way: a POST counts as sent once written, acknowledged or not within
  ``FIRECRON_ACK_TIMEOUT`` (the callee answers only when its tick ends).
- The URL called is ``FIRECRON_DISPATCH_AUDIENCE`` (dispatch's own ``run.app`` URL, as
  deployed), else the request's own URL without its query (local runs only: without an
  audience nothing is authenticated, and a deployed dispatch refuses to run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from firecron.core.lifecycle import SendOutcome
from firecron.core.shards import Shard
from firecron.dispatch import run_tick
from firecron.errors import FirecronError, InvalidInputError, SignatureError, UserError
from firecron.settings import Settings
from firecron.store import open_store
from firecron.transport import Dispatch, GoogleIdTokens, Sender, SendResult
from firecron.transport.sender import user_agent

__all__ = ["dispatch_endpoint"]

log = logging.getLogger("firecron.dispatch")
_lock = threading.Lock()
_settings: Settings | None = None


def _load_settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


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


async def _call_self(settings: Settings, url: str, query: str) -> SendResult:
    """One one-way POST of ``url?query``, with an ID token for dispatch's audience when set."""
    headers = {"content-type": "application/json", "user-agent": user_agent()}
    if settings.dispatch_audience:
        token = await GoogleIdTokens().token(settings.dispatch_audience)
        headers["authorization"] = f"Bearer {token}"
    sender = Sender(
        concurrency=1,
        max_open=1,
        ack_timeout=settings.ack_timeout.total_seconds(),
        allow_private_targets=settings.allow_private_targets,
    )
    try:
        return await sender.send(
            Dispatch(url=f"{url}?{query}", body=b"{}", headers=headers, key=f"dispatch?{query}")
        )
    finally:
        await sender.aclose()


async def _fan_out(settings: Settings, url: str) -> tuple[dict[str, Any], bool]:
    """POST the N shard ticks at once; the answer, and whether every one was sent."""
    results = await asyncio.gather(
        *(_call_self(settings, url, f"shard={i}") for i in range(settings.shards))
    )
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
            result = await _call_self(settings, url, query)
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
    log.info(
        "dispatch: %s",
        json.dumps(
            {k: summary[k] for k in ("due", "claimed", "fired", "watched", "shard", "continuation")}
        ),
    )
    return _response(summary, 200)
