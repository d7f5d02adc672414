"""The text of a ``notify`` message: placeholders filled from the run. Pure.

A message is user text (``notify: {sink, text}`` in the schedules file), so it is never
passed to :meth:`str.format`: braces that are not one of the placeholders below stay as
they are (a JSON snippet or ``{}`` in a message is fine), and a value put in is never
read again for placeholders (a param holding ``{run_id}`` shows literally).

Placeholders:

- ``{run_id}``: the run sending the message;
- ``{pipeline_run_id}``: its pipeline run (``parent_run_id``), or the run itself when it
  is not a task of a pipeline;
- ``{schedule_id}``: the schedule the run belongs to;
- ``{task}``: the task id, for a task of a pipeline;
- ``{param.NAME}``: the run's param ``NAME`` (the whole text after ``param.``, dots
  included: params are one flat mapping), a string as it is, any other value as JSON.

A placeholder without a value (an unknown param, ``{task}`` outside a pipeline) is left
as it is, so the message shows what was missing instead of silently dropping it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from firecron.core.runs import Run

__all__ = ["render_message"]

# One pass over the text: the names are fixed, a param name is anything but braces.
_PLACEHOLDER = re.compile(r"\{(run_id|pipeline_run_id|schedule_id|task|param\.([^{}]+))\}")


def _value(value: object) -> str:
    """A param as message text: a string as it is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def render_message(text: str, run: Run, *, escape: Callable[[str], str] | None = None) -> str:
    """``text`` with its placeholders (see the module docstring) filled from ``run``.

    ``escape``, when given, is applied to each value put in and never to ``text``
    itself: a Slack sink escapes what comes from the run (a param may hold ``<!channel>``)
    while the message's own markup, written by the schedules file's author, stays markup.
    """

    def fill(match: re.Match[str]) -> str:
        name, param = match.group(1), match.group(2)
        value: str | None
        if param is not None:
            value = _value(run.params[param]) if param in run.params else None
        elif name == "run_id":
            value = run.id
        elif name == "pipeline_run_id":
            value = run.parent_run_id or run.id
        elif name == "schedule_id":
            value = run.schedule_id
        else:  # task
            value = run.task
        if value is None:
            return match.group(0)
        return escape(value) if escape is not None else value

    return _PLACEHOLDER.sub(fill, text)
