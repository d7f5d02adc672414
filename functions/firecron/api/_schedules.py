"""``/api/v1/schedules``: list, get, put, delete, ``:pause``, ``:resume``, ``:trigger``,
``:backfill``.

A schedule's representation is ``{id, spec, state, version}``; its ``ETag`` is the
store's version, which ``If-Match`` on a put or delete must still name (412 otherwise).

A put's body is one entry of a schedules file, as JSON, validated exactly as ``firecron
validate`` validates the file (:func:`~firecron.core.schedule_file.parse_schedule_file`:
the model, the refusals, the time checks), with these differences, since the body is
one schedule and not a whole file:

- ``target: {pipeline: ID}`` uses the body's ``pipeline_spec`` when it has one (a
  pipeline definition, as under a file's ``pipelines:``), else the pipeline as stored
  with the schedules that already target it; else it is an unknown pipeline.
- A ``then`` step may name any stored schedule.
- ``notify`` routes come from a file's ``notifications:``, which a body has not: a
  replaced schedule keeps its routes, a new one gets the default (the log). A notify
  target or task names its sink as in a file; its configuration is the ``sink_config``
  the body carries (as a get returns it), else the one a stored schedule has under that
  name.
- The schedule is stored ``managed_by: api`` (a body may say ``managed_by: api``, as a
  get returns it, or leave it out), so ``apply --prune`` never deletes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

import flask

from firecron import admin
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
from firecron.core import planning
from firecron.core.models import (
    INPUT,
    SCHEDULE_ID_PATTERN,
    ChainStep,
    PipelineSpec,
    ScheduleSpec,
    StoredSchedule,
)
from firecron.core.schedule_file import ScheduleFile, ScheduleFileError, parse_schedule_file
from firecron.errors import ConflictError, NotFoundError
from firecron.store.base import Store

__all__ = ["blueprint", "schedule_document", "validate_body"]

blueprint = flask.Blueprint("firecron_api_schedules", __name__)

_CAS_TRIES = 5
_ID = re.compile(SCHEDULE_ID_PATTERN)
_LABEL = re.compile(r"^(?:schedules|pipelines)\[\d+\](?: \(id=[^)]*\))?(?P<sub>\.[^:]*)?: ")
_FIELD = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_ID_LABEL = re.compile(r" \(id=[^)]*\)")
_UNKNOWN_KEY = re.compile(r"unknown key '([^']*)'")


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
    stored = service.call(service.store.get_schedule(_checked_id(schedule_id)))
    if stored is None:
        raise Problem(404, f"unknown schedule {schedule_id!r}")
    return stored


@blueprint.get("/schedules")
def list_schedules() -> flask.Response:
    """A page of schedules in id order; ``next_page_token`` continues it."""
    service = _service()
    limit = int_arg("limit", 50)
    after = read_page_token()
    if after is not None and not isinstance(after, str):
        raise Problem(400, "page_token: not a token this API gave", field="page_token")
    page = service.call(service.store.list_schedules(after=after, limit=limit + 1))
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


def _field_of(line: str) -> tuple[str | None, str]:
    """``(field, line without its entry label)`` of one error line of the file parser."""
    match = _LABEL.match(line)
    if match is None:
        return None, line
    rest = line[match.end() :]
    prefix = ""
    if line.startswith("pipelines"):
        prefix = "pipeline_spec" + (match.group("sub") or "")
    head, sep, tail = rest.partition(": ")
    if not (sep and _FIELD.fullmatch(head)):
        head, tail = "", rest
    unknown = _UNKNOWN_KEY.fullmatch(tail)
    if unknown is not None:  # the field at fault is the unknown key itself
        head = f"{head}.{unknown.group(1)}" if head else unknown.group(1)
    field = _ID_LABEL.sub("", ".".join(part for part in (prefix, head) if part))
    return (field or None), rest


def _stored_pipeline(store: Store, name: str, own: StoredSchedule | None) -> Any:
    """Coroutine: the stored snapshot of pipeline ``name`` (the schedule's own first)."""

    async def find() -> PipelineSpec | None:
        own_pipeline = own.spec.pipeline_spec if own is not None else None
        if own_pipeline is not None and own_pipeline.id == name:
            return own_pipeline
        after: str | None = None
        while True:
            page = await store.list_schedules(after=after, limit=1000)
            for stored in page:
                pipeline = stored.spec.pipeline_spec
                if pipeline is not None and pipeline.id == name:
                    return pipeline
            if len(page) < 1000:
                return None
            after = page[-1].id

    return find()


def validate_body(
    service: Service,
    schedule_id: str,
    body: dict[str, Any],
    now: datetime,
    stored: StoredSchedule | None,
) -> ScheduleSpec:
    """The spec a put's body defines (see the module docstring), or :class:`Problem` 422
    listing every error with its field."""
    entry = dict(body)
    if "id" in entry and entry["id"] != schedule_id:
        raise Problem(
            422, f"id: {entry['id']!r} differs from the URL's {schedule_id!r}", field="id"
        )
    entry["id"] = schedule_id
    if entry.get("managed_by") == "api":
        del entry["managed_by"]  # what a get returns may be put back as it is
    entry.pop("notify", None)  # routes come from a file's notifications (see above)
    doc: dict[str, Any] = {"schedules": [entry]}
    raw_pipeline = entry.pop("pipeline_spec", None)
    target = entry.get("target")
    wanted = target.get("pipeline") if isinstance(target, dict) else None
    if raw_pipeline is not None:
        doc["pipelines"] = [raw_pipeline]
    elif isinstance(wanted, str):
        pipeline = service.call(_stored_pipeline(service.store, wanted, stored))
        if pipeline is not None:
            doc["pipelines"] = [
                pipeline.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            ]
    sinks = _sinks(service, doc)
    if sinks:
        doc["notifications"] = {"sinks": sinks}
    parsed = _parse(service, schedule_id, doc, now)
    if isinstance(parsed, list):
        errors = _known_chain_steps(service, entry, parsed)
        if errors:
            raise Problem(422, errors[0][1], field=errors[0][0], errors=errors)
        # Only `then` steps naming stored schedules were refused (a file must define
        # them): validate without them, then put them back (their model passed).
        steps = entry.pop("then")
        parsed = _parse(service, schedule_id, doc, now)
        if isinstance(parsed, list):
            raise Problem(422, parsed[0][1], field=parsed[0][0], errors=parsed)
        chain = [ChainStep.model_validate(step, context=INPUT) for step in steps]
        parsed.schedules[0] = parsed.schedules[0].model_copy(update={"then": chain})
    spec = parsed.schedules[0]
    problems = admin.unwritable([spec], now)
    if problems:
        errors = [_field_of(line) for line in problems]
        raise Problem(422, errors[0][1], field=errors[0][0], errors=errors)
    update: dict[str, Any] = {"managed_by": "api"}
    if stored is not None:
        update["notify"] = stored.spec.notify
    return spec.model_copy(update=update)


def _named_sinks(doc: dict[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """The sinks that the notify actions of ``doc`` (a notify target, a pipeline's notify
    tasks) name, and the configurations that they carry themselves (``sink_config``, as
    a get returns them), by name."""
    named: set[str] = set()
    carried: dict[str, Any] = {}
    actions: list[Any] = []
    for entry in doc["schedules"]:
        target = entry.get("target")
        actions.append(target.get("notify") if isinstance(target, dict) else None)
    for pipeline in doc.get("pipelines", []):
        tasks = pipeline.get("tasks") if isinstance(pipeline, dict) else None
        for task in tasks if isinstance(tasks, list) else []:
            actions.append(task.get("notify") if isinstance(task, dict) else None)
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("sink"), str):
            named.add(action["sink"])
            if isinstance(action.get("sink_config"), dict):
                carried.setdefault(action["sink"], action["sink_config"])
    return named, carried


def _sinks(service: Service, doc: dict[str, Any]) -> dict[str, Any]:
    """The ``notifications.sinks`` a put's document needs: a file defines its sinks, a
    body names them. A sink is the configuration the body carries for it, else the one a
    stored schedule has under that name (its routes, its notify actions); a name found
    nowhere stays unknown, and the parser says so."""
    named, sinks = _named_sinks(doc)
    missing = named - set(sinks)
    if missing:
        for name, config in service.call(_stored_sinks(service.store, missing)).items():
            sinks.setdefault(name, config)
    return sinks


async def _stored_sinks(store: Store, names: set[str]) -> dict[str, Any]:
    """The configurations of the sinks ``names`` as the stored schedules hold them."""
    found: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=1000)
        for stored in page:
            spec = stored.spec
            for route in spec.notify:
                if route.sink_name in names:
                    found.setdefault(route.sink_name, dump(route).get("sink"))
            actions = [spec.target.notify]
            if spec.pipeline_spec is not None:
                actions += [task.notify for task in spec.pipeline_spec.tasks]
            for action in actions:
                if action is not None and action.sink in names and action.sink_config:
                    found.setdefault(action.sink, dump(action)["sink_config"])
        if len(page) < 1000 or set(found) >= names:
            return found
        after = page[-1].id


def _parse(
    service: Service, schedule_id: str, doc: dict[str, Any], now: datetime
) -> ScheduleFile | list[tuple[str | None, str]]:
    """``doc`` parsed as a schedules file, or its errors as ``(field, line)``."""
    try:
        text = json.dumps(doc, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise Problem(400, f"the body cannot be read: {exc}", field="body") from None
    # JSON is YAML, but a YAML reader folds the line breaks U+0085, U+2028 and U+2029 and
    # refuses some code points, even inside quotes: those travel as escapes. (Not every
    # character: an escaped astral character would reach YAML as two lone surrogates.)
    text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    try:
        return parse_schedule_file(
            text,
            f"schedule {schedule_id}",
            now=now,
            allow_private_targets=service.settings.allow_private_targets,
            function_timeouts=service.settings.function_timeouts,
        )
    except ScheduleFileError as exc:
        return [_field_of(line) for line in exc.errors]


def _known_chain_steps(
    service: Service, entry: dict[str, Any], errors: list[tuple[str | None, str]]
) -> list[tuple[str | None, str]]:
    """``errors`` without the "unknown schedule" lines of ``then`` steps naming a stored
    schedule (a file must define them; a put may name any that exists)."""
    steps = entry.get("then")
    if not isinstance(steps, list):
        return errors
    kept: list[tuple[str | None, str]] = []
    for field, line in errors:
        match = re.fullmatch(r"then\[(\d+)\]\.schedule", field or "")
        if match is not None and "unknown schedule" in line:
            step = steps[int(match.group(1))]
            name = step.get("schedule") if isinstance(step, dict) else None
            if (
                isinstance(name, str)
                and _ID.fullmatch(name)
                and service.call(service.store.get_schedule(name)) is not None
            ):
                continue
        kept.append((field, line))
    return kept


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
    expected = if_match()
    create_only = if_none_match_star()
    for _ in range(_CAS_TRIES):
        now = service.now()
        stored = service.call(service.store.get_schedule(schedule_id))
        if stored is not None and create_only:
            raise Problem(412, f"schedule {schedule_id!r} exists (If-None-Match: *)")
        if expected is not None:
            if stored is None:
                raise Problem(404, f"unknown schedule {schedule_id!r}")
            if stored.version != expected:
                raise Problem(
                    412,
                    f"schedule {schedule_id!r} is at version {stored.version}, not {expected}",
                    field="If-Match",
                )
        spec = validate_body(service, schedule_id, body, now, stored)
        try:
            if stored is None:
                state = planning.initial_state(spec, now)
                written = service.call(service.store.put_schedule(spec, state, expect_version=None))
                return reply(schedule_document(written), 201, version=written.version)
            state = planning.replan(spec, stored.spec, stored.state, now)
            written = service.call(
                service.store.put_schedule(spec, state, expect_version=stored.version)
            )
        except ConflictError:
            if expected is not None or create_only:
                raise Problem(
                    412, f"schedule {schedule_id!r} changed meanwhile", field="If-Match"
                ) from None
            continue
        except (ArithmeticError, ValueError) as exc:
            raise Problem(422, f"cannot plan its occurrences: {exc}") from None
        if stored.spec.continuous is not None and (not spec.enabled or spec.continuous is None):
            # As apply does: the live generation of a schedule no longer continuous stops now.
            service.call(admin._stop_live_generation(service.store, stored, now))
        return reply(schedule_document(written), version=written.version)
    raise Problem(409, f"schedule {schedule_id!r} kept changing; try again")


@blueprint.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> flask.Response:
    """Delete a schedule (its runs are kept); 204. ``If-Match`` as for a put."""
    _checked_id(schedule_id)
    service = _service()
    expected = if_match()
    now = service.now()
    if expected is None:
        service.call(admin.delete(service.store, schedule_id, now))
        return flask.Response(status=204)
    stored = _get(service, schedule_id)
    if stored.version != expected:
        raise Problem(
            412,
            f"schedule {schedule_id!r} is at version {stored.version}, not {expected}",
            field="If-Match",
        )
    try:
        deleted = service.call(service.store.delete_schedule(schedule_id, expect_version=expected))
    except ConflictError:
        raise Problem(
            412, f"schedule {schedule_id!r} changed meanwhile", field="If-Match"
        ) from None
    if not deleted:
        raise Problem(404, f"unknown schedule {schedule_id!r}")
    service.call(admin._stop_live_generation(service.store, stored, now))
    return flask.Response(status=204)


@blueprint.post("/schedules/<schedule_id>:pause")
def pause(schedule_id: str) -> flask.Response:
    """Pause (idempotent); answers the schedule."""
    service = _service()
    stored = service.call(admin.pause(service.store, _checked_id(schedule_id), service.now()))
    return reply(schedule_document(stored), version=stored.version)


@blueprint.post("/schedules/<schedule_id>:resume")
def resume(schedule_id: str) -> flask.Response:
    """Resume (idempotent); the misfire policy judges what was missed. Answers the schedule."""
    service = _service()
    stored = service.call(admin.resume(service.store, _checked_id(schedule_id), service.now()))
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
    run = service.call(service.dispatcher.trigger(_checked_id(schedule_id), params))
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
    _checked_id(schedule_id)
    if service.call(service.store.get_schedule(schedule_id)) is None:
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
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
