"""The Firestore backend of :class:`~firecron.store.base.Store`.

Layout, in the database ``database`` of project ``project``:

- ``{namespace}_schedules/{schedule_id}``:
  ``{"spec": <spec JSON>, "state": <state JSON>, "next_fire_at": <timestamp | null>,
  "revision": <int>}``. The top-level ``next_fire_at`` copies ``state.next_fire_at``; the
  due query filters and orders on it. A range filter never matches null, so idle
  schedules are neither returned nor read (nor billed). ``revision`` counts writes.
- ``{namespace}_runs/{run_id}``: ``{"data": <run JSON>, "schedule_id", "state",
  "created_at", "watch_at", "wait_key", "expire_at"[, "revision"][, "marks"]}``.
  ``data`` is the whole run but its marks (``upstream``, always ``{}`` in it); the
  other fields copy what the queries filter and order on (``schedule_id``, ``state``,
  ``created_at``, ``watch_at``, ``wait_key``) and the TTL policy's field
  (``expire_at``, infra/firestore.tf), as native strings and timestamps (null when
  unset). A run written before waits existed has no ``wait_key`` field, which no
  equality filter matches: it never waited.
- ``bucket`` (schedules and runs): :func:`firecron.core.shards.bucket_of` of the
  schedule's id, the integer a shard's due queries filter on. Every schedule write
  (claims included) and every run write sets it, so a document from before shards,
  which has none and which no sharded query matches, gets it at its next write;
  until then only an unsharded tick (``FIRECRON_SHARDS=1``) sees it.
- ``marks`` holds ``Run.upstream`` as a native map, ``{task: {"outcome": <string>,
  "state": <string>, "failed_within": <bool>}}``, present once a run has a mark. It is outside ``data``
  because marks are written concurrently and without a precondition
  (:meth:`FirestoreStore.mark_upstream`): each is an update of the one field path
  ``marks.<task>``, which leaves every other field and mark alone. Every other run
  write is an update of the fields above only (an update mask), so none can drop a
  mark; reading a run merges ``marks`` into ``Run.upstream``.

- ``{namespace}_state/{doc id}``: ``{"key": <string>, "value": <JSON text>, "version":
  <integer>, "updated_at": <timestamp>}``, one document per state entry. The document
  id is the key with every ``/`` written ``%2F`` (keys never hold ``%``), and, when
  that starts and ends with ``__`` (ids Firestore reserves), its first ``_`` written
  ``%5F``: see :func:`state_document_id` and, for another program writing an entry,
  docs/design.md, "The state collection's layout".

- ``{namespace}_logs/{doc id}``: ``{"run_id": <string>, "attempt": <integer>,
  "first_seq": <integer>, "last_seq": <integer>, "lines": <JSON text>, "expire_at":
  <timestamp | null>}`` (the TTL policy's field, as on runs), one document
  per chunk of an attempt's log lines (:meth:`FirestoreStore.append_logs`); ``lines`` is
  ``[[seq, at, level, logger, message, truncated], ...]`` with ``at`` ISO 8601 UTC. The
  document id is ``{run_id}~{attempt:010d}~{last_seq:010d}`` (the run id's SHA-256 in
  hex in place of the run id when that would not make a valid id), so one run's chunks
  sort by attempt, then by line.

Records are stored as JSON text (``_codec.to_json``; datetimes ISO 8601 UTC), not as
Firestore maps: encoding a nested run as protobuf maps dominated the dispatcher's CPU,
Firestore refuses arrays inside arrays, empty or ``__reserved__`` map keys and integers
beyond 64 bits, all of which are valid JSON (``params``, ``output``), and it would
otherwise index every key a worker returns. Nothing queries inside them.

A schedule's ``version`` is its document's ``update_time`` as RFC 3339 with nine
fraction digits. Replacing or claiming a schedule writes with a ``last_update_time``
precondition built from that exact string, so the compare-and-set is the server's.
Firestore leaves ``update_time`` alone when a write changes nothing, so every schedule
write also increments ``revision``: the version then changes on every write.

Writes are batched writes with preconditions, never transactions: a claim is one
atomic batch (the schedule update with its precondition plus one ``create`` per run),
and the emulator's transaction locking is unreliable under parallel use.

The store's clock (:meth:`clock`) is the ``read_time`` of a get of
``{namespace}_clock/store``, a document nothing writes.

Queries and their indexes (declare :data:`REQUIRED_INDEXES` in Terraform; single-field
indexes on ``next_fire_at``, ``watch_at``, ``created_at``, ``wait_key`` and a state
entry's ``key`` are automatic):

- due schedules: ``next_fire_at <= now`` ordered by ``next_fire_at`` (single field);
  a shard's (``FIRECRON_SHARDS`` above 1) adds ``bucket in`` its buckets (composite
  ``(bucket, next_fire_at)``);
- due watches: ``watch_at <= now`` ordered by ``watch_at`` (single field); a shard's
  adds ``bucket in`` its buckets (composite ``(bucket, watch_at)``);
- a key's waiters: ``wait_key == key`` (single field, equality);
- state listings: ``key`` in a range, ordered by ``key`` (single field);
- a run's log lines: ``run_id ==``, ordered by document id, from a cursor on it
  (single field, equality);
- run listings: optional ``schedule_id ==`` and ``state in`` filters, optional
  ``created_at < before``, ordered by ``created_at`` then document id, both descending
  (composite indexes when filtered).

The client honours ``FIRESTORE_EMULATOR_HOST`` (anonymous credentials, plain gRPC). It is
created on first use, inside the running event loop, so constructing a store does no
I/O; a store must then stay on that event loop. The few private client APIs this
store needs are all in :mod:`firecron.store._firestore_private`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import AsyncRetry, if_exception_type
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import write as write_types
from pydantic import ValidationError

from firecron.core.logs import LogLine
from firecron.core.models import JsonValue, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Run, RunState, UpstreamEnd
from firecron.core.shards import Shard, bucket_of
from firecron.core.state import StateEntry
from firecron.errors import ConflictError, InvalidInputError, StoreError
from firecron.store._codec import plain, readable_schedules, run_from_json, to_json
from firecron.store._common import (
    NAMESPACE_PATTERN,
    check_fence,
    check_mark,
    check_namespace,
    check_run_changes,
    check_spawn,
    check_state_key,
    check_state_version,
    encode_state_value,
    fence_refused,
    merge_run,
    state_key_range,
)
from firecron.store._firestore_private import (
    check_client,
    close_client,
    commit_writes,
    database_path,
)
from firecron.store.base import (
    ScheduleWrite,
    StoreStats,
    check_distinct,
    check_get_logs,
    check_log_lines,
)

__all__ = [
    "NAMESPACE_PATTERN",
    "REQUIRED_INDEXES",
    "RUN_QUERY_FIELDS",
    "STATE_FIELDS",
    "FirestoreStore",
    "state_document_id",
]

REQUIRED_INDEXES: Final[list[tuple[str, list[tuple[str, str]]]]] = [
    (
        "runs",
        [("schedule_id", "ASCENDING"), ("created_at", "DESCENDING"), ("__name__", "DESCENDING")],
    ),
    ("runs", [("state", "ASCENDING"), ("created_at", "DESCENDING"), ("__name__", "DESCENDING")]),
    (
        "runs",
        [
            ("schedule_id", "ASCENDING"),
            ("state", "ASCENDING"),
            ("created_at", "DESCENDING"),
            ("__name__", "DESCENDING"),
        ],
    ),
    # A shard's due queries (FIRECRON_SHARDS above 1): ``bucket in`` plus a time range.
    ("schedules", [("bucket", "ASCENDING"), ("next_fire_at", "ASCENDING")]),
    ("runs", [("bucket", "ASCENDING"), ("watch_at", "ASCENDING")]),
]
"""Composite indexes the queries need, as ``(collection suffix, [(field, direction)])``.

