"""CEL conditions: the ``if:`` of a pipeline task. Pure (a library call, no I/O).

:func:`compile_condition` turns the text into a :class:`Condition` or raises
:class:`ConditionError` with one line naming the problem; ``firecron validate`` compiles
every ``if`` so that a bad expression is exit 2 with its task named. Compiled conditions
are cached by text. :meth:`Condition.evaluate` runs it over the variables and returns a
bool, or raises :class:`ConditionError` (one line) on a runtime error and when the result
is not a bool: a condition that is neither true nor false is a mistake, never a guess.

Variables of a task's ``if`` (:data:`TASK_VARIABLES`):

- ``params``: the pipeline run's params (the schedule's over the pipeline's; a map);
- ``tasks``: its upstream tasks by id, each ``{"state": "succeeded" | ..., "output": JSON}``
  (``output`` is null when the task returned nothing, was skipped or failed).

A condition naming any other variable, or ``tasks["x"]`` / ``tasks.x`` for a task that is
not upstream of it, is refused when compiled (see :func:`compile_condition` and
:func:`referenced_tasks`), since either could only fail at run time.

The implementation: ``common-expression-language`` (module ``cel``, Rust bindings of the
``cel`` crate), chosen over ``cel-python`` (module ``celpy``, pure Python). Measured on this
project's machine (Python 3.11, x86_64), for ``params.region == "eu" &&
tasks["extract"].output.rows > 0``:

- version: 0.10.0 (released 2026-09, 16 releases) vs 0.5.0 (released 2026-01, 10 releases);
- compile: 15-30 us vs 165 us;
- evaluate: 11 us vs 165 us (plus 30 us to convert the JSON into celpy's own types);
- import: 105 ms (its package also imports its CLI: typer, rich, prompt-toolkit) vs 50-70
  ms (lark, pendulum, google-re2);
- wheel: 1.8 MB (7 MB installed), plus typer and prompt-toolkit (rich, click and pygments
  are firecron dependencies already) vs 85 KB (0.8 MB), plus lark, pendulum, google-re2,
  jmespath and python-dateutil (about 7 MB installed);
- a syntax error: ``ERROR: <input>:1:18: Syntax error: mismatched input '<EOF>' expecting
  {...}``, a position and a reason, vs a ``CELParseError`` holding only the text and a caret;
- a runtime type error: ``TypeError: No such overload: the operation is not defined for the
  given operand types. ...`` vs a ``CELEvalError`` whose text is the repr of nested tuples
  (and, for an unknown variable, of the whole activation);
- map and field access (``params.x``, ``m["k"]``, ``has()``, ``in``, ``size``, the
  macros): correct in both; but ``1 == 1.0`` and ``1 < 1.5`` hold in the Rust one (the
  spec's heterogeneous numeric comparison) and are errors in cel-python.

Why: JSON does not say whether ``12`` is an int or a double, and cel-python refuses to
compare the two (``rows == 12`` is an error when a worker returned ``12.0``, ``rows > 0.5``
when it returned ``12``); the Rust one compares numbers across types as the CEL spec says.
Its errors carry a position and a reason that fit on one line, it is 10-15 times faster, and
it is the more actively released. Its cost is the import (about 100 ms), paid only by a process that
compiles a condition: ``cel`` is imported on first use, not with this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from firecron.core.models import JsonValue

if TYPE_CHECKING:
    import cel

__all__ = [
    "TASK_VARIABLES",
    "Condition",
    "ConditionError",
    "compile_condition",
    "referenced_tasks",
]

TASK_VARIABLES = frozenset({"params", "tasks"})
"""The variables a task's ``if`` may name."""

# CEL's type names parse as identifiers (``type(x) == int``); they are not variables.
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn"}
)
# The variables that macros bind (``tasks.exists(t, ...)``, ``m.all(k, v, ...)``): the
# library lists them among the referenced names. Matching any ``.f(x,`` is lenient on
# purpose: a name wrongly taken as bound only means a typo is caught at run time instead.
_BOUND = re.compile(r"\.\s*[A-Za-z_]\w*\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?")
# String literals, so that references are looked for outside them only: optional r/b
# prefixes, triple or single quotes, backslash escapes.
_STRING = re.compile(
    r"""[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
)
_TASK_INDEX = re.compile(r"""\btasks\s*\[\s*(?:"((?:\\.|[^"\\])*)"|'((?:\\.|[^'\\])*)')\s*\]""")
_TASK_FIELD = re.compile(r"\btasks\s*\.\s*([A-Za-z_]\w*)\b(?!\s*\()")
_SYNTAX = re.compile(r"ERROR: <input>:(\d+):(\d+): (?:Syntax error: )?(.*)")
_LONG_EXPECTING = re.compile(r" expecting \{[^}]*,[^}]*,[^}]*,[^}]*\}")
_MAX_LINE = 200


