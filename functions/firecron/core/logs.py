"""A run attempt's captured log lines and the rule that caps them. Pure.

The worker SDK captures the ``logging`` records an attempt emits (and ``ctx.log``) as
:class:`LogLine` s, numbered ``seq`` 1, 2, ... per attempt, and stores them beside the
run (``Store.append_logs``). Each attempt may store at most :data:`MAX_ATTEMPT_LOG_BYTES`
of lines, sized by :func:`line_size`; the line that crosses the cap is cut to what still
fits, and one marker line (``truncated=True``) follows it. Nothing of that attempt is
stored after the marker. :class:`LogBudget` applies the rule, one record at a time.
"""

from __future__ import annotations

from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "LINE_OVERHEAD_BYTES",
    "MAX_ATTEMPT_LOG_BYTES",
    "LogBudget",
    "LogLine",
    "line_size",
    "truncation_marker",
]

MAX_ATTEMPT_LOG_BYTES: Final = 256 * 1024
"""Most bytes of log lines (as :func:`line_size` counts them) stored per attempt."""

LINE_OVERHEAD_BYTES: Final = 64
"""What each line costs beyond its text: its number, time and the record's framing.

Counting it keeps a flood of empty lines within the cap too, so an attempt's stored
lines, however many, stay a bounded size (a Firestore document holds 1 MiB)."""


class LogLine(BaseModel):
    """One captured log record of one run attempt."""

    model_config = ConfigDict(frozen=True)

    attempt: int = Field(ge=1)
    """The attempt that logged it (1 for the first try)."""
    seq: int = Field(ge=1)
    """Its number within the attempt: 1, 2, ... in the order logged, without gaps."""
    at: AwareDatetime
    """When it was logged (the worker's clock)."""
    level: str
    """The ``logging`` level name: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL``."""
    logger: str
    """The logger's name (``firecron.run`` for ``ctx.log``)."""
    message: str
    """The formatted message, with its traceback when the record carried one."""
    truncated: bool = False
    """True on the one marker line that ends a capped attempt's lines."""


def line_size(level: str, logger: str, message: str) -> int:
    """The bytes a line counts against the cap: its UTF-8 text plus :data:`LINE_OVERHEAD_BYTES`."""
    return len(level.encode()) + len(logger.encode()) + len(message.encode()) + LINE_OVERHEAD_BYTES


def truncation_marker(attempt: int, seq: int, at: AwareDatetime, limit: int) -> LogLine:
    """The marker line that ends an attempt's lines once they reach ``limit`` bytes."""
    return LogLine(
        attempt=attempt,
        seq=seq,
        at=at,
        level="WARNING",
        logger="firecron",
        message=(
            f"log truncated: this attempt's lines reached {_size_text(limit)}; "
            "later records are not stored"
        ),
        truncated=True,
    )


def _size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size:,} bytes"


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes`` (never half a character)."""
    return text.encode()[: max(0, max_bytes)].decode(errors="ignore")


class LogBudget:
    """The cap rule for one attempt: numbers its lines and stops them at ``limit`` bytes.

    Not thread-safe (the caller serialises :meth:`admit`). ``limit`` is for tests; the
    SDK uses :data:`MAX_ATTEMPT_LOG_BYTES`.
    """

    def __init__(self, attempt: int, limit: int = MAX_ATTEMPT_LOG_BYTES) -> None:
        if limit < LINE_OVERHEAD_BYTES:
            raise ValueError(f"log limit {limit} is below one line's {LINE_OVERHEAD_BYTES} bytes")
        self.attempt = attempt
        self.limit = limit
        self.used = 0
        """Bytes counted so far (the marker is not counted)."""
        self.seq = 0
        """The last number given."""
        self.truncated = False
        """True once the marker was given: every later record is dropped."""

    def admit(self, at: AwareDatetime, level: str, logger: str, message: str) -> list[LogLine]:
        """The lines to store for one record: ``[line]`` while it fits; at the cap the
        record cut to what fits (when anything of its text does) and the marker; ``[]``
        after the marker."""
        if self.truncated:
            return []
        size = line_size(level, logger, message)
        if self.used + size <= self.limit:
            self.used += size
            return [self._line(at, level, logger, message)]
        lines: list[LogLine] = []
        room = self.limit - self.used - line_size(level, logger, "")
        cut = _cut_utf8(message, room)
        if cut:
            self.used += line_size(level, logger, cut)
            lines.append(self._line(at, level, logger, cut))
        self.truncated = True
        self.seq += 1
        lines.append(truncation_marker(self.attempt, self.seq, at, self.limit))
        return lines

    def _line(self, at: AwareDatetime, level: str, logger: str, message: str) -> LogLine:
        self.seq += 1
        return LogLine(
            attempt=self.attempt, seq=self.seq, at=at, level=level, logger=logger, message=message
        )
