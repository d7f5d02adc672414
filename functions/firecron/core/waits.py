"""Waits on the state collection: key templates and conditions. Pure; time is passed in.

A wait (:class:`~firecron.core.models.WaitSpec`) names a key by a template and ends
when its condition (CEL over ``value``) holds. This module renders templates
(:func:`render_key`), checks them when a file is validated (:func:`template_problem`),
and judges a value (:func:`holds`). The lifecycle of a waiting run (begin, look, release,
time out, fail) is in :mod:`firecron.core.lifecycle`; the looking itself, on the
watchdog's deadline or on a write to the key, in :mod:`firecron.waits`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from firecron.core.models import JsonValue, WaitSpec
from firecron.core.render import rfc3339
from firecron.core.state import key_problem

__all__ = ["WAIT_VARIABLES", "holds", "render_key", "template_problem", "until_problem"]

WAIT_VARIABLES = frozenset({"value"})
"""The variables a wait's ``until`` may name."""

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUILTINS = frozenset({"date", "scheduled_for"})


def render_key(
    template: str,
    params: Mapping[str, JsonValue],
    scheduled_for: datetime,
    timezone: str,
) -> str:
    """The key ``template`` names for a run: ``{date}`` is ``scheduled_for``'s date in
    ``timezone`` (``YYYY-MM-DD``), ``{scheduled_for}`` its RFC 3339 UTC form, and any other
    ``{NAME}`` the run's param ``NAME`` (a string or a number). Raises ValueError (one
    line) for a param that is missing or of another type, and for a key that is not
    valid once rendered."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "date":
            return scheduled_for.astimezone(ZoneInfo(timezone)).date().isoformat()
        if name == "scheduled_for":
            return rfc3339(scheduled_for)
        if name not in params:
            raise ValueError(f"wait key {template!r}: no param {name!r} in this run")
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(
                f"wait key {template!r}: param {name!r} is {_json_kind(value)}, "
                "not a string or a number"
            )
        return str(value)

    key = _PLACEHOLDER.sub(fill, template)
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"wait key {template!r} renders {key!r}: {problem}")
    return key


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def template_problem(template: str, params: Mapping[str, JsonValue] | None = None) -> str | None:
    """Why ``template`` can never name a valid key (one line), or None.

    A brace that is not part of a ``{NAME}`` placeholder, or a literal part with a
    character keys cannot hold, is a problem. With ``params`` (the values the run will
    have), a placeholder naming none of them, nor ``date`` or ``scheduled_for``, is one too.
    """
    literal = _PLACEHOLDER.sub("x", template)
    if "{" in literal or "}" in literal:
        return f"key {template!r}: braces must enclose a param name, {{date}} or {{scheduled_for}}"
    problem = key_problem(literal)
    if problem is not None:
        # Name the template as written, not the stand-in its placeholders became.
        return problem.replace(repr(literal), repr(template))
    if params is not None:
        for name in _PLACEHOLDER.findall(template):
            if name not in _BUILTINS and name not in params:
                return f"key {template!r}: no param {name!r} (nor date or scheduled_for)"
    return None


def until_problem(wait: WaitSpec) -> str | None:
    """Why ``wait.until`` does not compile (one line), or None."""
    from firecron.core.conditions import ConditionError, compile_condition

    try:
        compile_condition(wait.until, WAIT_VARIABLES)
    except ConditionError as exc:
        return str(exc)
    return None


def holds(wait: WaitSpec, value: JsonValue) -> bool:
    """Whether ``wait.until`` holds for ``value`` (null for a missing key); raises
    :class:`~firecron.core.conditions.ConditionError` (one line) when it cannot be
    evaluated or is not a bool."""
    from firecron.core.conditions import compile_condition

    return compile_condition(wait.until, WAIT_VARIABLES).evaluate({"value": value})