class ConditionError(ValueError):
    """A condition that does not compile, fails at run time or is not a bool (one line)."""


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled CEL condition; build it with :func:`compile_condition`."""

    text: str
    """The expression as written."""
    _program: cel.Program

    def evaluate(self, variables: Mapping[str, JsonValue]) -> bool:
        """The condition's value over ``variables`` (JSON values by name).

        Raises :class:`ConditionError` with one line when evaluation fails (an unknown
        key, a type mismatch, a division by zero...) or the result is not a bool.
        """
        try:
            result: Any = self._program.execute(dict(variables))
        # The library raises KeyError, IndexError, TypeError, RuntimeError, ZeroDivisionError
        # or OverflowError, undocumented as a set: every one of them is the condition's
        # failure, which the caller records on the task's run.
        except Exception as exc:
            raise ConditionError(_runtime_line(exc)) from None
        if not isinstance(result, bool):
            raise ConditionError(
                f"the condition must be true or false, got {_kind(result)} {_clip(repr(result))}"
            )
        return result


@functools.lru_cache(maxsize=1024)
def compile_condition(text: str, variables: frozenset[str] = TASK_VARIABLES) -> Condition:
    """Compile ``text``; raise :class:`ConditionError` (one line) when it is not valid CEL
    or names a variable outside ``variables``.

    Cached by ``(text, variables)``: a pipeline's conditions are compiled once per process
    however many runs judge them. Errors are not cached (each raises anew).
    """
    import cel  # ~100 ms: only processes that meet a condition pay for it

    try:
        program = cel.compile(text)
    except ValueError as exc:
        raise ConditionError(_syntax_line(str(exc))) from None
    bound = {name for match in _BOUND.finditer(text) for name in match.groups() if name}
    unknown = sorted(set(program.variables()) - variables - _TYPE_NAMES - bound)
    if unknown:
        known = " and ".join(sorted(variables))
        names = ", ".join(repr(n) for n in unknown)
        noun = "variable" if len(unknown) == 1 else "variables"
        which = "the variables are" if len(variables) > 1 else "the only variable is"
        raise ConditionError(f"unknown {noun} {names} ({which} {known})")
    return Condition(text, program)


def referenced_tasks(text: str) -> set[str]:
    """The task ids ``text`` names as ``tasks["id"]``, ``tasks['id']`` or ``tasks.id``.

    Outside string literals only. A key computed at run time (``tasks[params.t]``) is not
    seen: this serves validation, which refuses the references it can see.
    """
    strings = [m.span() for m in _STRING.finditer(text)]

    def outside(start: int) -> bool:
        return not any(a <= start < b for a, b in strings)

    found = {
        m.group(1) if m.group(1) is not None else m.group(2)
        for m in _TASK_INDEX.finditer(text)
        if outside(m.start())
    }
    found |= {m.group(1) for m in _TASK_FIELD.finditer(text) if outside(m.start())}
    return found


def _syntax_line(message: str) -> str:
    """One line from the library's parse error: where (the first error) and why."""
    if "Recursion" in message or "recursion" in message:
        return "syntax error: nested too deeply"
    match = _SYNTAX.search(message)
    if match is None:
        first = message.strip().splitlines()[0] if message.strip() else "cannot parse"
        return _clip(f"syntax error: {first}")
    line, column, reason = match.groups()
    reason = _LONG_EXPECTING.sub("", reason.strip())
    reason = reason.replace("mismatched input '<EOF>'", "unexpected end of expression")
    where = f"column {column}" if line == "1" else f"line {line}, column {column}"
    return _clip(f"syntax error at {where}: {reason}")


def _runtime_line(exc: Exception) -> str:
    """One line for an evaluation error: a missing key by name, else the first sentence."""
    if isinstance(exc, KeyError) and exc.args:
        return _clip(f"no such key {exc.args[0]!r}")
    text = " ".join(str(exc).split())
    first = text.split(". ", 1)[0].rstrip(".")
    return _clip(first or type(exc).__name__)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "map", list: "list", str: "string", int: "int", float: "double"}.get(
        type(value), type(value).__name__
    )


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."
