"""Request and response helpers shared by the routes: JSON bodies, query arguments,
page tokens, ETags."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

import flask
from pydantic import BaseModel

from firecron.api._problem import Problem

__all__ = [
    "MAX_LIMIT",
    "dump",
    "etag",
    "if_match",
    "if_none_match_star",
    "int_arg",
    "json_body",
    "page_token",
    "parse_instant",
    "read_page_token",
    "reply",
    "time_arg",
]

MAX_LIMIT = 1000
"""The most items one page holds."""
_MAX_BODY = 1024 * 1024


def dump(model: BaseModel) -> Any:
    """A model as JSON values (durations as ``90s`` text, times as ISO 8601)."""
    return model.model_dump(mode="json", by_alias=True)


def reply(data: Any, status: int = 200, *, version: str | int | None = None) -> flask.Response:
    """A JSON answer; ``version`` becomes its ``ETag``."""
    response = flask.Response(json.dumps(data), status=status, mimetype="application/json")
    if version is not None:
        response.headers["ETag"] = etag(version)
    return response


def etag(version: str | int) -> str:
    """The strong ETag carrying a version."""
    return f'"{version}"'


def if_match() -> str | None:
    """The version ``If-Match`` names (None without the header). ``*`` is None too: any
    version matches; one tag only (a list is 412-worthy ambiguity, refused)."""
    raw = flask.request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip()
    if "," in tag:
        raise Problem(400, "If-Match: give one ETag", field="If-Match")
    if tag.startswith("W/"):
        tag = tag[2:]
    if len(tag) < 2 or not tag.startswith('"') or not tag.endswith('"'):
        raise Problem(400, f"If-Match: {raw!r} is not an ETag (a quoted version)", field="If-Match")
    return tag[1:-1]


def if_none_match_star() -> bool:
    """Whether the request says ``If-None-Match: *`` (create only)."""
    return (flask.request.headers.get("If-None-Match") or "").strip() == "*"


def json_body() -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``); 400/415 naming what is wrong."""
    data = flask.request.get_data(cache=True)
    if not data.strip():
        return {}
    if len(data) > _MAX_BODY:
        raise Problem(400, f"the body is {len(data):,} bytes; at most {_MAX_BODY:,}", field="body")
    mimetype = flask.request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(415, f"the body must be application/json, not {mimetype}", field="body")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, f"the body is not JSON: {exc}", field="body") from None
    if not isinstance(value, dict):
        raise Problem(400, "the body must be a JSON object", field="body")
    return value


def int_arg(name: str, default: int, lo: int = 1, hi: int = MAX_LIMIT) -> int:
    """An integer query argument in ``[lo, hi]``."""
    raw = flask.request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, f"{name}={raw!r}: expected an integer", field=name) from None
    if not lo <= value <= hi:
        raise Problem(400, f"{name}={value}: must be between {lo} and {hi}", field=name)
    return value


def time_arg(name: str) -> datetime | None:
    """An ISO 8601 instant query argument (with an offset, or ``Z``)."""
    raw = flask.request.args.get(name)
    if raw is None or raw == "":
        return None
    return parse_instant(raw, name)


def parse_instant(raw: object, name: str) -> datetime:
    """An aware instant from ISO 8601 text; 400 naming ``name`` otherwise."""
    if not isinstance(raw, str):
        raise Problem(400, f"{name}: expected an ISO 8601 time, got {raw!r}", field=name)
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Problem(400, f"{name}={raw!r}: expected an ISO 8601 time", field=name) from None
    if value.tzinfo is None:
        raise Problem(400, f"{name}={raw!r}: give a UTC offset (Z or +HH:MM)", field=name)
    return value


def page_token(value: Any) -> str:
    """An opaque page token carrying ``value`` (JSON)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def read_page_token() -> Any:
    """The value of the request's ``page_token`` (None without one); 400 when malformed."""
    raw = flask.request.args.get("page_token")
    if not raw:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise Problem(400, "page_token: not a token this API gave", field="page_token") from None