The collection is ``{namespace}_{suffix}``. The emulator needs none of them; a real
database answers ``FAILED_PRECONDITION`` (with a link to create it) without them.
"""

RUN_QUERY_FIELDS: Final = (
    "schedule_id",
    "state",
    "created_at",
    "watch_at",
    "wait_key",
    "expire_at",
    "bucket",
)
"""Run fields copied to the top level of the run document (see the module docstring)."""

MARKS_FIELD: Final = "marks"
"""The run document's native map of ``Run.upstream`` (see the module docstring)."""

STATE_FIELDS: Final = ("key", "value", "version", "updated_at")
"""The fields of a state entry's document (see the module docstring)."""

_Field = str | datetime | bool | int | dict[str, "_Field"] | None
"""A value :func:`_write_pb` can write: text, timestamp, boolean, integer, map or null."""

_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")
_MAX_BATCH_WRITES: Final = 500
_CAS_ATTEMPTS: Final = 20
_PARALLEL_BATCHES: Final = 4
"""Batches of write_schedules in flight at once."""
_DEFAULT_TIMEOUT: Final = 30.0
_LOG_CHUNK_BYTES: Final = 512 * 1024
"""Most JSON bytes of lines in one log document (a document holds at most 1 MiB)."""

# The raw protobuf class behind the client's proto-plus ``Write`` (see _write_pb).
_WRITE_PB: Final[Any] = write_types.Write.pb()

# Errors that mean "a precondition did not hold": the write was not applied.
_LOST_RACE: Final = (
    api_exceptions.FailedPrecondition,
    api_exceptions.Conflict,  # AlreadyExists and Aborted derive from it
)
# The same for a state write, which reports a lost compare-and-set as a conflict on
# the entry's version: contention (Aborted) that outlasted the retries is a StoreError.
_STATE_LOST: Final = (
    api_exceptions.FailedPrecondition,
    api_exceptions.AlreadyExists,
    api_exceptions.NotFound,
)


def _version_of(update_time: Any) -> str:
    """Render a document ``update_time`` as RFC 3339 UTC with nine fraction digits."""
    # DatetimeWithNanoseconds keeps the nanoseconds that ``datetime`` cannot.
    nanos = getattr(update_time, "nanosecond", None)
    if nanos is None:
        nanos = update_time.microsecond * 1000
    whole = update_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{int(nanos):09d}Z"


def _issued_version(version: str) -> bool:
    """Whether ``version`` could have come from :func:`_version_of` (else it never matches)."""
    # Firestore update times are whole microseconds and it refuses finer preconditions
    # (INVALID_ARGUMENT), so a version with sub-microsecond digits was not issued by it.
    return bool(_VERSION.match(version)) and version.endswith("000Z")


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInputError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def _text(document: Mapping[str, Any], field: str) -> str:
    """The JSON text in ``document[field]``; ``ValueError`` when it is missing or not text."""
    value = document.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected JSON text, got {type(value).__name__}")
    return value


def _run_document(run: Run, *, new: bool = False) -> dict[str, _Field]:
    """The run document's fields: the queried (and TTL) fields, plus the run as JSON text.

    ``data`` leaves the marks out (``upstream`` is ``{}`` in it): they live in the
    ``marks`` map, which only a create (``new=True``, when the run has marks) and
    :meth:`FirestoreStore.mark_upstream` write. An update with these fields as its mask
    therefore keeps every mark, even one written after the run was read.
    """
    body = run.model_copy(update={"upstream": {}}) if run.upstream else run
    fields: dict[str, _Field] = {
        "data": to_json(body),
        "schedule_id": run.schedule_id,
        "state": run.state.value,
        "created_at": run.created_at.astimezone(UTC),
        "watch_at": None if run.watch_at is None else run.watch_at.astimezone(UTC),
        "wait_key": run.wait_key,
        "expire_at": None if run.expire_at is None else run.expire_at.astimezone(UTC),
        "bucket": bucket_of(run.schedule_id),
    }
    if new and run.upstream:
        fields[MARKS_FIELD] = {task: _mark_value(end) for task, end in run.upstream.items()}
    return fields


def _mark_value(end: UpstreamEnd) -> dict[str, _Field]:
    """One mark as a native map (see the module docstring)."""
    return end.model_dump(mode="json")


def _set_value(value_pb: Any, value: _Field) -> None:
    """Store ``value`` in a ``google.firestore.v1.Value`` protobuf."""
    if value is None:
        value_pb.null_value = 0  # NULL_VALUE
    elif isinstance(value, str):
        value_pb.string_value = value
    elif isinstance(value, bool):
        value_pb.boolean_value = value
    elif isinstance(value, int):
        value_pb.integer_value = value
    elif isinstance(value, datetime):
        # Aware datetimes only (the models guarantee it); converted to UTC, microseconds kept.
        value_pb.timestamp_value.FromDatetime(_utc(value, "timestamp"))
    elif isinstance(value, dict):
        entries = value_pb.map_value.fields
        for key, item in value.items():
            _set_value(entries[key], item)
        if not value:
            value_pb.map_value.SetInParent()  # an empty map, not an unset value
    else:
        raise TypeError(f"cannot write {type(value).__name__} as a document field")


def _write_pb(
    path: str,
    fields: Mapping[str, _Field],
    *,
    update: bool,
    last_update: str | None = None,
) -> Any:
    """One ``Write`` of the hot paths, built as a raw protobuf.

    The client's ``batch.create``/``update`` build the same message through proto-plus
    and a generic field walker, at about five times the CPU (it was most of a claim's
    cost). ``update=True``: replace exactly ``fields`` (an update mask), increment
    ``revision`` (see the module docstring) and require the document to exist with
    ``last_update`` as its update time when given. ``update=False``: create the
    document, which must not exist. Field names are plain identifiers (no escaping); a
    map value replaces the whole map (:func:`_mark_pb` writes one entry of one).
    """
    pb = _WRITE_PB()
    document = pb.update
    document.name = path
    for name, value in fields.items():
        _set_value(document.fields[name], value)
    if update:
        pb.update_mask.field_paths.extend(fields)
        transform = pb.update_transforms.add()
        transform.field_path = "revision"
        transform.increment.integer_value = 1
        if last_update is not None:
            # Parsed from the exact RFC 3339 text, nanoseconds included (see _precondition).
            pb.current_document.update_time.FromJsonString(last_update)
        else:
            pb.current_document.exists = True
    else:
        pb.current_document.exists = False
    return write_types.Write.wrap(pb)


