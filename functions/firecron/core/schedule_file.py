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
- Valid entries that can never work are errors too (:mod:`firecron.core.refusals`): a
  target or webhook sink the SSRF guard always refuses, and an ``at`` that can no
  longer fire. Those checks depend on ``now`` and on whether private targets are
  allowed, which the caller passes in (the core reads no clock or environment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from firecron.core.events import Notifications, Route, resolve_routes
from firecron.core.models import ScheduleSpec
from firecron.core.refusals import unworkable, unworkable_sinks
from firecron.errors import InvalidInputError

__all__ = ["ScheduleFile", "ScheduleFileError", "format_validation_error", "parse_schedule_file"]

_TOP_LEVEL_KEYS = {"schedules", "notifications"}


class ScheduleFileError(InvalidInputError):
    """A schedules file is invalid; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"{source}: {len(errors)} {noun}\n" + "\n".join(errors))


@dataclass(frozen=True)
class ScheduleFile:
    """A valid schedules document; each spec's ``notify`` holds its resolved routes."""

    schedules: list[ScheduleSpec]
    notifications: Notifications


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


def _load_direct(loader: Any) -> Any:
    """Build the document straight from ``loader``'s events, without a node graph.

    PyYAML composes a node object per scalar and collection before constructing
    anything, which for a file of 100,000 schedules cost most of the time and memory
    of ``validate``. This builds the same dicts, lists and scalars from the event
    stream, resolving and constructing scalars exactly as the loader does. Anchors,
    aliases, tags on collections, merge keys, collection keys and several documents
    raise :class:`_Unusual`, and the caller then uses the loader's own path, so every
    document still means (and fails) what it meant before.
    """
    get = loader.get_event
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    resolved: dict[str, str] = {}  # plain scalar -> tag (keys and values repeat a lot)
    get()  # StreamStartEvent
    if isinstance(get(), yaml.StreamEndEvent):
        return None
    containers: list[Any] = []
    keys: list[Any] = []  # per open mapping, the key waiting for its value
    root: Any = None
    while True:
        event = get()
        kind = type(event)
        if kind is yaml.ScalarEvent:
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
                        tag = resolve(yaml.ScalarNode, value, implicit)
                        if len(resolved) < _RESOLVED_CACHE_SIZE:
                            resolved[value] = tag
                else:
                    tag = resolve(yaml.ScalarNode, value, implicit)
            if tag != _STR_TAG:
                construct = constructors.get(tag)
                if construct is None or tag == "tag:yaml.org,2002:merge":
                    raise _Unusual
                node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
                value = construct(loader, node)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.anchor is not None or event.tag not in _PLAIN_COLLECTION_TAGS:
                raise _Unusual
            containers.append({} if kind is yaml.MappingStartEvent else [])
            keys.append(_NO_KEY)
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            value = containers.pop()
            keys.pop()
        elif kind is yaml.DocumentEndEvent:
            break
        else:  # AliasEvent
            raise _Unusual
        if not containers:
            root = value
            continue
        parent = containers[-1]
        if type(parent) is list:
            parent.append(value)
        elif keys[-1] is _NO_KEY:
            if isinstance(value, list | dict):
                raise _Unusual  # PyYAML reports unhashable keys itself
            keys[-1] = value
        else:
            parent[keys[-1]] = value
            keys[-1] = _NO_KEY
    if not isinstance(get(), yaml.StreamEndEvent):
        raise _Unusual  # several documents: PyYAML's error says so
    return root


def _load_yaml(text: str) -> Any:
    """``yaml.load(text, Loader=_Loader)``, in a fraction of its time and memory."""
    loader = _Loader(text)
    try:
        return _load_direct(loader)
    except _Unusual:
        pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        # Drop the model-type segments pydantic inserts for tagged unions and the like.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc(loc)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind == "extra_forbidden":
            line = f"unknown key {where.rsplit('.', 1)[-1]!r}" if where else "unknown key"
            parent = where.rsplit(".", 1)[0] if "." in where else ""
            lines.append(f"{parent}: {line}" if parent else line)
            continue
        if kind == "missing":
            lines.append(f"{where}: required")
            continue
        value = err.get("input")
        if kind != "value_error" and isinstance(value, str | int | float | bool):
            msg = f"{msg} (got {value!r})"
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def parse_schedule_file(
    text: str,
    source: str = "<schedules>",
    *,
    now: datetime | None = None,
    allow_private_targets: bool = True,
) -> ScheduleFile:
    """Parse and validate a schedules document; raises :class:`ScheduleFileError`.

    ``now`` (aware) enables the checks that depend on the time, such as an ``at`` older
    than its misfire grace; ``None`` skips them. ``allow_private_targets`` is the
    deployment's ``FIRECRON_ALLOW_PRIVATE_TARGETS``: with ``False``, ``http``, loopback
    and private targets are refused too; the metadata server and link-local addresses
    are refused either way. The CLI passes both.
    """
    try:
        doc = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScheduleFileError(source, [f"invalid YAML{where}: {problem}"]) from None
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
    raw_notifications = doc.get("notifications")
    if raw_notifications is not None:
        try:
            notifications = Notifications.model_validate(raw_notifications)
        except ValidationError as exc:
            errors.extend(f"notifications.{line}" for line in format_validation_error(exc))
        else:
            for index, rule in enumerate(notifications.rules):
                if rule.sink not in notifications.sinks:
                    errors.append(f"notifications.rules[{index}].sink: unknown sink {rule.sink!r}")
            errors.extend(
                f"notifications.{line}"
                for line in unworkable_sinks(
                    notifications, allow_private_targets=allow_private_targets
                )
            )

    specs: list[ScheduleSpec] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        # A raw entry is not needed once validated: dropping each as we go keeps the
        # peak memory of a large file to about one copy of it.
        entries[index] = None
        if not isinstance(entry, dict):
            errors.append(f"{_label(index, entry)}: must be a mapping, got {type(entry).__name__}")
            continue
        try:
            spec = ScheduleSpec.model_validate(entry)
        except ValidationError as exc:
            label = _label(index, entry)
            errors.extend(f"{label}: {line}" for line in format_validation_error(exc))
            continue
        if spec.id in seen:
            errors.append(
                f"{_label(index, entry)}: duplicate id {spec.id!r}"
                f" (first at schedules[{seen[spec.id]}])"
            )
            continue
        seen[spec.id] = index
        errors.extend(
            f"{_label(index, entry)}: {line}"
            for line in unworkable(spec, now=now, allow_private_targets=allow_private_targets)
        )
        specs.append(spec)
    if errors:
        raise ScheduleFileError(source, errors)
    return ScheduleFile(schedules=_routed(specs, notifications), notifications=notifications)


def _label(index: int, entry: Any) -> str:
    """``schedules[3] (id=x)``: how an error names its entry (built only for errors)."""
    label = f"schedules[{index}]"
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        label += f" (id={entry['id']})"
    return label


def _routed(specs: list[ScheduleSpec], notifications: Notifications) -> list[ScheduleSpec]:
    """``specs`` with their resolved notification routes in ``notify``.

    The schedules of a large file mostly share their routes (the log route alone, by
    default): equal route lists are built once and shared, which keeps a copy of the
    same routes out of every schedule.
    """
    # A route's sink is the one its name gives in ``notifications``.
    shared: dict[tuple[tuple[str, tuple[str, ...]], ...], list[Route]] = {}
    out: list[ScheduleSpec] = []
    for spec in specs:
        routes = resolve_routes(notifications, spec.id, spec.labels)
        key = tuple((r.sink_name, r.types) for r in routes)
        routes = shared.setdefault(key, routes)
        out.append(spec.model_copy(update={"notify": routes}))
    return out
