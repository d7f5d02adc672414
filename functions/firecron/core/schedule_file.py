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

from firecron.core.events import Notifications, resolve_routes
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


class _Loader(yaml.SafeLoader):
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
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
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
        label = f"schedules[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            label += f" (id={entry['id']})"
        if not isinstance(entry, dict):
            errors.append(f"{label}: must be a mapping, got {type(entry).__name__}")
            continue
        try:
            spec = ScheduleSpec.model_validate(entry)
        except ValidationError as exc:
            errors.extend(f"{label}: {line}" for line in format_validation_error(exc))
            continue
        if spec.id in seen:
            errors.append(
                f"{label}: duplicate id {spec.id!r} (first at schedules[{seen[spec.id]}])"
            )
            continue
        seen[spec.id] = index
        errors.extend(
            f"{label}: {line}"
            for line in unworkable(spec, now=now, allow_private_targets=allow_private_targets)
        )
        specs.append(spec)
    if errors:
        raise ScheduleFileError(source, errors)
    routed = [
        spec.model_copy(update={"notify": resolve_routes(notifications, spec.id, spec.labels)})
        for spec in specs
    ]
    return ScheduleFile(schedules=routed, notifications=notifications)
