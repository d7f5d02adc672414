"""What both store backends share beyond the codec: the namespace rule, run merging and
the checks every backend makes before it writes (run changes, spawns, marks, state
entries).

``settings.py`` checks ``FIRECRON_NAMESPACE`` against the same :data:`NAMESPACE_PATTERN`,
so a namespace the settings accept is one every backend accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import ValidationError

from firecron.core.models import SCHEDULE_ID_PATTERN, JsonValue
from firecron.core.runs import Run, RunState
from firecron.core.state import KEY_PATTERN, MAX_KEY_CHARS, encode_value, key_problem
from firecron.errors import Fenced, InvalidInputError

__all__ = [
    "MAX_SPAWN_RUNS",
    "NAMESPACE_PATTERN",
    "NAMESPACE_RULE",
    "check_mark",
    "check_namespace",
    "check_run_changes",
    "check_spawn",
    "check_state_key",
    "check_state_version",
    "encode_state_value",
    "merge_run",
    "state_key_range",
    "valid_namespace",
]

MAX_SPAWN_RUNS: Final = 499
"""Most runs one :meth:`~firecron.store.base.Store.spawn` creates: a Firestore commit
holds 500 writes, and the spawn's update of its own run is one of them."""

# Task ids are schedule-id shaped (models.TaskSpec); a mark's task becomes a JSON path
# (SQLite) or a field path (Firestore), so nothing else may reach either.
_TASK_ID: Final = re.compile(SCHEDULE_ID_PATTERN)

NAMESPACE_PATTERN: Final = r"^[a-z][a-z0-9_]{0,40}$"
"""Valid namespaces, matched against the whole name (a trailing newline is no match).

The collections or tables are ``{namespace}_schedules`` and ``{namespace}_runs``, and
SQLite puts the name in its statements unquoted, so only these characters are allowed.
``infra/variables.tf`` validates the Terraform variable with the same text (in RE2,
where ``$`` is the end of the text).
"""

NAMESPACE_RULE: Final = "use a lowercase letter, then up to 40 lowercase letters, digits or '_'"
""":data:`NAMESPACE_PATTERN` in words, for error messages."""

_NAMESPACE: Final = re.compile(NAMESPACE_PATTERN)


def valid_namespace(namespace: str) -> bool:
    """Whether ``namespace`` matches :data:`NAMESPACE_PATTERN`."""
    # fullmatch: with match, "$" would also accept the name followed by a newline.
    return _NAMESPACE.fullmatch(namespace) is not None


def check_namespace(namespace: str) -> None:
    """Raise :class:`InvalidInputError` (one line naming it) unless ``namespace`` is valid."""
    if not valid_namespace(namespace):
        raise InvalidInputError(f"invalid namespace {namespace!r}: {NAMESPACE_RULE}")


def check_run_changes(run_id: str, changes: Mapping[str, Any], op: str = "update_run") -> None:
    """Refuse, before any read or write, ``changes`` that no stored run could take.

    Raises :class:`InvalidInputError`, its message naming ``op`` and the run, when they
    name a field :class:`Run` does not have, change the run's ``id`` or set its marks
    (``upstream``: only ``mark_upstream`` writes them). Their values are judged later,
    by :func:`merge_run`.
    """
    unknown = sorted(set(changes) - set(Run.model_fields))
    if unknown:
        raise InvalidInputError(f"{op} {run_id!r}: unknown run field(s) {', '.join(unknown)}")
    if "id" in changes and changes["id"] != run_id:
        raise InvalidInputError(f"{op} {run_id!r}: a run's id cannot change")
    # Marks are written one by one by mark_upstream, never as a whole: a whole map
    # written here could drop a mark written concurrently (Firestore keeps them apart).
    if "upstream" in changes:
        raise InvalidInputError(f"{op} {run_id!r}: upstream is written by mark_upstream only")


def check_spawn(
    current: Run, expect_states: Sequence[RunState], changes: Mapping[str, Any], runs: Sequence[Run]
) -> bool:
    """Refuse, before any write, a :meth:`~firecron.store.base.Store.spawn` no store could
    apply; return whether ``current``'s state is in ``expect_states``.

    Raises :class:`InvalidInputError` (one line) for bad ``changes`` (as
    :func:`check_run_changes`), a ``current`` without a version, more than
    :data:`MAX_SPAWN_RUNS` runs, or a run id given twice (or equal to ``current``'s).
    False means the spawn cannot apply (the caller returns None, writing nothing).
    """
    check_run_changes(current.id, changes, "spawn")
    if current.version is None:
        raise InvalidInputError(f"spawn {current.id!r}: 'current' carries no version")
    if len(runs) > MAX_SPAWN_RUNS:
        raise InvalidInputError(
            f"spawn {current.id!r}: {len(runs)} runs, at most {MAX_SPAWN_RUNS} per spawn"
        )
    seen = {current.id}
    for run in runs:
        if run.id in seen:
            raise InvalidInputError(f"spawn {current.id!r}: run {run.id!r} appears twice")
        seen.add(run.id)
    return current.state in {RunState(state) for state in expect_states}


