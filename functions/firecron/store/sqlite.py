"""The SQLite store: the embedded default backend (``sqlite:///path.db``).

Implements :class:`firecron.store.base.Store` with the standard library's ``sqlite3``.

- Every call runs in a worker thread (``asyncio.to_thread``) on the instance's one
  connection, serialised by a ``threading.Lock``, so the event loop never blocks on disk.
- The database is in WAL mode with ``synchronous=NORMAL`` and a 30 s busy timeout.
  Every write is one ``BEGIN IMMEDIATE`` transaction, so several instances, in one
  process or many, can share one file: writers queue on SQLite's lock and each
  compare-and-set is decided inside its transaction.
- Rows: ``{namespace}_schedules(id, spec, state, next_fire_at, version)`` and
  ``{namespace}_runs(id, schedule_id, state, created_at, watch_at, data)``. ``spec``,
  ``state`` and ``data`` are JSON records (``_codec.to_record``, datetimes as ISO 8601);
  the indexed time columns are integer epoch microseconds. ``next_fire_at`` and
  ``watch_at`` have partial indexes, so idle schedules and terminal runs cost nothing.
- ``version`` is an integer, exposed as its decimal string.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from firecron.core.models import ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Run, RunState
from firecron.errors import ConflictError, InvalidInputError, StoreError
from firecron.store._codec import to_record
from firecron.store.base import StoreStats

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BUSY_TIMEOUT_S = 30.0
# Bound on host parameters per statement; SQLite's own default limit is far higher.
_IN_CHUNK = 500
# A new schedule starts at a random version, not 1: after a delete and re-create of the
# same id, a StoredSchedule read before the delete must not match the new row (ABA).
_VERSION_START_BOUND = 2**48


def _micros(value: datetime) -> int:
    """``value`` as integer epoch microseconds; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"naive datetime {value.isoformat()}: firecron needs aware UTC")
    return (value - _EPOCH) // _MICROSECOND


def _optional_micros(value: datetime | None) -> int | None:
    return None if value is None else _micros(value)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _encode(model: BaseModel) -> str:
    """The JSON text of ``model``'s record (see ``_codec``)."""
    return json.dumps(to_record(model), default=_json_default, separators=(",", ":"))


def _parse_version(version: str) -> int | None:
    """The integer behind a version token, or None when it cannot be one of ours."""
    try:
        return int(version)
    except (TypeError, ValueError):
        return None


