"""The worker's limit on its one-line errors and logs (the helpers are in firecron.core.render)."""

from __future__ import annotations

from typing import Final

from firecron.core.render import error_line

MAX_ERROR_CHARS: Final = 1000
"""At most this many characters of an error the worker records, answers or logs."""


def describe(exc: BaseException) -> str:
    """``"<Type>: <message>"`` on one line, at most :data:`MAX_ERROR_CHARS` characters."""
    return error_line(exc, MAX_ERROR_CHARS)
