"""Schedules as code: parse and validate a schedules YAML document. Pure (text in, models out).

Format::

    schedules:
      - id: nightly-report
        cron: "0 2 * * *"
        timezone: Europe/Berlin
        target: {function: report}

Contract of :func:`parse_schedule_file`:
- It validates every entry and collects *all* errors before failing, so one run of
  ``firecron validate`` shows everything to fix.
- Each error is one line naming the entry (``schedules[3] (id=x)``) and the field path
  (``retry.max_attempts``), with the offending value where useful.
- Unknown keys, at any level, are errors; so are duplicate ids.
- YAML timestamps are *not* converted by the YAML loader: every time is parsed by
  firecron so that naive times are read in the schedule's ``timezone``.
- Booleans are YAML 1.2's (``true``/``false``); ``on``, ``yes``, ``off`` stay strings.
- Entries are validated as user input (:data:`~firecron.core.models.INPUT`): durations
  at most ten years, instants from 1970 to before year 9000, ``params`` at most 32
  levels deep. Text that is not valid Unicode (a lone surrogate) and YAML nested too
  deeply for the parser are one error line too, never an exception.
- Valid entries that can never work are errors too (:mod:`firecron.core.refusals`): a
  target or webhook sink the SSRF guard always refuses, an ``at`` that can no longer
  fire, and a wait (a schedule's gate, a wait target, a pipeline's wait task) whose key
  template, ``until`` or ``every`` can never work, or whose template names a param the
  runs will not have. Those checks depend on ``now`` and on whether private targets are
  allowed, which the caller passes in (the core reads no clock or environment).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from firecron._gc import gc_paused
from firecron.core.events import (
    PAGERDUTY_TRIGGERS,
    SINK_TYPES,
    Notifications,
    PagerDutySink,
    Route,
    SinkConfig,
    resolve_routes,
)
from firecron.core.models import (
    INPUT,
    NotifyAction,
    PipelineSpec,
    ScheduleSpec,
    WaitSpec,
    params_depth_problem,
)
from firecron.core.pipeline_checks import cycles, problems, task_label, wait_param_problems
from firecron.core.refusals import unworkable, unworkable_sinks
from firecron.core.waits import holds, template_problem
from firecron.errors import InvalidInputError

__all__ = [
    "ScheduleFile",
    "ScheduleFileError",
    "format_error",
    "format_validation_error",
    "parse_schedule_file",
]

_PAGERDUTY_TRIGGER_NAMES = tuple(t.value for t in PAGERDUTY_TRIGGERS)

_TOP_LEVEL_KEYS = {"schedules", "notifications", "pipelines"}


class ScheduleFileError(InvalidInputError):
    """A schedules file is invalid; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"{source}: {len(errors)} {noun}\n" + "\n".join(errors))


@dataclass(frozen=True)
class ScheduleFile:
    """A valid schedules document.

    Each spec's ``notify`` holds its resolved routes; a spec with ``target: {pipeline:
    ID}`` holds that pipeline in ``pipeline_spec``; every ``notify`` action (a notify
    task's, a notify target's) holds its sink in ``sink_config``.
    """

    schedules: list[ScheduleSpec]
    notifications: Notifications
    pipelines: list[PipelineSpec] = field(default_factory=list)
    """The file's pipelines, in file order, their notify tasks' sinks resolved."""
    warnings: list[str] = field(default_factory=list)
    """What is valid but likely a mistake, one line each (``pipelines[1] (id=x): no
    schedule targets it``, a wait's ``until`` that errs while its key is missing);
    ``validate`` and ``apply`` print them and still succeed."""


# libyaml's parser when PyYAML was built with it: the pure-Python scanner was most of
# the time `validate` took on a large file.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader without implicit timestamps (firecron parses times itself)."""


