"""Errors as ``application/problem+json`` (RFC 9457), with the field at fault.

Every error the API answers is one :class:`Problem` document: ``type``, ``title``,
``status``, ``detail`` (one line), and, when one input field is at fault, ``field``
(its path, ``retry.max_attempts``). A schedule body with several problems lists them all
in ``errors`` (``[{field, detail}]``), ``detail`` then being the first one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from firecron.errors import (
    ConflictError,
    FirecronError,
    InvalidInputError,
    InvalidSchedule,
    NotFoundError,
    PreconditionFailed,
    SignatureError,
    StoreError,
)

__all__ = ["PROBLEM_JSON", "Problem", "problem_of"]

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An error answer: raised by a route, turned into a problem document by the app."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        errors: Sequence[tuple[str | None, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.errors = list(errors)
        self.headers = headers or {}

    def document(self) -> dict[str, Any]:
        """The RFC 9457 document (``type`` is ``about:blank``: the status says it all)."""
        doc: dict[str, Any] = {
            "type": "about:blank",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            doc["field"] = self.field
        if self.errors:
            doc["errors"] = [
                {"field": f, "detail": d} if f is not None else {"detail": d}
                for f, d in self.errors
            ]
        return doc

    def body(self) -> str:
        """The document as JSON text."""
        return json.dumps(self.document())


def problem_of(exc: FirecronError, *, precondition: bool = False) -> Problem:
    """The answer to a firecron error raised by a service call.

    ``precondition``: the request carried ``If-Match``, so a lost compare-and-set is 412
    (the version it named is not the current one) rather than 409.
    """
    errors = exc.errors if isinstance(exc, InvalidSchedule) else []
    field = exc.field if isinstance(exc, InvalidSchedule | PreconditionFailed) else None
    # The detail is one line: every error of an InvalidSchedule, each also in ``errors``.
    lines = [line for _, line in errors] or [str(exc)]
    text = " ".join("; ".join(lines).split()) or type(exc).__name__
    if isinstance(exc, NotFoundError):
        return Problem(404, text, field=field)
    if isinstance(exc, InvalidInputError):
        return Problem(422, text, field=field, errors=errors)
    if isinstance(exc, PreconditionFailed):
        return Problem(412, text, field=field)
    if isinstance(exc, ConflictError):
        return Problem(412 if precondition else 409, text)
    if isinstance(exc, SignatureError):
        return Problem(401, text)
    if isinstance(exc, StoreError):
        return Problem(503, text)
    return Problem(500, text)
