"""State: a small key-value collection in the store, which waits watch. Pure.

An entry is a key, a JSON value, a version and the time of its last write. Keys are at
most :data:`MAX_KEY_CHARS` characters of ``[A-Za-z0-9/_.:-]`` (``orders/2026-11-30``,
``export:eu``); ``.`` and ``..`` are refused (no store could name a document so). Values
are JSON of at most :data:`MAX_VALUE_BYTES` bytes, encoded compactly as UTF-8.

Versions start at 1 and grow by 1 with every write. A write given ``if_version`` is a
compare-and-set: it applies only if the entry's version is that number, and
``if_version=0`` means "create only" (the key must not exist). Every rule here is the
one the stores, the CLI, the worker SDK and ``firecron.State`` apply.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict

from firecron.core.models import JsonValue, has_non_finite, params_depth_problem

__all__ = [
    "KEY_PATTERN",
    "MAX_KEY_CHARS",
    "MAX_VALUE_BYTES",
    "MAX_VALUE_DEPTH",
    "StateEntry",
    "encode_value",
    "key_problem",
    "value_problem",
]

MAX_KEY_CHARS: Final = 256
"""Longest key."""
MAX_VALUE_BYTES: Final = 64 * 1024
"""Largest value, as compact UTF-8 JSON."""
MAX_VALUE_DEPTH: Final = 64
"""How deeply a value may nest lists and objects: every reader (the stores' decoders,
pydantic, a condition) walks it recursively."""
KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9/_.:-]{1,256}$")
"""What a key is made of."""


class StateEntry(BaseModel):
    """One entry of the state collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    """The key (see the module docstring)."""
    value: JsonValue
    """The JSON value."""
    version: int
    """1 for the first write, then one more per write."""
    updated_at: AwareDatetime
    """When it was last written."""


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid key (one line), or None."""
    if not isinstance(key, str):
        return f"key must be a string, got {type(key).__name__}"
    if not key:
        return "key is empty"
    if len(key) > MAX_KEY_CHARS:
        return f"key is {len(key)} characters long; the limit is {MAX_KEY_CHARS}"
    if not KEY_PATTERN.fullmatch(key):
        bad = next(c for c in key if not re.match(r"[A-Za-z0-9/_.:-]", c))
        return f"key {key!r} holds {bad!r}: keys are letters, digits and / _ . : -"
    if key in (".", ".."):
        return f"key {key!r} is not allowed"
    return None


def encode_value(value: JsonValue) -> str:
    """``value`` as compact JSON text (how the stores keep it); ValueError when it is
    not JSON (NaN, infinities, other types) or larger than :data:`MAX_VALUE_BYTES`."""
    deep = params_depth_problem(value, MAX_VALUE_DEPTH)
    if deep is not None:
        raise ValueError(f"value is {deep}")
    if has_non_finite(value):
        raise ValueError("value is not JSON: NaN and Infinity have no JSON form")
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"value is not JSON: {exc}") from None
    size = len(text.encode())
    if size > MAX_VALUE_BYTES:
        raise ValueError(
            f"value is {size:,} bytes of JSON; the limit is {MAX_VALUE_BYTES:,} (64 KiB)"
        )
    return text


def value_problem(value: JsonValue) -> str | None:
    """Why ``value`` cannot be stored (one line), or None."""
    try:
        encode_value(value)
    except ValueError as exc:
        return str(exc)
    return None
