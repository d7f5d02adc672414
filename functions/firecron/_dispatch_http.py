"""The ``dispatch`` HTTP endpoint behind ``functions/main.py``: authenticate, tick, answer JSON.

Settings are read once per process. Each request runs one tick on its own event loop
and answers ``200`` with the tick summary, or ``500`` with one error line when the
tick could not run at all (store unreachable, bad configuration), so Cloud
Scheduler records the failure and retries. Caller authentication is checked by
:func:`firecron.oidc.check_dispatch_caller` before anything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from firecron.dispatch import run_tick
from firecron.errors import FirecronError, SignatureError, UserError
from firecron.settings import Settings
from firecron.store import open_store

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


async def _tick(settings: Settings) -> dict[str, Any]:
    store = open_store(settings.store_url, settings.namespace)
    try:
        return (await run_tick(settings, store)).as_dict()
    finally:
        await store.close()


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
        summary = asyncio.run(_tick(settings))
    except FirecronError as exc:
        log.error("dispatch: tick failed: %s", exc)
        return _response({"error": f"tick failed: {exc}"}, 500)
    log.info(
        "dispatch: %s", json.dumps({k: summary[k] for k in ("due", "claimed", "fired", "watched")})
    )
    return _response(summary, 200)
