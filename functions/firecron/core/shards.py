"""Shards: which shard tick owns a schedule and its runs. Pure.

Every schedule and run record stores a **bucket**, a stable hash of the schedule's id
modulo :data:`BUCKETS` (a run takes its schedule's). It never changes, whatever the
number of shards. With ``FIRECRON_SHARDS=N``, shard ``i`` owns the buckets ``b`` with
``b % N == i``, so a schedule's shard is ``hash(id) % BUCKETS % N``: a stable hash of
its id modulo N.

Why a fixed bucket and not ``hash % N`` itself: changing N then rewrites nothing. Every
bucket belongs to exactly one shard for any N, so after a change no record is stranded
under a shard number that no tick queries any more; while ticks of the old and the new N
overlap, a bucket may be read by two ticks, and the claims' compare-and-sets let
exactly one of them fire each occurrence. :data:`BUCKETS` is 60: a shard's due query is
``bucket in (...)`` with at most 30 values for every N from 2 (Firestore's limit on
``in``), and 60 divides evenly by 2, 3, 4, 5, 6, 10, 12, 15, 20 and 30 (other N leave
the shards within one bucket of each other). With N=1 the queries do not filter on the
bucket at all.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from firecron.errors import InvalidInputError

__all__ = ["BUCKETS", "MAX_SHARDS", "Shard", "bucket_of", "parse_shard"]

BUCKETS: Final = 60
"""How many buckets ids hash into; a shard is a set of buckets."""

MAX_SHARDS: Final = BUCKETS
"""The most shards: each must own at least one bucket."""

_SHARD = re.compile(r"^(\d+)/(\d+)$")


def bucket_of(schedule_id: str) -> int:
    """The stable bucket of ``schedule_id``: the first 8 bytes of its SHA-256, mod :data:`BUCKETS`.

    SHA-256, not ``hash()``: Python salts string hashes per process, and every process
    (and every version of firecron) must agree on a record's bucket.
    """
    digest = hashlib.sha256(schedule_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count <= MAX_SHARDS``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InvalidInputError(f"shards: must be 1 to {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise InvalidInputError(f"shard: index must be 0 to {self.count - 1}, got {self.index}")

    def buckets(self) -> tuple[int, ...]:
        """The buckets this shard owns, ascending (all of them when ``count`` is 1)."""
        return tuple(range(self.index, BUCKETS, self.count))

    def owns(self, schedule_id: str) -> bool:
        """Whether this shard owns ``schedule_id`` (and its runs)."""
        return bucket_of(schedule_id) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` as a :class:`Shard`; :class:`InvalidInputError` (one line) otherwise."""
    match = _SHARD.match(text.strip())
    if match is None:
        raise InvalidInputError(f"shard: expected I/N (such as 0/4), got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))