def _mark_pb(path: str, task: str, end: UpstreamEnd) -> Any:
    """The ``Write`` of one mark: an update of the field path ``marks.<task>`` alone.

    No precondition but existence (an update of a missing document would create it),
    and a ``revision`` increment, so the version changes even when the same mark is
    written again (Firestore keeps ``update_time`` when nothing changes).
    """
    pb = _WRITE_PB()
    pb.update.name = path
    _set_value(pb.update.fields[MARKS_FIELD], {task: _mark_value(end)})
    # FieldPath quotes a segment that is not a plain identifier (``my-task`` becomes
    # ``marks.`my-task```); the document's map key is the bare task id.
    pb.update_mask.field_paths.append(FieldPath(MARKS_FIELD, task).to_api_repr())
    transform = pb.update_transforms.add()
    transform.field_path = "revision"
    transform.increment.integer_value = 1
    pb.current_document.exists = True
    return write_types.Write.wrap(pb)


def state_document_id(key: str) -> str:
    """The id of the document holding state key ``key`` (a valid key).

    Every ``/`` becomes ``%2F``: a document id cannot hold ``/``, and a key never holds
    ``%``, so the id reads back to the key. An id that would start and end with ``__``,
    which Firestore reserves, gets its first ``_`` written ``%5F``.
    """
    doc_id = key.replace("/", "%2F")
    if doc_id.startswith("__") and doc_id.endswith("__"):
        doc_id = "%5F" + doc_id[1:]
    return doc_id


def _unchanged_pb(path: str, run: Run) -> Any:
    """A ``Write`` that changes nothing and holds only if run document ``path`` is still at
    ``run.version``: the fence of a fenced state write, committed in the same batch.

    It rewrites ``schedule_id`` (a run's never changes) with the value it has, under an
    update mask of that field alone; a write that changes nothing leaves the document's
    ``update_time`` alone (see the module docstring), so the run's version, and the
    worker's next compare-and-set on it, are not disturbed.
    """
    pb = _WRITE_PB()
    pb.update.name = path
    _set_value(pb.update.fields["schedule_id"], run.schedule_id)
    pb.update_mask.field_paths.append("schedule_id")
    pb.current_document.update_time.FromJsonString(run.version)
    return pb


def _state_pb(
    path: str,
    fields: Mapping[str, _Field],
    *,
    increment: bool = False,
    exists: bool | None = None,
    last_update: str | None = None,
) -> Any:
    """The ``Write`` of a state entry's document: its ``fields`` (an update mask of them,
    so a missing document is created), plus, with ``increment``, an atomic increment of
    ``version`` by one (a missing field counts as 0, so a new entry gets 1), whose
    result comes back in the write result. ``exists`` or ``last_update`` (a version
    string, as :func:`_version_of`) is the precondition; neither: none.
    """
    pb = _WRITE_PB()
    pb.update.name = path
    for name, value in fields.items():
        _set_value(pb.update.fields[name], value)
    pb.update_mask.field_paths.extend(fields)
    if increment:
        transform = pb.update_transforms.add()
        transform.field_path = "version"
        transform.increment.integer_value = 1
    if last_update is not None:
        pb.current_document.update_time.FromJsonString(last_update)
    elif exists is not None:
        pb.current_document.exists = exists
    return write_types.Write.wrap(pb)


def _state_conflict(key: str, expected: int | None, found: int | None) -> ConflictError:
    """The one-line conflict of a state write expecting version ``expected``."""
    have = "does not exist" if found is None else f"is at version {found}"
    want = "create only" if expected == 0 else f"expected version {expected}"
    return ConflictError(f"state key {key!r} {have} ({want})")


def _run_states(values: Sequence[RunState]) -> set[RunState]:
    try:
        return {RunState(v) for v in values}
    except ValueError as exc:
        raise InvalidInputError(f"invalid run state: {exc}") from None


def _valid_doc_id(doc_id: str) -> bool:
    # Firestore's rules for document ids; anything else cannot exist in the store.
    return (
        bool(doc_id)
        and "/" not in doc_id
        and doc_id not in {".", ".."}
        and not (doc_id.startswith("__") and doc_id.endswith("__"))
        and len(doc_id.encode()) <= 1500
    )


def _log_document_id(run_id: str, attempt: int, last_seq: int) -> str:
    """The id of the log chunk of ``run_id``'s attempt ``attempt`` that ends at ``last_seq``
    (see the module docstring); ids of one run sort by attempt, then by line."""
    doc_id = f"{run_id}~{attempt:010d}~{last_seq:010d}"
    if _valid_doc_id(doc_id):
        return doc_id
    return f"{hashlib.sha256(run_id.encode()).hexdigest()}~{attempt:010d}~{last_seq:010d}"


def _raise_store_error(op: str, exc: BaseException) -> NoReturn:
    # A RetryError only says "timeout"; the error it gave up on says why.
    cause = getattr(exc, "cause", None)
    if isinstance(exc, api_exceptions.RetryError) and isinstance(cause, BaseException):
        exc = cause
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else ""
    raise StoreError(f"firestore {op} failed: {type(exc).__name__}: {first_line}") from None