# YAML 1.1 reads `on:`, `yes` and `off` as booleans, which would turn a notification
# rule's `on:` key into True. Booleans are YAML 1.2's: true and false only.
_DROPPED = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_COLLECTION_TAGS = {None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_RESOLVED_CACHE_SIZE = 4096


class _Unusual(Exception):
    """The document uses YAML that :func:`_load_direct` leaves to PyYAML's own loader."""


_NO_KEY: Any = object()


def _load_direct(loader: Any, on_entry: Callable[[int, Any], Any] | None = None) -> Any:
    """Build the document straight from ``loader``'s events, without a node graph.

    PyYAML composes a node object per scalar and collection before constructing
    anything, which for a file of 100,000 schedules cost most of the time and memory
    of ``validate``. This builds the same dicts, lists and scalars from the event
    stream, resolving and constructing scalars exactly as the loader does. Anchors,
    aliases, tags on collections, merge keys, collection keys and several documents
    raise :class:`_Unusual`, and the caller then uses the loader's own path, so every
    document still means (and fails) what it meant before.

    ``on_entry(index, item)``, when given, replaces each item of the top-level
    ``schedules`` list as soon as the item is complete, so a large file never holds
    all of its raw entries at once.
    """
    # Locals: this loop runs once per YAML event, millions of times for a large file.
    get = loader.get_event
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    scalar_event, scalar_node = yaml.ScalarEvent, yaml.ScalarNode
    mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    document_end = yaml.DocumentEndEvent
    str_tag, plain_tags, no_key = _STR_TAG, _PLAIN_COLLECTION_TAGS, _NO_KEY
    resolved: dict[str, str] = {}  # plain scalar -> tag (keys and values repeat a lot)
    get()  # StreamStartEvent
    if isinstance(get(), yaml.StreamEndEvent):
        return None
    containers: list[Any] = []
    keys: list[Any] = []  # per open mapping, the key waiting for its value
    entries: Any = None  # the top-level ``schedules`` list, once it has begun
    root: Any = None
    while True:
        event = get()
        kind = type(event)
        if kind is scalar_event:
            if event.anchor is not None:
                raise _Unusual
            value: Any = event.value
            tag = event.tag
            if tag is None or tag == "!":
                implicit = event.implicit
                if implicit[0]:
                    # Resolution of a plain scalar depends on its text only.
                    tag = resolved.get(value)
                    if tag is None:
                        tag = resolve(scalar_node, value, implicit)
                        if len(resolved) < _RESOLVED_CACHE_SIZE:
                            resolved[value] = tag
                else:
                    tag = str_tag  # a quoted scalar is a string
            if tag != str_tag:
                construct = constructors.get(tag)
                if construct is None or tag == "tag:yaml.org,2002:merge":
                    raise _Unusual
                node = scalar_node(tag, value, event.start_mark, event.end_mark, event.style)
                try:
                    value = construct(loader, node)
                except (ValueError, TypeError) as exc:
                    raise _bad_scalar(tag, value, exc, event.start_mark) from None
        elif kind is mapping_start or kind is sequence_start:
            if event.anchor is not None or event.tag not in plain_tags:
                raise _Unusual
            if kind is mapping_start:
                containers.append({})
            else:
                new: list[Any] = []
                if len(containers) == 1 and keys[0] == "schedules" and on_entry is not None:
                    entries = new
                containers.append(new)
            keys.append(no_key)
            continue
        elif kind is mapping_end or kind is sequence_end:
            value = containers.pop()
            keys.pop()
        elif kind is document_end:
            break
        else:  # AliasEvent
            raise _Unusual
        if not containers:
            root = value
            continue
        parent = containers[-1]
        if type(parent) is list:
            if parent is entries:
                value = on_entry(len(parent), value)  # type: ignore[misc]
            parent.append(value)
        elif keys[-1] is no_key:
            if isinstance(value, list | dict):
                raise _Unusual  # PyYAML reports unhashable keys itself
            keys[-1] = value
        else:
            parent[keys[-1]] = value
            keys[-1] = no_key
    if not isinstance(get(), yaml.StreamEndEvent):
        raise _Unusual  # several documents: PyYAML's error says so
    return root


def _load_yaml(text: str, on_entry: Callable[[int, Any], Any] | None = None) -> Any:
    """``yaml.load(text, Loader=_Loader)``, in a fraction of its time and memory.

    ``on_entry`` may have replaced the items of the top-level ``schedules`` list (see
    :func:`_load_direct`), or not: the caller must accept both.
    """
    loader = _Loader(text)
    try:
        return _load_direct(loader, on_entry)
    except _Unusual:
        pass
    finally:
        loader.dispose()
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except (ValueError, TypeError) as exc:
        # Where it was is lost by now; the problem still says which value.
        raise _bad_scalar(None, None, exc, None) from None
    finally:
        loader.dispose()


def _position(text: str, exc: UnicodeEncodeError) -> str:
    """``line L, column C`` of the character a :class:`UnicodeEncodeError` points at."""
    start = exc.start
    if exc.object != text:
        return "an unknown position"
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return f"line {line}, column {column}"


def _bad_scalar(tag: str | None, value: Any, exc: Exception, mark: Any) -> yaml.YAMLError:
    """A YAML error for a scalar PyYAML's constructors failed on with a bare exception.

    PyYAML lets ``ValueError`` escape from, for instance, ``!!int nope``: as a YAML error
    it becomes one line naming the line and column, not a traceback.
    """
    what = f"{tag.rsplit(':', 1)[-1]} {value!r}" if tag is not None else "a value"
    return yaml.constructor.ConstructorError(None, None, f"cannot read {what} ({exc})", mark)


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_SHOWN_CHARS = 80
"""How much of an offending value an error line quotes."""


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``."""
    return [format_error(err) for err in exc.errors(include_url=False)]


def format_error(err: ErrorDetails, loc: tuple[int | str, ...] | None = None) -> str:
    """One pydantic error as one line; ``loc`` replaces the error's own location (a caller
    that names part of it, such as a pipeline's task, passes the rest)."""
    # Drop the model-type segments pydantic inserts for tagged unions and the like.
    parts = err["loc"] if loc is None else loc
    parts = tuple(
        p
        for i, p in enumerate(parts)
        if not (isinstance(p, str) and p.startswith("function-"))
        # A sink's `type` tag (sinks.NAME.email.port): the file says sinks.NAME.port.
        and not (i >= 2 and parts[i - 2] == "sinks" and p in SINK_TYPES)
    )
    where = _loc(parts)
    kind = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        line = f"unknown key {where.rsplit('.', 1)[-1]!r}" if where else "unknown key"
        parent = where.rsplit(".", 1)[0] if "." in where else ""
        return f"{parent}: {line}" if parent else line
    if kind == "missing":
        return f"{where}: required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        # pydantic says "a valid dictionary or instance of RetryPolicy": a class name the
        # file's author never wrote. The file's own word is a mapping.
        msg = "must be a mapping (key: value)"
    value = err.get("input")
    if kind != "value_error" and isinstance(value, str | int | float | bool):
        shown = repr(value)
        if len(shown) > _SHOWN_CHARS:  # a 10,000-character value is not one clear line
            shown = f"{shown[: _SHOWN_CHARS - 4]}...{shown[-1]} ({len(str(value)):,} characters)"
        msg = f"{msg} (got {shown})"
    return f"{where}: {msg}" if where else msg


def parse_schedule_file(
    text: str,
    source: str = "<schedules>",
    *,
    now: datetime | None = None,
    allow_private_targets: bool = True,
    function_timeouts: Mapping[str, timedelta] | None = None,
) -> ScheduleFile:
    """Parse and validate a schedules document; raises :class:`ScheduleFileError`.

    ``now`` (aware) enables the checks that depend on the time, such as an ``at`` older
    than its misfire grace; ``None`` skips them. ``allow_private_targets`` is the
    deployment's ``FIRECRON_ALLOW_PRIVATE_TARGETS``: with ``False``, ``http``, loopback
    and private targets are refused too; the metadata server and link-local addresses
    are refused either way. ``function_timeouts`` are the deployed functions' timeouts
    by name (``FIRECRON_FUNCTION_TIMEOUTS``), which a continuous window must fit. The
    CLI passes them all.
    """
    with gc_paused():  # see firecron._gc: a large file builds millions of live objects
        return _parse(
            text,
            source,
            now=now,
            allow_private_targets=allow_private_targets,
            function_timeouts=function_timeouts or {},
        )


def _parse(
    text: str,
    source: str,
    *,
    now: datetime | None,
    allow_private_targets: bool,
    function_timeouts: Mapping[str, timedelta],
) -> ScheduleFile:
    """:func:`parse_schedule_file`, with the collector paused."""

    def check(index: int, entry: Any) -> _Checked:
        return _check_entry(
            index,
            entry,
            now=now,
            allow_private_targets=allow_private_targets,
            function_timeouts=function_timeouts,
        )

    try:
        # Entries are validated as the parser completes them (see _load_direct).
        doc = _load_yaml(text, check)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScheduleFileError(source, [f"invalid YAML{where}: {problem}"]) from None
    except UnicodeEncodeError as exc:
        # A str holding a lone surrogate, which no store could encode either.
        line = f"invalid text: {exc.reason} at {_position(text, exc)}"
        raise ScheduleFileError(source, [line]) from None
    except RecursionError:
        # PyYAML's pure-Python composer recurses once per nesting level.
        raise ScheduleFileError(source, ["invalid YAML: nested too deeply"]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ScheduleFileError(source, ["top level must be a mapping with a 'schedules' list"])
    errors = [f"unknown top-level key {k!r}" for k in doc if k not in _TOP_LEVEL_KEYS]
    entries: Any = doc.get("schedules", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ScheduleFileError(source, [*errors, "'schedules' must be a list"])

    notifications = Notifications()
    sinks: dict[str, SinkConfig] | None = notifications.sinks
    raw_notifications = doc.get("notifications")
    if raw_notifications is not None:
        try:
            notifications = Notifications.model_validate(raw_notifications)
        except ValidationError as exc:
            sinks = None  # unknown: a notify's sink is not judged against them
            errors.extend(f"notifications.{line}" for line in format_validation_error(exc))
        else:
            sinks = notifications.sinks
            for index, rule in enumerate(notifications.rules):
                sink = notifications.sinks.get(rule.sink)
                if sink is None:
                    errors.append(f"notifications.rules[{index}].sink: unknown sink {rule.sink!r}")
                elif isinstance(sink, PagerDutySink) and not {"*", *_PAGERDUTY_TRIGGER_NAMES} & set(
                    rule.on
                ):
                    # Such a rule would send nothing: say so rather than stay silent.
                    errors.append(
                        f"notifications.rules[{index}].on: a pagerduty sink triggers on "
                        f"{', '.join(_PAGERDUTY_TRIGGER_NAMES)} (and resolves on run.succeeded);"
                        " name one of them, or *"
                    )
            errors.extend(
                f"notifications.{line}"
                for line in unworkable_sinks(
                    notifications, allow_private_targets=allow_private_targets
                )
            )

    pipelines, invalid_pipelines = _check_pipelines(
        doc.get("pipelines"), errors, sinks=sinks, allow_private_targets=allow_private_targets
    )

    specs: list[ScheduleSpec] = []
    seen: dict[str, int] = {}
    invalid_ids: set[str] = set()  # of invalid entries: no "unknown schedule" for them
    for index, item in enumerate(entries):
        checked = item if isinstance(item, _Checked) else check(index, item)
        entries[index] = None  # keeps the peak memory of a large file down
        spec = checked.spec
        if spec is None:
            if checked.raw_id is not None:
                invalid_ids.add(checked.raw_id)
            errors.extend(checked.errors)
            continue
        first = seen.setdefault(spec.id, index)
        if first != index:
            errors.append(
                f"{_label(index, spec.id)}: duplicate id {spec.id!r} (first at schedules[{first}])"
            )
            continue
        errors.extend(checked.errors)
        specs.append(spec)
    errors.extend(_links(specs, seen, invalid_ids, pipelines, invalid_pipelines, sinks))
    errors.extend(_wait_params(specs, seen, pipelines, doc.get("pipelines")))
    if errors:
        raise ScheduleFileError(source, errors)
    targeted = {spec.target.pipeline for spec in specs if spec.target.pipeline is not None}
    warnings = [
        f"{_pipeline_label(index, pipeline.id)}: no schedule targets it"
        for index, pipeline in enumerate(pipelines.values())
        if pipeline.id not in targeted
    ]
    warnings.extend(_null_warnings(specs, seen, pipelines))
    return ScheduleFile(
        schedules=_linked(_routed(specs, notifications), pipelines, notifications.sinks),
        notifications=notifications,
        pipelines=list(pipelines.values()),
        warnings=warnings,
    )


def _pipeline_label(index: int, pipeline_id: Any) -> str:
    """``pipelines[0] (id=etl)``: how an error names a pipeline."""
    label = f"pipelines[{index}]"
    return f"{label} (id={pipeline_id})" if isinstance(pipeline_id, str) else label


def _check_pipelines(
    raw: Any,
    errors: list[str],
    *,
    sinks: dict[str, SinkConfig] | None,
    allow_private_targets: bool,
) -> tuple[dict[str, PipelineSpec], set[str]]:
    """The valid pipelines of the ``pipelines:`` section by id (their notify tasks' sinks
    resolved), and the ids of the invalid ones; each problem is appended to ``errors``.

    A pipeline is valid when the model accepts it and :func:`~firecron.core.pipeline_checks
    .problems` finds nothing; a schedule naming an invalid one is not also reported.
    """
    valid: dict[str, PipelineSpec] = {}
    invalid: set[str] = set()
    if raw is None:
        return valid, invalid
    if not isinstance(raw, list):
        errors.append("'pipelines' must be a list")
        return valid, invalid
    first: dict[str, int] = {}
    for index, entry in enumerate(raw):
        raw_id = entry.get("id") if isinstance(entry, dict) else None
        label = _pipeline_label(index, raw_id)
        if isinstance(raw_id, str):
            seen = first.setdefault(raw_id, index)
            if seen != index:
                errors.append(f"{label}: duplicate id {raw_id!r} (first at pipelines[{seen}])")
                continue
        lines, refused = _pipeline_errors(entry, label)
        pipeline: PipelineSpec | None = None
        if not lines:
            pipeline = PipelineSpec.model_validate(entry, context=INPUT)
            lines = problems(
                pipeline, label, sinks=sinks, allow_private_targets=allow_private_targets
            )
        elif refused is not None:
            lines += _problems_of_the_rest(
                entry, label, refused, sinks=sinks, allow_private_targets=allow_private_targets
            )
        if lines or pipeline is None:
            errors.extend(lines)
            if isinstance(raw_id, str):
                invalid.add(raw_id)
            continue
        valid[pipeline.id] = _with_sinks(pipeline, sinks or {})
    return valid, invalid


def _pipeline_errors(entry: Any, label: str) -> tuple[list[str], set[int] | None]:
    """Why the model refuses pipeline ``entry``, one line each, naming the task of each
    task's error (``pipelines[0] (id=etl).tasks[2] (id=load): if: ...``).

    With the lines, the indexes of the refused tasks when nothing but tasks was refused
    (the other tasks can then still be judged), else None.
    """
    if not isinstance(entry, dict):
        return [f"{label}: must be a mapping, got {type(entry).__name__}"], None
    # Before pydantic's own walk, which recurses once per level (as for schedules).
    raw_tasks = entry.get("tasks")
    tasks = raw_tasks if isinstance(raw_tasks, list) else []
    deep = [("params", entry.get("params"))] + [
        (f"{task_label(i, t.get('id'))}: params", t.get("params"))
        for i, t in enumerate(tasks)
        if isinstance(t, dict)
    ]
    lines = [
        f"{label}.{where}: {problem}" if where != "params" else f"{label}: params: {problem}"
        for where, value in deep
        if (problem := params_depth_problem(value)) is not None
    ]
    if lines:
        return lines, None
    refused: set[int] | None = set()
    try:
        PipelineSpec.model_validate(entry, context=INPUT)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
                task = tasks[loc[1]] if loc[1] < len(tasks) else None
                task_id = task.get("id") if isinstance(task, dict) else None
                where = f"{label}.{task_label(loc[1], task_id)}"
                lines.append(f"{where}: {format_error(err, loc[2:])}")
                if refused is not None:
                    refused.add(loc[1])
            else:
                lines.append(f"{label}: {format_error(err)}")
                refused = None
    return lines, refused


def _problems_of_the_rest(
    entry: dict[str, Any],
    label: str,
    refused: set[int],
    *,
    sinks: dict[str, SinkConfig] | None,
    allow_private_targets: bool,
) -> list[str]:
    """:func:`~firecron.core.pipeline_checks.problems` of the tasks the model accepted, so
    that one ``validate`` names every problem even when some tasks are refused."""
    tasks = entry["tasks"]
    kept = [i for i in range(len(tasks)) if i not in refused]
    if not kept:
        return []
    rest = PipelineSpec.model_validate({**entry, "tasks": [tasks[i] for i in kept]}, context=INPUT)
    refused_ids = {
        task["id"] for i in refused if isinstance(task := tasks[i], dict) and "id" in task
    }
    return problems(
        rest,
        label,
        sinks=sinks,
        allow_private_targets=allow_private_targets,
        positions=kept,
        refused={i for i in refused_ids if isinstance(i, str)},
    )


def _with_sinks(pipeline: PipelineSpec, sinks: dict[str, SinkConfig]) -> PipelineSpec:
    """``pipeline`` with each notify task's sink definition in its ``sink_config``."""
    tasks = [
        task
        if task.notify is None
        else task.model_copy(update={"notify": _resolved(task.notify, sinks)})
        for task in pipeline.tasks
    ]
    return pipeline.model_copy(update={"tasks": tasks})


def _resolved(action: NotifyAction, sinks: dict[str, SinkConfig]) -> NotifyAction:
    return action.model_copy(update={"sink_config": sinks[action.sink]})


def _links(
    specs: list[ScheduleSpec],
    positions: dict[str, int],
    invalid_ids: set[str],
    pipelines: dict[str, PipelineSpec],
    invalid_pipelines: set[str],
    sinks: dict[str, SinkConfig] | None,
) -> list[str]:
    """What the schedules name that the file does not define, one line each: a pipeline
    target, a notify target's sink, a ``then`` step's schedule; and cycles of ``then``.

    Names of invalid entries count as defined: their own errors are reported already.
    """
    errors: list[str] = []
    chained: dict[str, list[str]] = {}
    for spec in specs:
        label = _label(positions[spec.id], spec.id)
        target = spec.target
        if (
            target.pipeline is not None
            and target.pipeline not in pipelines
            and target.pipeline not in invalid_pipelines
        ):
            errors.append(f"{label}: target.pipeline: unknown pipeline {target.pipeline!r}")
        if target.notify is not None and sinks is not None and target.notify.sink not in sinks:
            errors.append(f"{label}: target.notify.sink: unknown sink {target.notify.sink!r}")
        if not spec.then:
            continue
        nexts = chained[spec.id] = []
        for index, step in enumerate(spec.then):
            if step.schedule in positions:
                if step.schedule not in nexts:
                    nexts.append(step.schedule)
            elif step.schedule not in invalid_ids:
                errors.append(
                    f"{label}: then[{index}].schedule: unknown schedule {step.schedule!r}"
                )
    if chained:
        order = sorted(chained, key=positions.__getitem__)
        for cycle in cycles(order, chained):
            errors.append(
                f"{_label(positions[cycle[0]], cycle[0])}: then: the chain is a cycle: "
                + " -> ".join(cycle)
            )
    return errors


def _wait_params(
    specs: list[ScheduleSpec],
    positions: dict[str, int],
    pipelines: dict[str, PipelineSpec],
    raw: Any,
) -> list[str]:
    """The params that the key templates of waits in pipelines name and that runs will
    not have, one line each: a gate (``wait:``) on a schedule that targets a pipeline
    (its runs' params are the pipeline's under the schedule's), and a pipeline's wait
    tasks (see :func:`~firecron.core.pipeline_checks.wait_param_problems`), judged
    against each schedule that targets the pipeline. A pipeline no schedule targets has
    only its templates' syntax checked (its warning says it never runs).
    """
    targeting: dict[str, list[ScheduleSpec]] = {}
    errors: list[str] = []
    for spec in specs:
        pipeline = pipelines.get(spec.target.pipeline or "")
        if pipeline is None:
            continue
        targeting.setdefault(pipeline.id, []).append(spec)
        if spec.wait is not None and template_problem(spec.wait.key) is None:
            problem = template_problem(spec.wait.key, {**pipeline.params, **spec.params})
            if problem is not None:
                errors.append(f"{_label(positions[spec.id], spec.id)}: wait.key: {problem}")
    # The valid pipelines' places in the file (their labels): first occurrence of each id.
    index_of: dict[str, int] = {}
    for index, entry in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            index_of.setdefault(entry["id"], index)
    for pipeline_id, schedules in targeting.items():
        pipeline = pipelines[pipeline_id]
        if any(task.wait is not None for task in pipeline.tasks):
            label = _pipeline_label(index_of[pipeline_id], pipeline_id)
            errors.extend(wait_param_problems(pipeline, label, schedules))
    return errors


def _null_warnings(
    specs: list[ScheduleSpec], positions: dict[str, int], pipelines: dict[str, PipelineSpec]
) -> list[str]:
    """A warning for each wait whose ``until`` errs on null, the value of a missing key.

    Such a condition (``value.rows > 0``) fails its wait the first time it looks before
    the key is written, which a wait on data that is not there yet usually does; a
    condition that tests for null first (``value != null && value.rows > 0``) waits
    instead. It is valid (the key may always exist before the wait begins), so it is a
    warning. Only files with waits pay for it (one evaluation per distinct condition).
    """
    from firecron.core.conditions import ConditionError

    verdicts: dict[str, str | None] = {}

    def problem(wait: WaitSpec) -> str | None:
        if wait.until not in verdicts:
            try:
                holds(wait, None)
            except ConditionError as exc:
                verdicts[wait.until] = (
                    f"until {wait.until!r} fails the wait while the key is missing (value is "
                    f"null: {exc}); test for null first, as in 'value != null && ...'"
                )
            else:
                verdicts[wait.until] = None
        return verdicts[wait.until]

    warnings: list[str] = []
    for spec in specs:
        for field_name, wait in (("wait", spec.wait), ("target.wait", spec.target.wait)):
            if wait is not None and (line := problem(wait)) is not None:
                warnings.append(f"{_label(positions[spec.id], spec.id)}: {field_name}: {line}")
    for index, pipeline in enumerate(pipelines.values()):  # no errors: every one is valid
        for task_index, task in enumerate(pipeline.tasks):
            if task.wait is not None and (line := problem(task.wait)) is not None:
                label = _pipeline_label(index, pipeline.id)
                warnings.append(f"{label}.{task_label(task_index, task.id)}: wait: {line}")
    return warnings


def _linked(
    specs: list[ScheduleSpec],
    pipelines: dict[str, PipelineSpec],
    sinks: dict[str, SinkConfig],
) -> list[ScheduleSpec]:
    """``specs`` with their snapshots: a pipeline target's ``pipeline_spec`` (None for any
    other target, whatever the entry said) and a notify target's ``sink_config``.

    In place; only the specs whose snapshot differs are copied (rare: most schedules
    target a URL or a function, so a large file pays one comparison per schedule).
    """
    for index, spec in enumerate(specs):
        target = spec.target
        wanted = pipelines[target.pipeline] if target.pipeline is not None else None
        update: dict[str, Any] = {}
        if spec.pipeline_spec is not wanted and spec.pipeline_spec != wanted:
            update["pipeline_spec"] = wanted
        if target.notify is not None:
            action = _resolved(target.notify, sinks)
            if action != target.notify:
                update["target"] = target.model_copy(update={"notify": action})
        if update:
            specs[index] = spec.model_copy(update=update)
    return specs


@dataclass(frozen=True, slots=True)
class _Checked:
    """One entry, validated: its spec (None when invalid) and its error lines."""

    spec: ScheduleSpec | None
    errors: tuple[str, ...]
    raw_id: str | None = None
    """The entry's id when it is invalid and names one (a ``then`` naming it is not
    also reported as unknown)."""


def _check_entry(
    index: int,
    entry: Any,
    *,
    now: datetime | None,
    allow_private_targets: bool,
    function_timeouts: Mapping[str, timedelta],
) -> _Checked:
    """Validate entry ``index``; its error lines name it (see the module docstring).

    A valid spec can still carry errors: the reasons it could never work.
    """
    if not isinstance(entry, dict):
        return _Checked(
            None, (f"{_label(index, None)}: must be a mapping, got {type(entry).__name__}",)
        )
    try:
        spec = ScheduleSpec.model_validate(entry, context=INPUT)
    except ValidationError as exc:
        raw_id = entry.get("id")
        label = _label(index, raw_id)
        return _Checked(
            None,
            tuple(f"{label}: {line}" for line in format_validation_error(exc)),
            raw_id if isinstance(raw_id, str) else None,
        )
    problems = unworkable(
        spec,
        now=now,
        allow_private_targets=allow_private_targets,
        function_timeouts=function_timeouts,
    )
    return _Checked(spec, tuple(f"{_label(index, spec.id)}: {line}" for line in problems))


def _label(index: int, schedule_id: Any) -> str:
    """``schedules[3] (id=x)``: how an error names its entry (built only for errors)."""
    label = f"schedules[{index}]"
    return f"{label} (id={schedule_id})" if isinstance(schedule_id, str) else label


def _routed(specs: list[ScheduleSpec], notifications: Notifications) -> list[ScheduleSpec]:
    """``specs`` with their resolved notification routes in ``notify``.

    The schedules of a large file mostly share their routes (the log route alone, by
    default): equal route lists are built once and shared, which keeps a copy of the
    same routes out of every schedule.
    """
    # A route's sink is the one its name gives in ``notifications``.
    shared: dict[tuple[tuple[str, tuple[str, ...]], ...], list[Route]] = {}
    same = resolve_routes(notifications, "", {}) if not notifications.rules else None
    # In place, so that each schedule's old copy is freed as the new one is made.
    for index, spec in enumerate(specs):
        routes = same
        if routes is None:
            routes = resolve_routes(notifications, spec.id, spec.labels)
            key = tuple((r.sink_name, r.types) for r in routes)
            routes = shared.setdefault(key, routes)
        specs[index] = spec.model_copy(update={"notify": routes})
    return specs
