"""The schedule and run service behind every face: the Python client, the CLI and the
admin API (and, through the API, the console).

Each function is async, takes the store (and what else it needs: the settings, a
dispatcher, the time) and raises :class:`~firecron.errors.FirecronError` subclasses,
never anything HTTP or terminal. The faces only translate: the API turns errors into
problem documents, the CLI into exit codes, :class:`firecron.Client` passes them on.

- Reads: :func:`get_schedule`, :func:`list_schedules`, :func:`get_run`, :func:`list_runs`.
- Writes: :func:`put_schedule` (one entry of a schedules file, validated as ``firecron
  validate`` validates the file), :func:`trigger`, and, from :mod:`firecron.admin`,
  :func:`pause`, :func:`resume` and :func:`delete` (re-exported here).

A put's body is one entry of a schedules file, as JSON values, validated exactly as a
file (:func:`~firecron.core.schedule_file.parse_schedule_file`: the model, the refusals,
the time checks; then :func:`firecron.admin.unwritable`), with these differences, since
the body is one schedule and not a whole file:

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from firecron import admin
from firecron.admin import delete, pause, resume
from firecron.core import planning
from firecron.core.models import (
    INPUT,
    SCHEDULE_ID_PATTERN,
    ChainStep,
    JsonValue,
    PipelineSpec,
    ScheduleSpec,
    StoredSchedule,
)
from firecron.core.runs import Run, RunState
from firecron.core.schedule_file import ScheduleFile, ScheduleFileError, parse_schedule_file
from firecron.dispatch import Dispatcher
from firecron.errors import (
    ConflictError,
    InvalidInputError,
    InvalidSchedule,
    NotFoundError,
    PreconditionFailed,
    StoreError,
)
from firecron.settings import Settings
from firecron.store.base import Store

__all__ = [
    "InvalidSchedule",
    "PreconditionFailed",
    "PutResult",
    "delete_schedule",
    "get_run",
    "get_schedule",
    "list_runs",
    "list_schedules",
    "pause",
    "put_schedule",
    "resume",
    "schedule_body",
    "trigger",
]

_CAS_TRIES = 5
_ID = re.compile(SCHEDULE_ID_PATTERN)
_LABEL = re.compile(r"^(?:schedules|pipelines)\[\d+\](?: \(id=[^)]*\))?(?P<sub>\.[^:]*)?: ")
_FIELD = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_ID_LABEL = re.compile(r" \(id=[^)]*\)")
_UNKNOWN_KEY = re.compile(r"unknown key '([^']*)'")
_PAGE = 1000


@dataclass(frozen=True)
class PutResult:
    """What :func:`put_schedule` wrote, and whether it created the schedule."""

    schedule: StoredSchedule
    created: bool


def checked_id(schedule_id: str) -> str:
    """``schedule_id`` when it is a schedule id, else :class:`NotFoundError` (no schedule
    can have it)."""
    if not _ID.fullmatch(schedule_id):
        raise NotFoundError(f"unknown schedule {schedule_id!r} (not a schedule id)")
    return schedule_id


# -- reads ---------------------------------------------------------------------------------


async def get_schedule(store: Store, schedule_id: str) -> StoredSchedule:
    """The stored schedule; :class:`NotFoundError` for an unknown id."""
    stored = await store.get_schedule(checked_id(schedule_id))
    if stored is None:
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
    return stored


async def list_schedules(
    store: Store, *, after: str | None = None, limit: int = 100
) -> list[StoredSchedule]:
    """At most ``limit`` schedules in id order, after the id ``after`` (exclusive).

    Raises :class:`InvalidInputError` when ``after`` is not a schedule id or ``limit`` is
    below 1."""
    if after is not None and not _ID.fullmatch(after):
        raise InvalidInputError(f"after: invalid schedule id {after!r}")
    if limit < 1:
        raise InvalidInputError(f"limit: must be at least 1, got {limit}")
    return await store.list_schedules(after=after, limit=limit)


async def get_run(store: Store, run_id: str) -> Run:
    """The run as recorded; :class:`NotFoundError` for an unknown id."""
    run = await store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    return run


async def list_runs(
    store: Store,
    *,
    schedule_id: str | None = None,
    states: Sequence[RunState | str] | None = None,
    limit: int = 50,
    before: datetime | None = None,
) -> list[Run]:
    """At most ``limit`` runs, newest first (``created_at``, then id), of one schedule or
    all, in ``states`` (any state when None), created before ``before`` (exclusive).

    Raises :class:`InvalidInputError` for an unknown state or a ``limit`` below 1."""
    if limit < 1:
        raise InvalidInputError(f"limit: must be at least 1, got {limit}")
    wanted: list[RunState] | None = None
    if states is not None:
        wanted = []
        for state in states:
            try:
                wanted.append(RunState(state))
            except ValueError:
                known = ", ".join(s.value for s in RunState)
                raise InvalidInputError(
                    f"states: {state!r} is not a run state (one of {known})"
                ) from None
    return await store.list_runs(schedule_id=schedule_id, states=wanted, limit=limit, before=before)


# -- trigger -------------------------------------------------------------------------------


async def trigger(
    dispatcher: Dispatcher,
    schedule_id: str,
    params: Mapping[str, JsonValue] | None = None,
    *,
    gate: bool = True,
) -> Run:
    """Start a manual run of ``schedule_id`` now and return it as the store has it after
    its send (see :meth:`Dispatcher.trigger`: ``params`` go over the schedule's, the
    overlap policy does not apply, ``gate=False`` skips a ``wait:`` gate).

    The store's record is read again after the send: a worker records its start before
    it acknowledges, so the dispatcher's own record of the send may be behind it.
    Raises :class:`NotFoundError` (unknown schedule) and :class:`InvalidInputError`
    (``params`` not a JSON object, a wait key the params cannot render).
    """
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInputError("params: must be a JSON object")
    fired = await dispatcher.trigger(checked_id(schedule_id), params, gate=gate)
    return await dispatcher.store.get_run(fired.id) or fired


async def delete_schedule(
    store: Store, schedule_id: str, now: datetime, *, expect_version: str | None = None
) -> None:
    """Delete a schedule, keeping its runs (:func:`firecron.admin.delete`); with
    ``expect_version``, only at that version (:class:`PreconditionFailed` otherwise).
    Raises :class:`NotFoundError` for an unknown id, or a string that is not an id."""
    await delete(store, checked_id(schedule_id), now, expect_version=expect_version)


# -- put -----------------------------------------------------------------------------------


def schedule_body(spec: ScheduleSpec) -> dict[str, Any]:
    """``spec`` as a put's body: the JSON values of the fields it sets (those equal to
    their defaults are left out, as a file's entry leaves them out), without
    ``managed_by``, which a put decides."""
    body: dict[str, Any] = spec.model_dump(
        mode="json", by_alias=True, exclude_defaults=True, exclude={"managed_by"}
    )
    return body


async def put_schedule(
    store: Store,
    settings: Settings,
    schedule_id: str,
    body: Mapping[str, Any],
    now: datetime,
    *,
    expect_version: str | None = None,
    create_only: bool = False,
) -> PutResult:
    """Create or replace the schedule ``schedule_id`` from ``body`` (see the module
    docstring); return what was written.

    ``expect_version`` replaces only that version (:class:`PreconditionFailed`, or
    :class:`NotFoundError` when the schedule is gone); ``create_only`` creates only
    (:class:`PreconditionFailed` when it exists). Without either, the put wins over
    concurrent writes: a lost compare-and-set is re-read and retried. A replaced
    continuous schedule that is no longer continuous (or is disabled) has its live
    generation stopped, as ``apply`` does. Raises :class:`InvalidSchedule` (every
    problem, with its field), and :class:`StoreError` when the schedule kept changing.
    """
    checked_id(schedule_id)
    for _ in range(_CAS_TRIES):
        stored = await store.get_schedule(schedule_id)
        if stored is not None and create_only:
            raise PreconditionFailed(f"schedule {schedule_id!r} exists (If-None-Match: *)")
        if expect_version is not None:
            if stored is None:
                raise NotFoundError(f"unknown schedule {schedule_id!r}")
            if stored.version != expect_version:
                raise PreconditionFailed(
                    f"schedule {schedule_id!r} is at version {stored.version},"
                    f" not {expect_version}",
                    field="If-Match",
                )
        spec = await _validate_schedule(store, settings, schedule_id, body, now, stored)
        try:
            if stored is None:
                state = planning.initial_state(spec, now)
                written = await store.put_schedule(spec, state, expect_version=None)
                return PutResult(written, created=True)
            state = planning.replan(spec, stored.spec, stored.state, now)
            written = await store.put_schedule(spec, state, expect_version=stored.version)
        except ConflictError:
            if expect_version is not None or create_only:
                raise PreconditionFailed(
                    f"schedule {schedule_id!r} changed meanwhile", field="If-Match"
                ) from None
            continue
        except (ArithmeticError, ValueError) as exc:
            raise InvalidSchedule([(None, f"cannot plan its occurrences: {exc}")]) from None
        if stored.spec.continuous is not None and (not spec.enabled or spec.continuous is None):
            # As apply does: the live generation of a schedule no longer continuous stops now.
            await admin.stop_live_generation(store, stored, now)
        return PutResult(written, created=False)
    raise StoreError(f"schedule {schedule_id!r} kept changing; try again")


async def _validate_schedule(
    store: Store,
    settings: Settings,
    schedule_id: str,
    body: Mapping[str, Any],
    now: datetime,
    stored: StoredSchedule | None,
) -> ScheduleSpec:
    """The spec a put's ``body`` defines for ``schedule_id`` (see the module docstring),
    replacing ``stored`` (None: a new schedule), or :class:`InvalidSchedule`."""
    entry = dict(body)
    if "id" in entry and entry["id"] != schedule_id:
        raise InvalidSchedule([("id", f"id: {entry['id']!r} differs from {schedule_id!r}")])
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
        pipeline = await _stored_pipeline(store, wanted, stored)
        if pipeline is not None:
            doc["pipelines"] = [
                pipeline.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            ]
    sinks = await _sinks(store, doc)
    if sinks:
        doc["notifications"] = {"sinks": sinks}
    parsed = _parse(settings, schedule_id, doc, now)
    if isinstance(parsed, list):
        errors = await _known_chain_steps(store, entry, parsed)
        if errors:
            raise InvalidSchedule(errors)
        # Only `then` steps naming stored schedules were refused (a file must define
        # them): validate without them, then put them back (their model passed).
        steps = entry.pop("then")
        parsed = _parse(settings, schedule_id, doc, now)
        if isinstance(parsed, list):
            raise InvalidSchedule(parsed)
        chain = [ChainStep.model_validate(step, context=INPUT) for step in steps]
        parsed.schedules[0] = parsed.schedules[0].model_copy(update={"then": chain})
    spec = parsed.schedules[0]
    problems = admin.unwritable([spec], now)
    if problems:
        raise InvalidSchedule([_field_of(line) for line in problems])
    update: dict[str, Any] = {"managed_by": "api"}
    if stored is not None:
        update["notify"] = stored.spec.notify
    return spec.model_copy(update=update)


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


async def _stored_pipeline(
    store: Store, name: str, own: StoredSchedule | None
) -> PipelineSpec | None:
    """The stored snapshot of pipeline ``name`` (the schedule's own first), or None."""
    own_pipeline = own.spec.pipeline_spec if own is not None else None
    if own_pipeline is not None and own_pipeline.id == name:
        return own_pipeline
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_PAGE)
        for stored in page:
            pipeline = stored.spec.pipeline_spec
            if pipeline is not None and pipeline.id == name:
                return pipeline
        if len(page) < _PAGE:
            return None
        after = page[-1].id


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


