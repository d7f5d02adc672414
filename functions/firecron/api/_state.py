"""``/api/v1/state``: the state collection (``firecron state``): list, get, put, delete.

An entry's representation is ``{key, value, version, updated_at}``; its ``ETag`` is the
version (an integer, 1 when created). ``If-Match: "N"`` makes a put or delete a
compare-and-set on version N (412 when it differs); ``If-None-Match: *`` makes a put
create only. A put or delete then looks at the runs waiting on the key, as any state
write does, and fires those whose condition now holds. A get adds ``waiting``: the
runs waiting on the key (at most 100: id, schedule, condition, next check).
Keys may hold ``/`` (``orders/2027-01-04``): the URL takes the key as its rest.
"""

from __future__ import annotations

from typing import Any

import flask

from firecron.api._http import (
    dump,
    if_match,
    if_none_match_star,
    int_arg,
    json_body,
    page_token,
    read_page_token,
    reply,
)
from firecron.api._problem import Problem
from firecron.api._service import Service
from firecron.core.state import StateEntry
from firecron.errors import ConflictError

__all__ = ["blueprint"]

blueprint = flask.Blueprint("firecron_api_state", __name__)

_WAITING = 100


def _service() -> Service:
    service: Service = flask.current_app.extensions["firecron.api"]
    return service


def _document(entry: StateEntry) -> dict[str, Any]:
    document: dict[str, Any] = dump(entry)
    return document


def _version() -> int | None:
    raw = if_match()
    if raw is None:
        return None
    try:
        version = int(raw)
    except ValueError:
        raise Problem(
            412, f"If-Match: {raw!r} is not a version of a state entry", field="If-Match"
        ) from None
    return version


@blueprint.get("/state")
def list_state() -> flask.Response:
    """Entries in key order, those starting with ``prefix``; paged by ``page_token``."""
    service = _service()
    prefix = flask.request.args.get("prefix", "")
    limit = int_arg("limit", 100)
    after = read_page_token()
    if after is not None and not isinstance(after, str):
        raise Problem(400, "page_token: not a token this API gave", field="page_token")
    page = service.call(service.store.list_state(prefix=prefix, after=after, limit=limit + 1))
    more = len(page) > limit
    page = page[:limit]
    return reply(
        {
            "entries": [_document(e) for e in page],
            "next_page_token": page_token(page[-1].key) if more else None,
        }
    )


@blueprint.get("/state/<path:key>")
def get_state(key: str) -> flask.Response:
    """One entry and the runs waiting on its key; its ``ETag`` is its version."""
    service = _service()
    state = service.state()
    entry = state.entry(key)
    if entry is None:
        raise Problem(404, f"no state entry {key!r}")
    waiting = service.call(service.store.waiting_on(key, _WAITING))
    document = _document(entry)
    document["waiting"] = [
        {
            "run_id": run.id,
            "schedule_id": run.schedule_id,
            "until": run.wait.until if run.wait is not None else None,
            "next_check_at": run.watch_at.isoformat() if run.watch_at else None,
        }
        for run in waiting
    ]
    return reply(document, version=entry.version)


@blueprint.put("/state/<path:key>")
def put_state(key: str) -> flask.Response:
    """Write ``{"value": ...}`` under the key; 201 when created, else 200."""
    service = _service()
    body = json_body()
    for name in body:
        if name != "value":
            raise Problem(422, f"unknown key {name!r}", field=name)
    if "value" not in body:
        raise Problem(422, "value: required (any JSON value)", field="value")
    expected = _version()
    if if_none_match_star():
        expected = 0
    try:
        entry = service.state().set(key, body["value"], if_version=expected)
    except ConflictError as exc:
        raise Problem(412 if expected is not None else 409, str(exc), field="If-Match") from None
    return reply(_document(entry), 201 if entry.version == 1 else 200, version=entry.version)


@blueprint.delete("/state/<path:key>")
def delete_state(key: str) -> flask.Response:
    """Delete the entry; 204, or 404 when there was none."""
    service = _service()
    expected = _version()
    try:
        deleted = service.state().delete(key, if_version=expected)
    except ConflictError as exc:
        raise Problem(412, str(exc), field="If-Match") from None
    if not deleted:
        raise Problem(404, f"no state entry {key!r}")
    return flask.Response(status=204)
