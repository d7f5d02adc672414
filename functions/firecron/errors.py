"""The one exception tree of firecron.

Every error that firecron raises on purpose derives from :class:`FirecronError`.
Third-party errors (sqlite3, google-api-core, httpx) are translated at the edge
that calls them, so callers never need to import a backend's exceptions.

The CLI maps :class:`UserError` to exit code 2 and every other
:class:`FirecronError` to exit code 1, printing one line without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConflictError",
    "DeliveryError",
    "Fenced",
    "FirecronError",
    "InvalidInputError",
    "InvalidSchedule",
    "NotFoundError",
    "PreconditionFailed",
    "SignatureError",
    "StoreError",
    "TargetRefusedError",
    "UserError",
]


class FirecronError(Exception):
    """Root of every error firecron raises deliberately."""


class UserError(FirecronError):
    """The user asked for something invalid; the CLI exits 2."""


class InvalidInputError(UserError):
    """Input (a schedule file, a spec, a flag value) failed validation."""


class NotFoundError(UserError):
    """A schedule or run id does not exist."""


class StoreError(FirecronError):
    """The store failed (unreachable, corrupt, quota); the CLI exits 1."""


class ConflictError(StoreError):
    """A compare-and-set write lost: the record changed since it was read."""


class Fenced(ConflictError):
    """A fenced write was refused: the run that made it is no longer the live one (a
    continuous schedule's newer generation took over, or the run ended or was declared
    lost). Nothing was written; the caller should stop working (``ctx.keep_going()`` is
    false by then)."""


class TargetRefusedError(FirecronError):
    """A target URL is not allowed (scheme, private address, metadata server)."""


class SignatureError(FirecronError):
    """A request signature or token is missing, malformed, expired or wrong."""


class DeliveryError(FirecronError):
    """A notification sink did not acknowledge an event (``firecron notify-test``); the
    CLI exits 1."""


class InvalidSchedule(InvalidInputError):
    """A put's schedule failed validation; nothing was written.

    ``errors`` lists every problem as ``(field, line)`` (``field`` None when no one
    field is at fault). The message is that line when there is one, else ``N errors``
    and then one line per error, as the schedules file reports them. ``field`` is the
    first one's.
    """

    def __init__(self, errors: Sequence[tuple[str | None, str]]) -> None:
        self.errors = list(errors)
        self.field = self.errors[0][0]
        lines = [line for _, line in self.errors]
        super().__init__(
            lines[0] if len(lines) == 1 else f"{len(lines)} errors\n" + "\n".join(lines)
        )


class PreconditionFailed(ConflictError):
    """A conditional put or delete found another version than it named (or, create-only,
    a schedule already there). ``field`` is the condition at fault (``If-Match`` for a
    version), or None."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)