class FirestoreStore:
    """:class:`~firecron.store.base.Store` on Google Cloud Firestore (native mode).

    ``project`` and ``database`` name the database; ``namespace`` prefixes the
    collections and must match :data:`NAMESPACE_PATTERN` (else :class:`InvalidInputError`).
    ``timeout`` bounds each RPC in seconds (the client's retries included).
    See the module docstring for the document layout and the indexes.
    """

    def __init__(
        self,
        project: str,
        database: str = "(default)",
        *,
        namespace: str = "firecron",
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        check_namespace(namespace)
        if not project:
            raise InvalidInputError("invalid Firestore project: empty")
        self.namespace = namespace
        self.stats = StoreStats()
        self._project = project
        self._database = database
        # Retry only transient errors, within ``timeout`` overall (the client's default
        # would retry an unreachable server for minutes). Every write carries a
        # precondition, so a retried write can never apply twice.
        retry = AsyncRetry(
            predicate=if_exception_type(
                api_exceptions.Aborted,  # contention on a batch: retry, it was not applied
                api_exceptions.ServiceUnavailable,
                api_exceptions.ResourceExhausted,
                api_exceptions.InternalServerError,
                api_exceptions.DeadlineExceeded,
            ),
            initial=0.1,
            maximum=2.0,
            multiplier=2.0,
            timeout=timeout,
        )
        self._rpc: dict[str, Any] = {"retry": retry, "timeout": timeout}
        # The one write without a precondition, a state write's version increment, would
        # apply twice if retried after an error that leaves it unknown whether it was
        # applied (a deadline, an unavailable server): retry only those that say it
        # was not.
        self._rpc_once: dict[str, Any] = {
            "retry": AsyncRetry(
                predicate=if_exception_type(
                    api_exceptions.Aborted, api_exceptions.ResourceExhausted
                ),
                initial=0.1,
                maximum=2.0,
                multiplier=2.0,
                timeout=timeout,
            ),
            "timeout": timeout,
        }
        self._client_instance: Any = None
        self._closed = False

    # -- plumbing -----------------------------------------------------------------

    @property
    def _client(self) -> Any:
        if self._closed:
            raise StoreError("the Firestore store is closed")
        if self._client_instance is None:
            with self._translate("connect"):
                client = firestore.AsyncClient(project=self._project, database=self._database)
                check_client(client)
                self._client_instance = client
        return self._client_instance

    def _schedules(self) -> Any:
        return self._client.collection(f"{self.namespace}_schedules")

    def _path(self, kind: str, doc_id: str) -> str:
        """The full resource name of document ``doc_id`` in ``{namespace}_{kind}``."""
        # Without building a DocumentReference per write.
        return f"{database_path(self._client)}/documents/{self.namespace}_{kind}/{doc_id}"

    async def _commit(self, writes: list[Any]) -> list[Any]:
        """Commit raw ``writes`` (:func:`_write_pb`) atomically; their write results in order."""
        return await commit_writes(self._client, writes, **self._rpc)

    def _runs(self) -> Any:
        return self._client.collection(f"{self.namespace}_runs")

    @contextmanager
    def _translate(self, op: str) -> Iterator[None]:
        """Turn client errors into :class:`StoreError` (one line, no traceback chain)."""
        try:
            yield
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
            _raise_store_error(op, exc)
        except (ValueError, TypeError) as exc:
            # The client validates paths and values locally with these.
            _raise_store_error(op, exc)

    async def _stream(self, op: str, query: Any) -> list[Any]:
        """Run ``query``, counting one query and the documents it returned.

        Firestore bills an empty query one read; as :class:`StoreStats` defines them,
        that read shows in ``queries``, not in ``reads`` (documents returned).
        """
        with self._translate(op):
            snapshots = [s async for s in query.stream(**self._rpc)]
        self.stats.queries += 1
        self.stats.reads += len(snapshots)
        return snapshots

    def _precondition(self, version: str) -> Any:
        # The client marshals an RFC 3339 string into a Timestamp exactly (nanoseconds
        # included), which a float or ``datetime`` round trip would not guarantee.
        return self._client.write_option(last_update_time=version)

    def _stored(self, snapshot: Any) -> StoredSchedule:
        data = snapshot.to_dict() or {}
        try:
            spec = ScheduleSpec.model_validate_json(_text(data, "spec"))
            state = ScheduleState.model_validate_json(_text(data, "state"))
        except (ValidationError, ValueError) as exc:
            raise StoreError(
                f"corrupt schedule document {snapshot.id!r}: {_first_error(exc)}"
            ) from None
        return StoredSchedule(spec=spec, state=state, version=_version_of(snapshot.update_time))

    def _run(self, snapshot: Any) -> Run:
        data = snapshot.to_dict() or {}
        try:
            run = run_from_json(_text(data, "data"))
            marks = data.get(MARKS_FIELD)
            if marks:
                if not isinstance(marks, dict):
                    raise ValueError(f"{MARKS_FIELD}: expected a map, got {type(marks).__name__}")
                # The map is the marks' record; ``data`` holds none (see _run_document).
                run.upstream = {
                    **run.upstream,
                    **{task: UpstreamEnd.model_validate(end) for task, end in marks.items()},
                }
            run.version = _version_of(snapshot.update_time)
            return run
        except (ValidationError, ValueError) as exc:
            raise StoreError(f"corrupt run document {snapshot.id!r}: {_first_error(exc)}") from None

    @classmethod
    def _schedule_document(cls, spec: ScheduleSpec, state: ScheduleState) -> dict[str, Any]:
        """A whole schedule document (see the module docstring)."""
        return {"spec": to_json(spec), "bucket": bucket_of(spec.id), **cls._schedule_fields(state)}

    @staticmethod
    def _schedule_fields(state: ScheduleState) -> dict[str, Any]:
        """The fields a claim writes: the state and the due query's ``next_fire_at``."""
        return {
            "state": to_json(state),
            "next_fire_at": plain(state.next_fire_at),
            # Firestore keeps ``update_time`` when a write leaves the document unchanged;
            # the counter makes every write a change, so every write gets a new version.
            "revision": firestore.Increment(1),
        }

    # -- schedules ----------------------------------------------------------------

    async def put_schedule(
        self, spec: ScheduleSpec, state: ScheduleState, *, expect_version: str | None
    ) -> StoredSchedule:
        """See :meth:`Store.put_schedule`. One write; the precondition makes it a CAS."""
        ref = self._schedules().document(spec.id)
        fields = self._schedule_document(spec, state)
        stale = ConflictError(f"schedule {spec.id!r} changed or was deleted since it was read")
        if expect_version is not None and not _issued_version(expect_version):
            raise stale  # not a version this backend issued, so it cannot match
        with self._translate("put_schedule"):
            try:
                if expect_version is None:
                    result = await ref.create(fields, **self._rpc)
                else:
                    # Whole top-level fields only: ``update`` reads dotted keys as paths.
                    result = await ref.update(
                        fields, option=self._precondition(expect_version), **self._rpc
                    )
            except (*_LOST_RACE, api_exceptions.NotFound):
                if expect_version is None:
                    raise ConflictError(f"schedule {spec.id!r} already exists") from None
                raise stale from None
        self.stats.writes += 1
        return StoredSchedule(spec=spec, state=state, version=_version_of(result.update_time))

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        """See :meth:`Store.get_schedule`."""
        if not _valid_doc_id(schedule_id):
            return None
        with self._translate("get_schedule"):
            snapshot = await self._schedules().document(schedule_id).get(**self._rpc)
        if not snapshot.exists:
            return None
        self.stats.reads += 1
        return self._stored(snapshot)

    async def list_schedules(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[StoredSchedule]:
        """See :meth:`Store.list_schedules`. One query ordered by document id.

        ``after`` must be a valid document id (else :class:`InvalidInputError`); it
        need not exist.
        """
        if limit is not None and limit <= 0:
            return []
        collection = self._schedules()
        query = collection.order_by("__name__")
        if after is not None:
            if not _valid_doc_id(after):
                raise InvalidInputError(f"invalid schedule id {after!r}")
            query = query.start_after({"__name__": collection.document(after)})
        if limit is not None:
            query = query.limit(limit)
        return [self._stored(s) for s in await self._stream("list_schedules", query)]

    async def write_schedules(
        self, writes: Sequence[ScheduleWrite], deletes: Sequence[str] = ()
    ) -> list[StoredSchedule | None]:
        """See :meth:`Store.write_schedules`. Batches of at most 500, a few in flight.

        Every write is built first (raw protobufs, as a claim's), then the batches of
        writes are committed, then those of deletes. A create is a write with an
        ``exists: false`` precondition, a replace one with the ``last_update_time`` of
        ``expect_version``; either failing voids its batch (None for each write of it).
        """
        check_distinct(writes, deletes)
        built: list[Any] = []
        for w in writes:
            if w.expect_version is not None and not _issued_version(w.expect_version):
                built.append(None)  # not a version this backend issued: it cannot match
                continue
            fields: dict[str, str | datetime | int | None] = {
                "spec": to_json(w.spec),
                "state": to_json(w.state),
                "next_fire_at": w.state.next_fire_at,
                "bucket": bucket_of(w.spec.id),
            }
            path = self._path("schedules", w.spec.id)
            with self._translate("write_schedules"):
                if w.expect_version is None:
                    write = _write_pb(path, fields, update=False)
                    # As put_schedule's create: the document starts with revision 1.
                    transform = write_types.Write.pb(write).update_transforms.add()
                    transform.field_path = "revision"
                    transform.increment.integer_value = 1
                else:
                    write = _write_pb(path, fields, update=True, last_update=w.expect_version)
            built.append(write)
        results: list[StoredSchedule | None] = [None] * len(writes)
        slots = asyncio.Semaphore(_PARALLEL_BATCHES)

        async def commit_writes(start: int) -> None:
            chunk = [
                (i, built[i])
                for i in range(start, min(start + _MAX_BATCH_WRITES, len(writes)))
                if built[i] is not None
            ]
            if not chunk:
                return
            async with slots:
                with self._translate("write_schedules"):
                    try:
                        done = await self._commit([write for _, write in chunk])
                    except (*_LOST_RACE, api_exceptions.NotFound):
                        return  # a condition failed: nothing of this batch was applied
            self.stats.writes += len(chunk)
            for (i, _), result in zip(chunk, done, strict=True):
                w = writes[i]
                results[i] = StoredSchedule(
                    spec=w.spec, state=w.state, version=_version_of(result.update_time)
                )

        await _all_settled(commit_writes(i) for i in range(0, len(writes), _MAX_BATCH_WRITES))
        doomed = [i for i in dict.fromkeys(deletes) if _valid_doc_id(i)]

        async def commit_deletes(chunk: Sequence[str]) -> None:
            pbs = []
            for schedule_id in chunk:
                pb = _WRITE_PB()
                pb.delete = self._path("schedules", schedule_id)
                pbs.append(write_types.Write.wrap(pb))
            async with slots:
                with self._translate("write_schedules"):
                    await self._commit(pbs)
            # Firestore does not say whether a document existed; a bill counts each.
            self.stats.writes += len(chunk)

        await _all_settled(
            commit_deletes(doomed[i : i + _MAX_BATCH_WRITES])
            for i in range(0, len(doomed), _MAX_BATCH_WRITES)
        )
        return results

    async def delete_schedule(self, schedule_id: str, *, expect_version: str | None = None) -> bool:
        """See :meth:`Store.delete_schedule`. A version given for a missing schedule: False."""
        if not _valid_doc_id(schedule_id):
            return False
        ref = self._schedules().document(schedule_id)
        with self._translate("delete_schedule"):
            # A malformed version can never match, but a missing schedule is still False.
            lost = expect_version is not None and not _issued_version(expect_version)
            if not lost:
                option = (
                    self._client.write_option(exists=True)
                    if expect_version is None
                    else self._precondition(expect_version)
                )
                try:
                    await ref.delete(option=option, **self._rpc)
                except api_exceptions.NotFound:
                    return False
                except _LOST_RACE:
                    lost = True
            if lost:
                # Either the version differs or the document is gone: tell them apart.
                snapshot = await ref.get(**self._rpc)
                if not snapshot.exists:
                    return False
                self.stats.reads += 1
                raise ConflictError(f"schedule {schedule_id!r} changed since it was read")
        self.stats.writes += 1
        return True

    async def clock(self) -> datetime:
        """See :meth:`Store.clock`: the ``read_time`` of a get of ``{namespace}_clock/store``,
        a document nothing ever writes (a missing document still bills one read).
        """
        ref = self._client.collection(f"{self.namespace}_clock").document("store")
        with self._translate("clock"):
            snapshot = await ref.get(**self._rpc)
        self.stats.reads += 1
        read_time = snapshot.read_time
        if read_time is None:
            raise StoreError("clock: Firestore returned no read time")
        return datetime.fromtimestamp(read_time.timestamp(), UTC)

    async def due_schedules(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[StoredSchedule]:
        """See :meth:`Store.due_schedules`. One query; ties in ``next_fire_at`` by id."""
        snapshots = await self._due(
            self._schedules(), "next_fire_at", now, limit, "due_schedules", shard
        )
        return readable_schedules(snapshots, self._stored)

    async def _due(
        self,
        collection: Any,
        field: str,
        now: datetime,
        limit: int,
        op: str,
        shard: Shard | None,
    ) -> list[Any]:
        """Documents with ``field <= now``, earliest first (ties by id), at most ``limit``.

        Sharded (a count above 1), also ``bucket in`` the shard's buckets (at most 30
        values, Firestore's limit), on the composite ``(bucket, field)`` index.
        """
        if limit <= 0:
            return []
        query = collection.where(filter=FieldFilter(field, "<=", _utc(now, "now")))
        if shard is not None and shard.count > 1:
            query = query.where(filter=FieldFilter("bucket", "in", list(shard.buckets())))
        query = query.order_by(field).limit(limit)
        return await self._stream(op, query)

    async def claim(
        self, stored: StoredSchedule, new_state: ScheduleState, runs: Sequence[Run]
    ) -> list[Run] | None:
        """See :meth:`Store.claim`. One batch: the schedule's update, with a ``last_update_time``
        precondition, plus a ``create`` per run. Duplicate run ids in ``runs`` are a caller
        bug (:class:`InvalidInputError`), as are more than 499 runs (one batch's limit).
        """
        ids = [run.id for run in runs]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("claim: duplicate run ids")
        if len(runs) + 1 > _MAX_BATCH_WRITES:
            raise InvalidInputError(f"claim: at most {_MAX_BATCH_WRITES - 1} runs per claim")
        bad = [i for i in ids if not _valid_doc_id(i)]
        if bad:
            raise InvalidInputError(f"invalid run id {bad[0]!r}")
        if not _issued_version(stored.version):
            return None
        schedule_fields: dict[str, str | datetime | int | None] = {
            "state": to_json(new_state),
            "next_fire_at": new_state.next_fire_at,
            # Written by every claim, though it never changes: a document from before
            # shards gets its bucket at its first claim (see the module docstring).
            "bucket": bucket_of(stored.id),
        }
        committed = await self._update_and_create(
            "claim", self._path("schedules", stored.id), schedule_fields, stored.version, runs
        )
        return None if committed is None else committed[1]

    # -- runs ---------------------------------------------------------------------

    async def create_run(self, run: Run) -> Run | None:
        """See :meth:`Store.create_run`. One ``create``."""
        if not _valid_doc_id(run.id):
            raise InvalidInputError(f"invalid run id {run.id!r}")
        with self._translate("create_run"):
            try:
                [result] = await self._commit(
                    [
                        _write_pb(
                            self._path("runs", run.id), _run_document(run, new=True), update=False
                        )
                    ]
                )
            except api_exceptions.AlreadyExists:
                return None
        self.stats.writes += 1
        return run.model_copy(update={"version": _version_of(result.update_time)})

    async def get_run(self, run_id: str) -> Run | None:
        """See :meth:`Store.get_run`."""
        if not _valid_doc_id(run_id):
            return None
        with self._translate("get_run"):
            snapshot = await self._runs().document(run_id).get(**self._rpc)
        if not snapshot.exists:
            return None
        self.stats.reads += 1
        return self._run(snapshot)

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        """See :meth:`Store.get_runs`. One ``BatchGetDocuments`` round trip."""
        unique = list(dict.fromkeys(i for i in run_ids if _valid_doc_id(i)))
        if not unique:
            return []
        collection = self._runs()
        found: dict[str, Run] = {}
        with self._translate("get_runs"):
            refs = [collection.document(i) for i in unique]
            async for snapshot in self._client.get_all(refs, **self._rpc):
                if snapshot.exists:
                    found[snapshot.id] = self._run(snapshot)
        self.stats.reads += len(found)
        return [found[i] for i in run_ids if i in found]

    async def update_run(
        self,
        run_id: str,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        current: Run | None = None,
    ) -> Run | None:
        """See :meth:`Store.update_run`.

        Read, check the state, then write the updated run document with a
        ``last_update_time`` precondition; if another write came first, re-read and
        re-check (bounded; :class:`ConflictError` if it never settles). With ``current``:
        that one write, no read. Unknown fields or values that do not validate raise
        :class:`InvalidInputError` before any write.
        """
        check_run_changes(run_id, changes)
        if not _valid_doc_id(run_id):
            return None
        expected = _run_states(expect_states)
        if current is not None:
            return await self._update_known(run_id, current, changes)
        ref = self._runs().document(run_id)
        for attempt in range(_CAS_ATTEMPTS):
            with self._translate("update_run"):
                snapshot = await ref.get(**self._rpc)
            if not snapshot.exists:
                return None
            self.stats.reads += 1
            stored = self._run(snapshot)
            if stored.state not in expected or any(
                getattr(stored, k) != v for k, v in (expect or {}).items()
            ):
                return None
            if not changes:
                return stored  # nothing to write, and it carries its version
            updated = merge_run(run_id, stored, changes)
            with self._translate("update_run"):
                try:
                    [result] = await self._commit(
                        [
                            _write_pb(
                                self._path("runs", run_id),
                                _run_document(updated),
                                update=True,
                                last_update=_version_of(snapshot.update_time),
                            )
                        ]
                    )
                except (*_LOST_RACE, api_exceptions.NotFound):
                    # Someone else wrote first: re-read and judge the new state.
                    await asyncio.sleep(random.uniform(0.0, 0.005 * (attempt + 1)))
                    continue
            self.stats.writes += 1
            return updated.model_copy(update={"version": _version_of(result.update_time)})
        raise ConflictError(f"run {run_id!r} kept changing; gave up after {_CAS_ATTEMPTS} tries")

    async def _update_known(
        self, run_id: str, current: Run, changes: Mapping[str, Any]
    ) -> Run | None:
        """The version path of :meth:`update_run`: one precondition write, no read."""
        if current.version is None or not _issued_version(current.version):
            raise InvalidInputError(f"update_run {run_id!r}: 'current' carries no version")
        updated = merge_run(run_id, current, changes)
        with self._translate("update_run"):
            try:
                # The whole run document, not only the changed fields: ``data`` holds
                # every field anyway, and rewriting the copies keeps them equal to it.
                [result] = await self._commit(
                    [
                        _write_pb(
                            self._path("runs", run_id),
                            _run_document(updated),
                            update=True,
                            last_update=current.version,
                        )
                    ]
                )
            except (*_LOST_RACE, api_exceptions.NotFound):
                return None
        self.stats.writes += 1
        return updated.model_copy(update={"version": _version_of(result.update_time)})

    async def spawn(
        self,
        current: Run,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        runs: Sequence[Run],
    ) -> tuple[Run, list[Run]] | None:
        """See :meth:`Store.spawn`. One batch, as a claim: the update of ``current`` with a
        ``last_update_time`` precondition of its version, plus a ``create`` per run.

        ``current``'s state not in ``expect_states`` writes nothing (None), as does a
        version this store never issued. Everything is validated and encoded first.
        """
        if not check_spawn(current, expect_states, changes, runs):
            return None
        bad = [r.id for r in (current, *runs) if not _valid_doc_id(r.id)]
        if bad:
            raise InvalidInputError(f"spawn {current.id!r}: invalid run id {bad[0]!r}")
        if current.version is None or not _issued_version(current.version):
            return None
        updated = merge_run(current.id, current, changes, "spawn")
        committed = await self._update_and_create(
            "spawn", self._path("runs", current.id), _run_document(updated), current.version, runs
        )
        if committed is None:
            return None
        version, created = committed
        return updated.model_copy(update={"version": version}), created

    async def _update_and_create(
        self,
        op: str,
        path: str,
        fields: Mapping[str, Any],
        last_update: str,
        runs: Sequence[Run],
    ) -> tuple[str, list[Run]] | None:
        """One batch: update ``path``'s ``fields`` if its ``last_update_time`` is still
        ``last_update``, and ``create`` each run; all or nothing (``claim``, ``spawn``).

        Returns the updated document's new version and the runs with theirs, or None when
        the precondition failed, the document is gone or a run exists.
        """
        with self._translate(op):
            writes = [
                _write_pb(path, fields, update=True, last_update=last_update),
                *(
                    _write_pb(
                        self._path("runs", run.id), _run_document(run, new=True), update=False
                    )
                    for run in runs
                ),
            ]
            try:
                results = await self._commit(writes)
            except (*_LOST_RACE, api_exceptions.NotFound):
                return None
        self.stats.writes += 1 + len(runs)
        # Write results come in write order: the update first, then each create.
        return _version_of(results[0].update_time), [
            run.model_copy(update={"version": _version_of(result.update_time)})
            for run, result in zip(runs, results[1:], strict=True)
        ]

    async def mark_upstream(self, run_id: str, task: str, end: UpstreamEnd) -> Run | None:
        """See :meth:`Store.mark_upstream`. An update of the one field path ``marks.<task>``
        (no precondition but existence), then a get of the run: the get comes after the
        write has committed, so of N concurrent callers the one whose get is last sees
        all N marks. One write and one read; None (and nothing written) if the run does
        not exist.
        """
        check_mark(run_id, task)
        if not _valid_doc_id(run_id):
            return None
        with self._translate("mark_upstream"):
            try:
                await self._commit([_mark_pb(self._path("runs", run_id), task, end)])
            except (api_exceptions.NotFound, api_exceptions.FailedPrecondition):
                return None
            self.stats.writes += 1
            snapshot = await self._runs().document(run_id).get(**self._rpc)
        if not snapshot.exists:
            return None  # deleted since (the TTL policy): as if it never was
        self.stats.reads += 1
        return self._run(snapshot)

    async def waiting_on(self, key: str, limit: int) -> list[Run]:
        """See :meth:`Store.waiting_on`. One equality query on ``wait_key``."""
        if limit <= 0:
            return []
        query = self._runs().where(filter=FieldFilter("wait_key", "==", key)).limit(limit)
        return [self._run(s) for s in await self._stream("waiting_on", query)]

    # -- state --------------------------------------------------------------------

    def _state(self) -> Any:
        return self._client.collection(f"{self.namespace}_state")

    def _entry(self, snapshot: Any) -> StateEntry:
        data = snapshot.to_dict() or {}
        try:
            key, version, updated_at = data.get("key"), data.get("version"), data.get("updated_at")
            if not isinstance(key, str):
                raise ValueError(f"key: expected a string, got {type(key).__name__}")
            if isinstance(version, bool) or not isinstance(version, int):
                raise ValueError(f"version: expected an integer, got {type(version).__name__}")
            if not isinstance(updated_at, datetime):
                raise ValueError(
                    f"updated_at: expected a timestamp, got {type(updated_at).__name__}"
                )
            # A plain datetime (the client's carries nanoseconds in a subclass).
            at = updated_at.astimezone(UTC)
            return StateEntry(
                key=key,
                value=json.loads(_text(data, "value")),
                version=version,
                updated_at=datetime(
                    at.year, at.month, at.day, at.hour, at.minute, at.second, at.microsecond, UTC
                ),
            )
        except (ValidationError, ValueError) as exc:
            raise StoreError(
                f"corrupt state document {snapshot.id!r}: {_first_error(exc)}"
            ) from None

    async def _state_snapshot(self, op: str, key: str) -> Any:
        """A get of ``key``'s document (counted as a read when it exists)."""
        with self._translate(op):
            snapshot = await self._state().document(state_document_id(key)).get(**self._rpc)
        if snapshot.exists:
            self.stats.reads += 1
        return snapshot

    def _check_fence_id(self, op: str, fence: Run | None) -> None:
        if fence is None:
            return
        if not _valid_doc_id(fence.id) or not _issued_version(fence.version or ""):
            raise InvalidInputError(
                f"{op}: the fence run {fence.id!r} was not read from this store"
            )

    def _fence_pb(self, fence: Run) -> Any:
        return _unchanged_pb(self._path("runs", fence.id), fence)

    async def _raise_if_fenced(self, op: str, key: str, fence: Run | None) -> None:
        """After a failed batch: :class:`Fenced` if the fence run moved (one get)."""
        if fence is None:
            return
        with self._translate(op):
            snapshot = await self._runs().document(fence.id).get()
        self.stats.reads += 1
        if not snapshot.exists or _version_of(snapshot.update_time) != fence.version:
            raise fence_refused(key, fence)

    async def _found_version(self, op: str, key: str) -> int | None:
        """The entry's version now (None: missing), for a conflict's message."""
        snapshot = await self._state_snapshot(op, key)
        return self._entry(snapshot).version if snapshot.exists else None

    async def get_state(self, key: str) -> StateEntry | None:
        """See :meth:`Store.get_state`. One get."""
        check_state_key(key)
        snapshot = await self._state_snapshot("get_state", key)
        return self._entry(snapshot) if snapshot.exists else None

    async def put_state(
        self,
        key: str,
        value: JsonValue,
        *,
        now: datetime,
        if_version: int | None = None,
        fence: Run | None = None,
    ) -> StateEntry:
        """See :meth:`Store.put_state`.

        - ``if_version=None``: one write, no read and no precondition, whose ``version``
          is an atomic increment: Firestore applies the writes to one document one after
          the other, so concurrent writers each get a distinct version and none is lost.
        - ``0``: one ``create`` (the document must not exist).
        - ``N``: a get, then the write with ``version = N + 1`` and the get's
          ``update_time`` as its precondition, so a write in between makes it fail.

        A lost compare-and-set is :class:`ConflictError`; it is not retried (a get tells
        the version found, for the message). A ``fence`` adds a write that changes
        nothing and holds only while the run is at its version (:func:`_unchanged_pb`)
        to the same batch; when the batch fails, one get of the run tells which
        precondition did.
        """
        check_state_key(key)
        check_state_version("put_state", key, if_version, lowest=0)
        check_fence("put_state", key, fence)
        self._check_fence_id("put_state", fence)
        text = encode_state_value(key, value)
        at = _utc(now, "now")
        path = self._path("state", state_document_id(key))
        fields: dict[str, _Field] = {"key": key, "value": text, "updated_at": at}
        if if_version is None:
            write = _state_pb(path, fields, increment=True)
            rpc = self._rpc_once
        elif if_version == 0:
            write = _state_pb(path, {**fields, "version": 1}, exists=False)
            rpc = self._rpc
        else:
            snapshot = await self._state_snapshot("put_state", key)
            found = self._entry(snapshot).version if snapshot.exists else None
            if found != if_version:
                raise _state_conflict(key, if_version, found)
            write = _state_pb(
                path,
                {**fields, "version": if_version + 1},
                last_update=_version_of(snapshot.update_time),
            )
            rpc = self._rpc
        writes = [write] if fence is None else [write, self._fence_pb(fence)]
        with self._translate("put_state"):
            try:
                result, *_ = await commit_writes(self._client, writes, **rpc)
            except _STATE_LOST:
                if if_version is None and fence is None:
                    raise  # no precondition: not a lost race (a StoreError)
                lost = True
            else:
                lost = False
        if lost:
            await self._raise_if_fenced("put_state", key, fence)
            raise _state_conflict(key, if_version, await self._found_version("put_state", key))
        self.stats.writes += 1
        if if_version is None:
            version = int(result.transform_results[0].integer_value)
        else:
            version = if_version + 1
        return StateEntry(key=key, value=json.loads(text), version=version, updated_at=now)

    async def delete_state(
        self, key: str, *, if_version: int | None = None, fence: Run | None = None
    ) -> bool:
        """See :meth:`Store.delete_state`. Without ``if_version``: one delete with an
        ``exists`` precondition (False when it fails). With it: a get, then a delete
        with the get's ``update_time`` as its precondition. A ``fence`` as for
        :meth:`put_state`."""
        check_state_key(key)
        check_state_version("delete_state", key, if_version, lowest=1)
        check_fence("delete_state", key, fence)
        self._check_fence_id("delete_state", fence)
        write = _WRITE_PB()
        write.delete = self._path("state", state_document_id(key))
        if if_version is None:
            write.current_document.exists = True
        else:
            snapshot = await self._state_snapshot("delete_state", key)
            found = self._entry(snapshot).version if snapshot.exists else None
            if found != if_version:
                raise _state_conflict(key, if_version, found)
            write.current_document.update_time.FromJsonString(_version_of(snapshot.update_time))
        writes = [write] if fence is None else [write, self._fence_pb(fence)]
        with self._translate("delete_state"):
            try:
                await self._commit([write_types.Write.wrap(w) for w in writes])
            except _STATE_LOST:
                lost = True
            else:
                lost = False
        if lost:
            await self._raise_if_fenced("delete_state", key, fence)
            if if_version is None:
                return False
            raise _state_conflict(key, if_version, await self._found_version("delete_state", key))
        self.stats.writes += 1
        return True

    async def list_state(
        self, *, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[StateEntry]:
        """See :meth:`Store.list_state`. One range query on ``key``, ordered by ``key``."""
        bounds = state_key_range(prefix, after)
        if bounds is None or (limit is not None and limit <= 0):
            return []
        low, inclusive, high = bounds
        query = self._state().where(filter=FieldFilter("key", ">=" if inclusive else ">", low))
        if high is not None:
            query = query.where(filter=FieldFilter("key", "<", high))
        query = query.order_by("key")
        if limit is not None:
            query = query.limit(limit)
        return [self._entry(s) for s in await self._stream("list_state", query)]

    async def due_watches(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[Run]:
        """See :meth:`Store.due_watches`. One query; ties in ``watch_at`` by id."""
        snapshots = await self._due(self._runs(), "watch_at", now, limit, "due_watches", shard)
        return [self._run(s) for s in snapshots]

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        states: Sequence[RunState] | None = None,
        limit: int = 50,
        before: datetime | None = None,
    ) -> list[Run]:
        """See :meth:`Store.list_runs`. One query; filtered forms need :data:`REQUIRED_INDEXES`.

        ``states=[]`` matches nothing (and runs no query); ties in ``created_at`` are
        ordered by id, descending.
        """
        if limit <= 0 or (states is not None and not states):
            return []
        query = self._runs()
        if schedule_id is not None:
            query = query.where(filter=FieldFilter("schedule_id", "==", schedule_id))
        if states is not None:
            values = sorted(state.value for state in _run_states(states))
            if len(values) == 1:
                query = query.where(filter=FieldFilter("state", "==", values[0]))
            else:
                query = query.where(filter=FieldFilter("state", "in", values))
        if before is not None:
            query = query.where(filter=FieldFilter("created_at", "<", _utc(before, "before")))
        query = (
            query.order_by("created_at", direction=firestore.Query.DESCENDING)
            .order_by("__name__", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [self._run(s) for s in await self._stream("list_runs", query)]

    # -- logs ---------------------------------------------------------------------

    def _logs(self) -> Any:
        return self._client.collection(f"{self.namespace}_logs")

    async def append_logs(
        self,
        run_id: str,
        attempt: int,
        lines: Sequence[LogLine],
        *,
        expire_at: datetime | None = None,
    ) -> None:
        """See :meth:`Store.append_logs`. The lines, in ``seq`` order, are cut into chunk
        documents of at most :data:`_LOG_CHUNK_BYTES` of JSON each, written with ``set``
        in atomic batches of at most 500 (one batch for anything the SDK flushes at
        once). A chunk sent again is the same document with the same content; a line
        sent again in another chunk is stored twice and read once (:meth:`get_logs`
        drops repeats), so it is kept as first stored."""
        check_log_lines(run_id, attempt, lines)
        expires = None if expire_at is None else _utc(expire_at, "expire_at")
        if not lines:
            return
        chunks: list[list[list[Any]]] = [[]]
        size = 0
        for line in sorted(lines, key=lambda x: x.seq):
            row = [
                line.seq,
                _utc(line.at, "at").isoformat(),
                line.level,
                line.logger,
                line.message,
                line.truncated,
            ]
            row_size = len(json.dumps(row, ensure_ascii=False).encode()) + 1
            if chunks[-1] and size + row_size > _LOG_CHUNK_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(row)
            size += row_size
        logs = self._logs()
        for start in range(0, len(chunks), _MAX_BATCH_WRITES):
            part = chunks[start : start + _MAX_BATCH_WRITES]
            with self._translate("append_logs"):
                batch = self._client.batch()
                for rows in part:
                    last = rows[-1][0]
                    batch.set(
                        logs.document(_log_document_id(run_id, attempt, last)),
                        {
                            "run_id": run_id,
                            "attempt": attempt,
                            "first_seq": rows[0][0],
                            "last_seq": last,
                            "lines": json.dumps(rows, ensure_ascii=False, separators=(",", ":")),
                            "expire_at": expires,
                        },
                    )
                await batch.commit(**self._rpc)
            self.stats.writes += len(part)

    async def get_logs(
        self, run_id: str, attempt: int | None = None, *, after: int = 0, limit: int | None = None
    ) -> list[LogLine]:
        """See :meth:`Store.get_logs`. One query on ``run_id``, ordered by document id;
        with ``attempt``, from the first chunk whose last line is after ``after`` to the
        attempt's last, so a follower reads only chunks with new lines (at most
        ``limit`` chunks: each has at least one line to return)."""
        check_get_logs(attempt, after)
        if limit is not None and limit <= 0:
            return []
        query = self._logs().where(filter=FieldFilter("run_id", "==", run_id)).order_by("__name__")
        if attempt is not None:
            query = query.start_after({"__name__": _log_document_id(run_id, attempt, after)})
            query = query.end_at({"__name__": _log_document_id(run_id, attempt, 10**10 - 1)})
        if limit is not None:
            query = query.limit(limit)
        found: dict[tuple[int, int], LogLine] = {}
        for snapshot in await self._stream("get_logs", query):
            data = snapshot.to_dict() or {}
            try:
                chunk_attempt = int(data["attempt"])
                for seq, at, level, logger, message, truncated in json.loads(_text(data, "lines")):
                    if seq > after and (chunk_attempt, seq) not in found:
                        found[(chunk_attempt, seq)] = LogLine(
                            attempt=chunk_attempt,
                            seq=seq,
                            at=datetime.fromisoformat(at),
                            level=level,
                            logger=logger,
                            message=message,
                            truncated=truncated,
                        )
            except (KeyError, TypeError, ValueError, ValidationError) as exc:
                raise StoreError(
                    f"corrupt log document {snapshot.id!r}: {_first_error(exc)}"
                ) from None
        lines = [found[key] for key in sorted(found)]
        return lines if limit is None else lines[:limit]

    async def close(self) -> None:
        """See :meth:`Store.close`. Closes the gRPC channel if one was opened."""
        self._closed = True
        client, self._client_instance = self._client_instance, None
        if client is not None:
            with self._translate("close"):
                await close_client(client)


async def _all_settled(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Await every call, then raise the first error: no batch is left running unseen."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "value"
        return f"{where}: {err.get('msg', 'invalid')}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
