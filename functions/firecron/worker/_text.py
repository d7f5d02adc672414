"""One-line texts for errors and logs, shared by the worker's modules."""

from __future__ import annotations

from typing import Final

_MAX_ERROR_CHARS: Final = 1000


def _one_line(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters (``…`` last)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(exc: BaseException) -> str:
    """``"<Type>: <message>"`` on one line, at most 1000 characters."""
    message = str(exc)
    return _one_line(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
