"""Output helpers for the CLI: RFC 3339 times, JSON, and rich tables.

JSON times are RFC 3339 UTC with ``Z``. Tables go to stdout through rich, which
falls back to plain text when stdout is not a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from firecron.core import render

__all__ = ["console", "emit_json", "err_console", "jsonable", "rfc3339", "table"]

# Piped output is read by scripts and people alike: don't fold it at rich's default 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False)


def rfc3339(value: datetime | None) -> str | None:
    """:func:`firecron.core.render.rfc3339` of ``value``; None stays None."""
    return None if value is None else render.rfc3339(value)


def jsonable(value: Any) -> Any:
    """``value`` ready for JSON output: :func:`~firecron.core.render.plain` with RFC 3339 times."""
    return render.plain(value, render.rfc3339)


def emit_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table with ``columns``; ``None`` cells print as ``-``.

    Cells are plain text, never rich markup: a value such as ``[true, null]`` or an
    error holding ``[/x]`` prints as it is.
    """
    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(Text("-" if c is None else str(c)) for c in row))
    console.print(t)