async def _sinks(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    """The ``notifications.sinks`` a put's document needs: a file defines its sinks, a
    body names them. A sink is the configuration the body carries for it, else the one a
    stored schedule has under that name (its routes, its notify actions); a name found
    nowhere stays unknown, and the parser says so."""
    named, sinks = _named_sinks(doc)
    missing = named - set(sinks)
    if missing:
        for name, config in (await _stored_sinks(store, missing)).items():
            sinks.setdefault(name, config)
    return sinks


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


async def _stored_sinks(store: Store, names: set[str]) -> dict[str, Any]:
    """The configurations of the sinks ``names`` as the stored schedules hold them."""
    found: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_PAGE)
        for stored in page:
            spec = stored.spec
            for route in spec.notify:
                if route.sink_name in names:
                    found.setdefault(route.sink_name, _dump(route).get("sink"))
            actions = [spec.target.notify]
            if spec.pipeline_spec is not None:
                actions += [task.notify for task in spec.pipeline_spec.tasks]
            for action in actions:
                if action is not None and action.sink in names and action.sink_config:
                    found.setdefault(action.sink, _dump(action)["sink_config"])
        if len(page) < _PAGE or set(found) >= names:
            return found
        after = page[-1].id


def _parse(
    settings: Settings, schedule_id: str, doc: dict[str, Any], now: datetime
) -> ScheduleFile | list[tuple[str | None, str]]:
    """``doc`` parsed as a schedules file, or its errors as ``(field, line)``."""
    try:
        text = json.dumps(doc, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidSchedule([("body", f"the body cannot be read: {exc}")]) from None
    # JSON is YAML, but a YAML reader folds the line breaks U+0085, U+2028 and U+2029 and
    # refuses some code points, even inside quotes: those travel as escapes. (Not every
    # character: an escaped astral character would reach YAML as two lone surrogates.)
    text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    try:
        return parse_schedule_file(
            text,
            f"schedule {schedule_id}",
            now=now,
            allow_private_targets=settings.allow_private_targets,
            function_timeouts=settings.function_timeouts,
        )
    except ScheduleFileError as exc:
        return [_field_of(line) for line in exc.errors]


async def _known_chain_steps(
    store: Store, entry: dict[str, Any], errors: list[tuple[str | None, str]]
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
                and await store.get_schedule(name) is not None
            ):
                continue
        kept.append((field, line))
    return kept