def check_mark(run_id: str, task: str) -> None:
    """Raise :class:`InvalidInputError` unless ``task`` is a valid task id (see models.TaskSpec)."""
    if _TASK_ID.fullmatch(task) is None:
        raise InvalidInputError(
            f"mark_upstream {run_id!r}: invalid task id {task!r}: use lowercase letters,"
            " digits, '_' or '-', starting with a letter or digit, at most 63"
        )


def merge_run(run_id: str, base: Run, changes: Mapping[str, Any], op: str = "update_run") -> Run:
    """``base`` with ``changes`` applied, validated as a whole; its ``version`` is unset
    (``Run.version`` is left out of dumps), for the caller to set once written.

    ``model_copy(update=...)`` does not validate, so a bad value would be stored; this
    raises :class:`InvalidInputError` instead, one line naming the first field at fault.
    """
    try:
        return Run.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ())) or "value"
        raise InvalidInputError(
            f"{op} {run_id!r}: invalid changes: {where}: {error.get('msg', 'invalid')}"
        ) from None


# -- state entries -------------------------------------------------------------------

_AFTER_EVERY_KEY_CHAR: Final = "~"
"""A character above every one a key may hold (``z``, 0x7A, is the highest), so the
keys starting with ``p`` are exactly those ``k`` with ``p <= k < p + "~"``."""


def check_state_key(key: str) -> None:
    """Raise :class:`InvalidInputError` (one line, from :func:`~firecron.core.state.key_problem`)
    unless ``key`` is a valid state key."""
    problem = key_problem(key)
    if problem is not None:
        raise InvalidInputError(f"invalid state {problem}")


def encode_state_value(key: str, value: JsonValue) -> str:
    """``value`` as the JSON text the stores keep (:func:`~firecron.core.state.encode_value`);
    :class:`InvalidInputError` (one line naming the key) when it cannot be stored."""
    try:
        return encode_value(value)
    except ValueError as exc:
        raise InvalidInputError(f"state key {key!r}: {exc}") from None


def check_state_version(op: str, key: str, if_version: int | None, *, lowest: int) -> None:
    """Raise :class:`InvalidInputError` unless ``if_version`` is None or an integer of at
    least ``lowest`` (0 for a write, where 0 means "create only"; 1 for a delete)."""
    if if_version is None:
        return
    if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < lowest:
        raise InvalidInputError(
            f"{op} {key!r}: if_version must be an integer >= {lowest}, got {if_version!r}"
        )


def check_fence(op: str, key: str, fence: Run | None) -> None:
    """Raise :class:`InvalidInputError` unless ``fence`` is None or a run read from a store
    (it carries the version a fenced write is checked against)."""
    if fence is not None and not fence.version:
        raise InvalidInputError(f"{op} {key!r}: the fence run {fence.id!r} carries no version")


def fence_refused(key: str, fence: Run) -> Fenced:
    """The error of a fenced write whose run changed since ``fence`` was read."""
    return Fenced(
        f"state {key!r}: fenced write refused: run {fence.id!r} changed since it was read"
    )


def state_key_range(prefix: str, after: str | None) -> tuple[str, bool, str | None] | None:
    """The key range of ``list_state(prefix=..., after=...)``, as ``(low, low_inclusive,
    high)`` (``high`` exclusive, None: no bound), or None when no key can be in it.

    A prefix holding a character no key can hold matches nothing (None), as does an
    ``after`` at or past every key with the prefix. Both backends compare keys as byte
    strings, and keys are ASCII, so this order is theirs.
    """
    if prefix and (len(prefix) > MAX_KEY_CHARS or KEY_PATTERN.fullmatch(prefix) is None):
        return None
    high = prefix + _AFTER_EVERY_KEY_CHAR if prefix else None
    if after is not None and after >= prefix:
        if high is not None and after >= high:
            return None
        return after, False, high
    return prefix, True, high
