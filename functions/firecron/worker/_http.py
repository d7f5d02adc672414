"""The worker's HTTP edge: one functions-framework request in, one answer out.

Checks the method, the size, the signature and the shape of the body, then hands the
delivery to :func:`firecron.worker._execution._begin` and maps what it returns to a
status code (see the package docstring for the contract).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from firecron.core.render import one_line
from firecron.core.runs import Run
from firecron.errors import FirecronError, SignatureError, StoreError
from firecron.worker._execution import (
    WorkerFunction,
    _begin,
    _Delivery,
    _Duplicate,
    _Refused,
    _Unknown,
)
from firecron.worker._runtime import _get_runtime
from firecron.worker._text import MAX_ERROR_CHARS, describe

if TYPE_CHECKING:
    import flask

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""Largest request body read; a larger one is refused with 413 before it is read.

Four times what a Firestore document (the run, params included) can hold.
"""

CLOUD_TASKS_HEADER: Final = "X-CloudTasks-TaskName"
"""Set on every request Cloud Tasks makes (and stripped from any a client sends through
Google's front end): such a delivery is answered at the end of the work."""

_log = logging.getLogger("firecron.worker")


def _json(payload: Mapping[str, Any], status: int) -> flask.Response:
    from flask import Response

    return Response(
        json.dumps(payload, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


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


def _handle(
    fn: WorkerFunction, interval: timedelta | None, request: flask.Request
) -> flask.Response:
    """Answer one request to the worker ``fn`` (steps 1 to 7 of the package docstring)."""
    if request.method != "POST":
        response = _json({"error": f"method {request.method} not allowed; use POST"}, 405)
        response.headers["allow"] = "POST"
        return response
    try:
        runtime = _get_runtime()
    except FirecronError as exc:
        # A settings or store URL error: 500 so the dispatcher retries once it is fixed.
        _log.error("firecron worker: cannot start: %s", one_line(str(exc), MAX_ERROR_CHARS))
        return _json({"error": one_line(str(exc), MAX_ERROR_CHARS)}, 500)
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
            return _json({"error": one_line(str(exc), MAX_ERROR_CHARS)}, 401)
    else:
        webhook_id = None
    try:
        delivery = _Delivery.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return _json({"error": one_line(f"invalid body: {detail}", 200)}, 400)
    if webhook_id is not None and webhook_id != f"{delivery.run_id}/{delivery.attempt}":
        return _json({"error": "webhook-id does not match the body's run_id/attempt"}, 400)
    try:
        begun = _begin(runtime, fn, interval, delivery)
    except StoreError as exc:
        _log.error("firecron worker: store error on run %s: %s", delivery.run_id, describe(exc))
        return _json({"error": one_line(f"store unavailable: {exc}", MAX_ERROR_CHARS)}, 503)
    if isinstance(begun, _Unknown):
        return _json({"error": f"unknown run {delivery.run_id!r}"}, 404)
    if isinstance(begun, _Refused):
        return _json(
            {
                "error": f"the body's {begun.field} does not match the stored run "
                f"{begun.run.id!r}; nothing was executed",
                "field": begun.field,
            },
            409,
        )
    if isinstance(begun, _Duplicate):
        return _duplicate(begun.run)
    from flask import Response

    if request.headers.get(CLOUD_TASKS_HEADER):
        # Delivered by Cloud Tasks: it holds the request open for the work anyway and
        # reads a streamed 202 as done, so the answer comes once the end is recorded.
        final = begun.run_once()
        return _json(final, 200)
    response = Response(begun.stream(), status=202, mimetype="application/x-ndjson")
    response.headers["cache-control"] = "no-store"
    # If the server closes the response before the stream ran (the client went away
    # while the first line was written), the attempt still executes: it is `running`.
    response.call_on_close(begun.run_once)
    return response


def _duplicate(run: Run) -> flask.Response:
    return _json(
        {"status": "duplicate", "run_id": run.id, "attempt": run.attempt, "state": run.state.value},
        200,
    )