class SQLiteStore:
    """A :class:`~firecron.store.base.Store` in one SQLite file.

    Opening is lazy: the file, its parent directories and the tables are created on
    the first call, so constructing a store does no I/O. Raises
    :class:`InvalidInputError` for a bad ``namespace`` and :class:`StoreError` (one
    line, naming the database) for any SQLite failure.
    """

    namespace: str
    stats: StoreStats

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "firecron") -> None:
        if not _NAMESPACE.match(namespace):
            raise InvalidInputError(
                f"invalid namespace {namespace!r}: use a lowercase letter then up to 40 "
                "lowercase letters, digits or '_'"
            )
        self.namespace = namespace
        self.stats = StoreStats()
        self._path = Path(path)
        self._url = f"sqlite:///{os.fspath(path)}"
        self._schedules = f"{namespace}_schedules"
        self._runs = f"{namespace}_runs"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self._url!r}, namespace={self.namespace!r})"

    # -- plumbing -----------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` in a thread, holding the lock, translating sqlite3 errors."""
        return await asyncio.to_thread(self._call_sync, fn)

    def _call_sync(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._connect()
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(f"store {self._url}: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # Leave no transaction open whatever went wrong, so the next call starts clean.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()

    def _connect(self) -> sqlite3.Connection:
        """The connection, opened and migrated on first use. Caller holds the lock."""
        if self._closed:
            raise StoreError(f"store {self._url} is closed")
        if self._conn is not None:
            return self._conn
        conn: sqlite3.Connection | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; every write below opens its
            # own BEGIN IMMEDIATE, so the write lock is taken before anything is read.
            conn = sqlite3.connect(
                self._path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,  # used from worker threads, serialised by _lock
            )
            # busy_timeout first: switching to WAL needs a lock another opener may hold.
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._create_schema(conn)
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            reason: object = exc
            if isinstance(exc, OSError) and exc.strerror:
                reason = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
            raise StoreError(f"cannot open store {self._url}: {reason}") from exc
        self._conn = conn
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        s, r = self._schedules, self._runs
        # One transaction so concurrent first openers do not interleave their DDL.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s} ("
            " id TEXT PRIMARY KEY,"
            " spec TEXT NOT NULL,"  # JSON
            " state TEXT NOT NULL,"  # JSON
            " next_fire_at INTEGER,"  # epoch microseconds; NULL when idle
            " version INTEGER NOT NULL)"
        )
        # Partial: idle schedules are not in the index, so the due query never meets them.
        # id is the tie-break of the due order.
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {s}_due ON {s}(next_fire_at, id)"
            " WHERE next_fire_at IS NOT NULL"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {r} ("
            " id TEXT PRIMARY KEY,"
            " schedule_id TEXT NOT NULL,"
            " state TEXT NOT NULL,"
            " created_at INTEGER NOT NULL,"  # epoch microseconds
            " watch_at INTEGER,"  # epoch microseconds; NULL when terminal
            " version INTEGER NOT NULL DEFAULT 1,"
            " data TEXT NOT NULL)"  # JSON
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_watch ON {r}(watch_at, id) WHERE watch_at IS NOT NULL"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_by_schedule ON {r}(schedule_id, created_at, id)"
        )
        conn.execute(f"CREATE INDEX IF NOT EXISTS {r}_by_state ON {r}(state, created_at, id)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {r}_by_created ON {r}(created_at, id)")
        conn.execute("COMMIT")

    def _query(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one read query; counts it and the rows it returned."""
        rows = conn.execute(sql, params).fetchall()
        self.stats.queries += 1
        self.stats.reads += len(rows)
        return rows

    def _schedule_from_row(self, row: Sequence[Any]) -> StoredSchedule:
        schedule_id, spec, state, version = row
        try:
            return StoredSchedule(
                spec=ScheduleSpec.model_validate(json.loads(spec)),
                state=ScheduleState.model_validate(json.loads(state)),
                version=str(version),
            )
        except (ValueError, ValidationError) as exc:
            raise StoreError(
                f"store {self._url}: unreadable schedule {schedule_id!r}: {_first_line(exc)}"
            ) from exc

    def _run_from_row(self, run_id: str, data: str, version: int) -> Run:
        try:
            run = Run.model_validate(json.loads(data))
            run.version = str(version)
            return run
        except (ValueError, ValidationError) as exc:
            raise StoreError(
                f"store {self._url}: unreadable run {run_id!r}: {_first_line(exc)}"
            ) from exc

    def _run_values(self, run: Run) -> tuple[str, str, int, int | None, str]:
        """Column values (schedule_id, state, created_at, watch_at, data) of ``run``."""
        return (
            run.schedule_id,
            run.state.value,
            _micros(run.created_at),
            _optional_micros(run.watch_at),
            _encode(run),
        )

    def _insert_run(self, conn: sqlite3.Connection, run: Run) -> Run | None:
        """Insert ``run`` inside the caller's transaction; None if its id exists."""
        try:
            conn.execute(
                f"INSERT INTO {self._runs}"
                " (id, schedule_id, state, created_at, watch_at, data, version)"
                " VALUES (?, ?, ?, ?, ?, ?, 1)",
                (run.id, *self._run_values(run)),
            )
        except sqlite3.IntegrityError:
            return None
        return run.model_copy(update={"version": "1"})

    # -- schedules ----------------------------------------------------------------

    async def put_schedule(
        self, spec: ScheduleSpec, state: ScheduleState, *, expect_version: str | None
    ) -> StoredSchedule:
        """See :meth:`Store.put_schedule`. One ``BEGIN IMMEDIATE`` transaction."""
        spec_json, state_json = _encode(spec), _encode(state)
        next_fire = _optional_micros(state.next_fire_at)

        def put(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            if expect_version is None:
                version = secrets.randbelow(_VERSION_START_BOUND) + 1
                try:
                    conn.execute(
                        f"INSERT INTO {self._schedules} (id, spec, state, next_fire_at, version)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (spec.id, spec_json, state_json, next_fire, version),
                    )
                except sqlite3.IntegrityError as exc:
                    conn.rollback()
                    raise ConflictError(f"schedule {spec.id!r} already exists") from exc
            else:
                expected = _parse_version(expect_version)
                # fetchall: the statement must be finished before COMMIT.
                rows = conn.execute(
                    f"UPDATE {self._schedules} SET spec = ?, state = ?, next_fire_at = ?,"
                    " version = version + 1 WHERE id = ? AND version = ? RETURNING version",
                    (spec_json, state_json, next_fire, spec.id, expected),
                ).fetchall()
                if not rows:
                    conn.rollback()
                    raise ConflictError(
                        f"schedule {spec.id!r} changed since it was read"
                        f" (expected version {expect_version}) or does not exist"
                    )
                version = int(rows[0][0])
            conn.execute("COMMIT")
            self.stats.writes += 1
            return version

        version = await self._call(put)
        return StoredSchedule(spec=spec, state=state, version=str(version))

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        """See :meth:`Store.get_schedule`. One read."""

        def get(conn: sqlite3.Connection) -> StoredSchedule | None:
            rows = self._query(
                conn,
                f"SELECT id, spec, state, version FROM {self._schedules} WHERE id = ?",
                (schedule_id,),
            )
            return self._schedule_from_row(rows[0]) if rows else None

        return await self._call(get)

    async def list_schedules(self) -> list[StoredSchedule]:
        """See :meth:`Store.list_schedules`. Ordered by id."""

        def list_all(conn: sqlite3.Connection) -> list[StoredSchedule]:
            rows = self._query(
                conn, f"SELECT id, spec, state, version FROM {self._schedules} ORDER BY id"
            )
            return [self._schedule_from_row(row) for row in rows]

        return await self._call(list_all)

    async def delete_schedule(self, schedule_id: str, *, expect_version: str | None = None) -> bool:
        """See :meth:`Store.delete_schedule`. Runs are kept."""

        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            if expect_version is None:
                cursor = conn.execute(f"DELETE FROM {self._schedules} WHERE id = ?", (schedule_id,))
            else:
                cursor = conn.execute(
                    f"DELETE FROM {self._schedules} WHERE id = ? AND version = ?",
                    (schedule_id, _parse_version(expect_version)),
                )
            if cursor.rowcount == 0:
                # Nothing deleted: tell "missing" (False) from "changed" (conflict).
                exists = (
                    expect_version is not None
                    and self._query(
                        conn, f"SELECT 1 FROM {self._schedules} WHERE id = ?", (schedule_id,)
                    )
                    != []
                )
                conn.rollback()
                if exists:
                    raise ConflictError(
                        f"schedule {schedule_id!r} changed since it was read"
                        f" (expected version {expect_version})"
                    )
                return False
            conn.execute("COMMIT")
            self.stats.writes += 1
            return True

        return await self._call(delete)

    async def due_schedules(self, now: datetime, limit: int) -> list[StoredSchedule]:
        """See :meth:`Store.due_schedules`. One query on the partial ``next_fire_at`` index."""
        bound = _micros(now)
        if limit <= 0:
            return []

        def due(conn: sqlite3.Connection) -> list[StoredSchedule]:
            rows = self._query(
                conn,
                f"SELECT id, spec, state, version FROM {self._schedules}"
                " WHERE next_fire_at IS NOT NULL AND next_fire_at <= ?"
                " ORDER BY next_fire_at, id LIMIT ?",
                (bound, limit),
            )
            return [self._schedule_from_row(row) for row in rows]

        return await self._call(due)

    async def claim(
        self, stored: StoredSchedule, new_state: ScheduleState, runs: Sequence[Run]
    ) -> list[Run] | None:
        """See :meth:`Store.claim`. One ``BEGIN IMMEDIATE`` transaction; all or nothing."""
        expected = _parse_version(stored.version)
        state_json = _encode(new_state)
        next_fire = _optional_micros(new_state.next_fire_at)
        # Encode before taking the lock so a bad run fails before anything is written.
        for run in runs:
            self._run_values(run)

        def claim(conn: sqlite3.Connection) -> list[Run] | None:
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute(
                f"UPDATE {self._schedules} SET state = ?, next_fire_at = ?, version = version + 1"
                " WHERE id = ? AND version = ?",
                (state_json, next_fire, stored.id, expected),
            )
            if cursor.rowcount == 0:
                conn.rollback()
                return None
            created: list[Run] = []
            for run in runs:
                inserted = self._insert_run(conn, run)
                if inserted is None:
                    conn.rollback()
                    return None
                created.append(inserted)
            conn.execute("COMMIT")
            self.stats.writes += 1 + len(runs)
            return created

        return await self._call(claim)

    # -- runs ---------------------------------------------------------------------

    async def create_run(self, run: Run) -> Run | None:
        """See :meth:`Store.create_run`."""
        self._run_values(run)

        def create(conn: sqlite3.Connection) -> Run | None:
            conn.execute("BEGIN IMMEDIATE")
            inserted = self._insert_run(conn, run)
            if inserted is None:
                conn.rollback()
                return None
            conn.execute("COMMIT")
            self.stats.writes += 1
            return inserted

        return await self._call(create)

    async def get_run(self, run_id: str) -> Run | None:
        """See :meth:`Store.get_run`. One read."""

        def get(conn: sqlite3.Connection) -> Run | None:
            rows = self._query(
                conn, f"SELECT data, version FROM {self._runs} WHERE id = ?", (run_id,)
            )
            return self._run_from_row(run_id, rows[0][0], rows[0][1]) if rows else None

        return await self._call(get)

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        """See :meth:`Store.get_runs`. Found runs in the order given; missing ids are skipped."""
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return []

        def get_many(conn: sqlite3.Connection) -> dict[str, Run]:
            found: dict[str, Run] = {}
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                for run_id, data, version in self._query(
                    conn,
                    f"SELECT id, data, version FROM {self._runs} WHERE id IN ({marks})",
                    chunk,
                ):
                    found[run_id] = self._run_from_row(run_id, data, version)
            return found

        found = await self._call(get_many)
        return [found[run_id] for run_id in run_ids if run_id in found]

    async def update_run(
        self,
        run_id: str,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        current: Run | None = None,
    ) -> Run | None:
        """See :meth:`Store.update_run`. Read, check and write in one ``BEGIN IMMEDIATE``.

        Raises :class:`InvalidInputError` (and writes nothing) when ``changes`` name an
        unknown field, hold an invalid value or try to change the run's ``id``.
        """
        allowed = {RunState(state).value for state in expect_states}
        if "id" in changes and changes["id"] != run_id:
            raise InvalidInputError(f"update_run cannot change the id of run {run_id!r}")

        version = current.version if current is not None else None
        if current is not None and version is None:
            raise InvalidInputError(f"update_run {run_id!r}: 'current' carries no version")
        wanted_version = None if version is None else _parse_version(version)

        def update(conn: sqlite3.Connection) -> Run | None:
            conn.execute("BEGIN IMMEDIATE")
            # Within one IMMEDIATE transaction the read is free of races, so the version
            # path and the conditions path share it; only Firestore saves a read.
            rows = conn.execute(
                f"SELECT state, data, version FROM {self._runs} WHERE id = ?", (run_id,)
            ).fetchall()
            if version is None:
                self.stats.queries += 1
                self.stats.reads += len(rows)
            if not rows or (version is not None and rows[0][2] != wanted_version):
                conn.rollback()
                return None
            stored = self._run_from_row(run_id, rows[0][1], rows[0][2])
            if version is None and (
                rows[0][0] not in allowed
                or any(getattr(stored, k) != v for k, v in (expect or {}).items())
            ):
                conn.rollback()
                return None
            try:
                # Validate the merged whole, so a bad value or unknown field raises here
                # instead of being stored (model_copy(update=...) would not validate).
                updated = Run.model_validate({**stored.model_dump(), **changes})
            except ValidationError as exc:
                raise InvalidInputError(
                    f"invalid changes to run {run_id!r}: {_first_line(exc)}"
                ) from exc
            conn.execute(
                f"UPDATE {self._runs} SET schedule_id = ?, state = ?, created_at = ?,"
                " watch_at = ?, data = ?, version = version + 1 WHERE id = ?",
                (*self._run_values(updated), run_id),
            )
            conn.execute("COMMIT")
            self.stats.writes += 1
            return updated.model_copy(update={"version": str(rows[0][2] + 1)})

        return await self._call(update)

    async def due_watches(self, now: datetime, limit: int) -> list[Run]:
        """See :meth:`Store.due_watches`. One query on the partial ``watch_at`` index."""
        bound = _micros(now)
        if limit <= 0:
            return []

        def due(conn: sqlite3.Connection) -> list[Run]:
            rows = self._query(
                conn,
                f"SELECT id, data, version FROM {self._runs}"
                " WHERE watch_at IS NOT NULL AND watch_at <= ? ORDER BY watch_at, id LIMIT ?",
                (bound, limit),
            )
            return [self._run_from_row(run_id, data, v) for run_id, data, v in rows]

        return await self._call(due)

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        states: Sequence[RunState] | None = None,
        limit: int = 50,
        before: datetime | None = None,
    ) -> list[Run]:
        """See :meth:`Store.list_runs`. Newest first by ``created_at``, then by id descending.

        ``states=[]`` matches nothing; ``None`` does not filter.
        """
        where: list[str] = []
        params: list[Any] = []
        if schedule_id is not None:
            where.append("schedule_id = ?")
            params.append(schedule_id)
        if states is not None:
            values = list(dict.fromkeys(RunState(state).value for state in states))
            if not values:
                return []
            where.append(f"state IN ({', '.join('?' * len(values))})")
            params.extend(values)
        if before is not None:
            where.append("created_at < ?")
            params.append(_micros(before))
        if limit <= 0:
            return []
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT id, data, version FROM {self._runs}{clause} ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)

        def list_some(conn: sqlite3.Connection) -> list[Run]:
            rows = self._query(conn, sql, params)
            return [self._run_from_row(run_id, data, v) for run_id, data, v in rows]

        return await self._call(list_some)

    async def close(self) -> None:
        """See :meth:`Store.close`. Idempotent."""
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise StoreError(f"store {self._url}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    """One line describing ``exc`` (pydantic errors span several lines)."""
    if isinstance(exc, ValidationError):
        parts: Iterable[str] = (
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
            for err in exc.errors()
        )
        return "; ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
