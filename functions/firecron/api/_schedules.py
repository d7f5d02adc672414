"""``/api/v1/schedules``: list, get, put, delete, ``:pause``, ``:resume``, ``:trigger``,
``:backfill``.

A schedule's representation is ``{id, spec, state, version}``; its ``ETag`` is the
store's version, which ``If-Match`` on a put or delete must still name (412 otherwise).

A put's body is one entry of a schedules file, as JSON, validated exactly as ``firecron
validate`` validates the file, by the service every face calls
(:func:`firecron.service.put_schedule`; its docstring states how a body differs from a
file's entry). An invalid body is 422 listing every error with its field.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

import flask

from firecron import service as service_layer
from firecron.api._http import (
    dump,
    if_match,
    if_none_match_star,
    int_arg,
    json_body,
    page_token,
    parse_instant,
    read_page_token,
    reply,
)
from firecron.api._problem import Problem
from firecron.api._service import Service
from firecron.core.models import SCHEDULE_ID_PATTERN, StoredSchedule

__all__ = ["blueprint", "schedule_document"]

blueprint = flask.Blueprint("firecron_api_schedules", __name__)

_ID = re.compile(SCHEDULE_ID_PATTERN)


def _service() -> Service:
    service: Service = flask.current_app.extensions["firecron.api"]
    return service


def schedule_document(stored: StoredSchedule) -> dict[str, Any]:
    """How the API represents a stored schedule."""
    return {
        "id": stored.id,
        "spec": dump(stored.spec),
        "state": dump(stored.state),
        "version": stored.version,
    }


def _checked_id(schedule_id: str) -> str:
    if not _ID.fullmatch(schedule_id):
        raise Problem(
            404, f"unknown schedule {schedule_id!r} (not a schedule id)", field="schedule_id"
        )
    return schedule_id


def _get(service: Service, schedule_id: str) -> StoredSchedule:
    return service.call(service_layer.get_schedule(service.store, _checked_id(schedule_id)))


@blueprint.get("/schedules")
def list_schedules() -> flask.Response:
    """A page of schedules in id order; ``next_page_token`` continues it."""
    service = _service()
    limit = int_arg("limit", 50)
    after = read_page_token()
    if after is not None and not isinstance(after, str):
        raise Problem(400, "page_token: not a token this API gave", field="page_token")
    page = service.call(service_layer.list_schedules(service.store, after=after, limit=limit + 1))
    more = len(page) > limit
    page = page[:limit]
    return reply(
        {
            "schedules": [schedule_document(s) for s in page],
            "next_page_token": page_token(page[-1].id) if more else None,
        }
    )


@blueprint.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str) -> flask.Response:
    """One schedule; its ``ETag`` is its version."""
    stored = _get(_service(), schedule_id)
    return reply(schedule_document(stored), version=stored.version)


@blueprint.put("/schedules/<schedule_id>")
def put_schedule(schedule_id: str) -> flask.Response:
    """Create (201) or replace (200) a schedule from a schedules-file entry.

    ``If-Match: "VERSION"`` replaces only that version (412 otherwise, or 404 when it is
    gone); ``If-None-Match: *`` creates only (412 when it exists). Without either, the
    put wins over concurrent writes (it re-reads and retries a lost compare-and-set).
    """
    _checked_id(schedule_id)
    service = _service()
    body = json_body()
    put = service_layer.put_schedule(
        service.store,
        service.settings,
        schedule_id,
        body,
        service.now(),
        expect_version=if_match(),
        create_only=if_none_match_star(),
    )
    result = service.call(put)
    written = result.schedule
    return reply(
        schedule_document(written), 201 if result.created else 200, version=written.version
    )


@blueprint.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> flask.Response:
    """Delete a schedule (its runs are kept); 204. ``If-Match`` as for a put."""
    _checked_id(schedule_id)
    service = _service()
    service.call(
        service_layer.delete_schedule(
            service.store, schedule_id, service.now(), expect_version=if_match()
        )
    )
    return flask.Response(status=204)


@blueprint.post("/schedules/<schedule_id>:pause")
def pause(schedule_id: str) -> flask.Response:
    """Pause (idempotent); answers the schedule."""
    service = _service()
    stored = service.call(
        service_layer.pause(service.store, _checked_id(schedule_id), service.now())
    )
    return reply(schedule_document(stored), version=stored.version)


@blueprint.post("/schedules/<schedule_id>:resume")
def resume(schedule_id: str) -> flask.Response:
    """Resume (idempotent); the misfire policy judges what was missed. Answers the schedule."""
    service = _service()
    stored = service.call(
        service_layer.resume(service.store, _checked_id(schedule_id), service.now())
    )
    return reply(schedule_document(stored), version=stored.version)


def _params(body: dict[str, Any]) -> dict[str, Any] | None:
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise Problem(422, "params: must be a JSON object", field="params")
    return params


@blueprint.post("/schedules/<schedule_id>:trigger")
def trigger(schedule_id: str) -> flask.Response:
    """Start a manual run now (body: ``{"params": {...}}``, over the schedule's); 201 with
    the run as recorded once it was sent."""
    from firecron.api._runs import run_document

    service = _service()
    body = json_body()
    _unknown_keys(body, {"params"})
    params = _params(body)
    run = service.call(service_layer.trigger(service.dispatcher, _checked_id(schedule_id), params))
    return reply(run_document(run), 201)


@blueprint.post("/schedules/<schedule_id>:backfill")
def backfill(schedule_id: str) -> flask.Response:
    """One run per occurrence in ``[start, end]`` (body: ``start``, ``end``, ``dry_run``,
    ``max_parallel``), as ``firecron backfill``: the report of what was planned, created
    and found existing (200). With ``max_parallel`` (and not ``dry_run``) the backfill
    runs in the background and the answer is its dry-run plan (202)."""
    from firecron import operations

    service = _service()
    body = json_body()
    _unknown_keys(body, {"start", "end", "dry_run", "max_parallel"})
    for name in ("start", "end"):
        if name not in body:
            raise Problem(422, f"{name}: required (an ISO 8601 time)", field=name)
    start = parse_instant(body["start"], "start")
    end = parse_instant(body["end"], "end")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise Problem(422, "dry_run: must be true or false", field="dry_run")
    max_parallel = body.get("max_parallel")
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise Problem(422, "max_parallel: must be a positive integer", field="max_parallel")
    # An unknown schedule is backfill's own NotFoundError (404): no read of it here.
    _checked_id(schedule_id)
    if max_parallel is None or dry_run:
        report = service.call(
            operations.backfill(service.dispatcher, schedule_id, start, end, dry_run=dry_run)
        )
        return reply(_plain(report))
    # With max_parallel the backfill waits for runs to end before firing more, far longer
    # than a request may last: it goes on in the background, and the answer is its plan
    # (202). It is resumable: the same request again completes whatever was left.
    plan = service.call(
        operations.backfill(service.dispatcher, schedule_id, start, end, dry_run=True)
    )
    service.start(
        operations.backfill(service.dispatcher, schedule_id, start, end, max_parallel=max_parallel),
        f"backfill of {schedule_id!r}",
    )
    return reply(_plain(plan), 202)


def _plain(value: Any) -> Any:
    """A dataclass report as JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _unknown_keys(body: dict[str, Any], known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise Problem(422, f"unknown key {key!r}", field=key)
