"""What both store backends share beyond the codec: the namespace rule and run merging.

``settings.py`` checks ``FIRECRON_NAMESPACE`` against the same :data:`NAMESPACE_PATTERN`,
so a namespace the settings accept is one every backend accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from firecron.core.runs import Run
from firecron.errors import InvalidInputError

__all__ = [
    "NAMESPACE_PATTERN",
    "NAMESPACE_RULE",
    "check_namespace",
    "check_run_changes",
    "merge_run",
    "valid_namespace",
]

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


def check_run_changes(run_id: str, changes: Mapping[str, Any]) -> None:
    """Refuse, before any read or write, ``changes`` that no stored run could take.

    Raises :class:`InvalidInputError` when they name a field :class:`Run` does not have
    or change the run's ``id``. Their values are judged later, by :func:`merge_run`.
    """
    unknown = sorted(set(changes) - set(Run.model_fields))
    if unknown:
        raise InvalidInputError(f"update_run {run_id!r}: unknown run field(s) {', '.join(unknown)}")
    if "id" in changes and changes["id"] != run_id:
        raise InvalidInputError(f"update_run {run_id!r}: a run's id cannot change")


def merge_run(run_id: str, base: Run, changes: Mapping[str, Any]) -> Run:
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
            f"update_run {run_id!r}: invalid changes: {where}: {error.get('msg', 'invalid')}"
        ) from None
