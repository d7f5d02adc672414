"""The SQLite store: the embedded default backend (``sqlite:///path.db``).

Implements :class:`firecron.store.base.Store` with the standard library's ``sqlite3``.

- Every call runs on the instance's own thread, on its one connection, so the event
  loop never blocks on disk (:mod:`firecron.store._sqlite_batch`). The calls of one
  event-loop iteration are handed over together, and their writes share one
  ``BEGIN IMMEDIATE`` transaction (group commit), each in its own savepoint: each
  write is still all or nothing, a lost compare-and-set undoes only its own call, and
  results are delivered only after the ``COMMIT``.
- The database is in WAL mode with ``synchronous=NORMAL`` and a 30 s busy timeout.
  Several instances, in one process or many, can share one file: writers queue on
  SQLite's lock and each compare-and-set is decided inside its transaction.
- Rows: ``{namespace}_schedules(id, spec, state, next_fire_at, version)``,
  ``{namespace}_runs(id, schedule_id, state, created_at, watch_at, wait_key, version,
  data)``, ``{namespace}_state(key, value, version, updated_at)`` and
  ``{namespace}_logs(run_id, attempt, seq, at, level, logger, message, truncated)``
  (primary key ``(run_id, attempt, seq)``, so an attempt's lines are one range). ``spec``,
  ``state`` and ``data`` are JSON records (``_codec.to_json``, datetimes as ISO 8601);
  the indexed time columns are integer epoch microseconds. ``next_fire_at``,
  ``watch_at`` and ``wait_key`` have partial indexes, so idle schedules, terminal runs
  and runs waiting on nothing cost nothing. A state entry's ``value`` is its compact
  JSON text (``core.state.encode_value``), ``version`` an integer from 1, ``updated_at``
  epoch microseconds (docs/design.md, "The state collection's layout").
- Opening migrates a database an earlier version created: the ``wait_key`` column is
  added (and filled from ``data``) when missing, and every table and index (the
  ``_logs`` table of a database from before logs among them) is created if it does not
  exist, in one transaction.
- ``version`` is an integer, exposed as its decimal string.
- A mark (:meth:`SQLiteStore.mark_upstream`) is one ``json_set`` on ``data``'s
  ``upstream`` map in the ``UPDATE`` itself, so it needs no read and can never
  overwrite another task's mark; every other run write is a whole ``data`` built from
  a read made in its own transaction, or a version compare-and-set that a mark in
  between makes fail, so no write drops a mark.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from firecron.core.logs import LogLine
from firecron.core.models import JsonValue, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Run, RunState, UpstreamEnd
from firecron.core.shards import Shard, bucket_of
from firecron.core.state import StateEntry
from firecron.errors import ConflictError, InvalidInputError, StoreError
from firecron.store._codec import readable_schedules, run_from_json, to_json
from firecron.store._common import (
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
from firecron.store._sqlite_batch import Abort, Batcher
from firecron.store.base import (
    ScheduleWrite,
    StoreStats,
    check_distinct,
    check_get_logs,
    check_log_lines,
)

__all__ = ["SQLiteStore"]

_RunValues = tuple[str, str, int, int | None, str | None, str]
"""A run's columns after its id: schedule_id, state, created_at, watch_at, wait_key, data."""
_RunRow = tuple[str, str, str, int, int | None, str | None, str]
"""A run's id and :data:`_RunValues`: one ``INSERT`` row."""

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


def _encode(model: BaseModel) -> str:
    """The JSON text of ``model``'s record (``_codec.to_json``)."""
    return to_json(model)


def _due_query(
    table: str, columns: str, time_column: str, bound: int, limit: int, shard: Shard | None
) -> tuple[str, list[int]]:
    """The due query's SQL and parameters: rows with ``time_column <= bound``, earliest
    first (ties by id), at most ``limit``.

    Unsharded, one range of the partial ``(time, id)`` index. Sharded, one range of the
    ``(bucket, time, id)`` index per owned bucket, each at most ``limit`` ids read from
    the index alone, merged, and only the first ``limit`` rows fetched: a page reads at
    most ``limit`` index entries per bucket, however far behind the ticks are.
    """
    if shard is None or shard.count == 1:
        return (
            f"SELECT {columns} FROM {table}"
            f" WHERE {time_column} IS NOT NULL AND {time_column} <= ?"
            f" ORDER BY {time_column}, id LIMIT ?",
            [bound, limit],
        )
    buckets = shard.buckets()
    member = (
        f"SELECT * FROM (SELECT id AS due_id, {time_column} AS due_at FROM {table}"
        f" WHERE bucket = ? AND {time_column} IS NOT NULL AND {time_column} <= ?"
        f" ORDER BY {time_column}, id LIMIT ?)"
    )
    params: list[int] = []
    for bucket in buckets:
        params += [bucket, bound, limit]
    return (
        f"SELECT {columns} FROM ({' UNION ALL '.join([member] * len(buckets))}"
        f" ORDER BY due_at, due_id LIMIT ?) JOIN {table} ON id = due_id"
        " ORDER BY due_at, due_id",
        [*params, limit],
    )


def _parse_version(version: str) -> int | None:
    """The integer behind a version token, or None when it cannot be one of ours."""
    try:
        return int(version)
    except (TypeError, ValueError):
        return None


class SQLiteStore:
    """A :class:`~firecron.store.base.Store` in one SQLite file.

    Opening is lazy: the file, its parent directories and the tables are created on
    the first call, so constructing a store does no I/O. With ``create=False`` the
    file must already exist: the first call fails with :class:`StoreError` instead of
    creating it or its directories (read-only commands use this). Raises
    :class:`InvalidInputError` for a bad ``namespace`` and :class:`StoreError` (one
    line, naming the database) for any SQLite failure.
    """

    namespace: str
    stats: StoreStats

    def __init__(
        self, path: str | os.PathLike[str], *, namespace: str = "firecron", create: bool = True
    ) -> None:
        check_namespace(namespace)
        self.namespace = namespace
        self.stats = StoreStats()
        self._path = Path(path)
        self._create = create
        self._url = f"sqlite:///{os.fspath(path)}"
        self._schedules = f"{namespace}_schedules"
        self._runs = f"{namespace}_runs"
        self._state = f"{namespace}_state"
        self._logs = f"{namespace}_logs"
        self._batcher = Batcher(
            self._connect, url=self._url, name=f"firecron-sqlite-{namespace}", stats=self.stats
        )
        # Every call runs ``fn(connection)`` on the store's thread (see Batcher.call);
        # bound once, as calling through a method of ours would add a coroutine per call.
        self._call = self._batcher.call

    def __repr__(self) -> str:
        return f"SQLiteStore({self._url!r}, namespace={self.namespace!r})"

    # -- plumbing -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the connection and migrate the schema (the batcher's ``connect``)."""
        conn: sqlite3.Connection | None = None
        try:
            if self._create:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            # mode=rw: SQLite itself refuses a missing file, so no check-then-open race
            # can create one behind a read-only command.
            target: str | Path = (
                self._path if self._create else f"file:{quote(os.fspath(self._path))}?mode=rw"
            )
            # isolation_level=None: no implicit transactions; every write below opens its
            # own BEGIN IMMEDIATE, so the write lock is taken before anything is read.
            conn = sqlite3.connect(
                target,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,  # closed from another thread, under the batcher's lock
                uri=not self._create,
            )
            # busy_timeout first: switching to WAL needs a lock another opener may hold.
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            mode = _enable_wal(conn)
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
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        s, r, k = self._schedules, self._runs, self._state
        # One transaction so concurrent first openers do not interleave their DDL.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s} ("
            " id TEXT PRIMARY KEY,"
            " spec TEXT NOT NULL,"  # JSON
            " state TEXT NOT NULL,"  # JSON
            " next_fire_at INTEGER,"  # epoch microseconds; NULL when idle
            " version INTEGER NOT NULL,"
            " bucket INTEGER NOT NULL DEFAULT 0)"  # core.shards.bucket_of(id)
        )
        self._add_buckets(conn, s, "id")
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
            " data TEXT NOT NULL,"  # JSON
            " wait_key TEXT,"  # the state key it waits on; NULL when it waits on none
            " bucket INTEGER NOT NULL DEFAULT 0)"  # core.shards.bucket_of(schedule_id)
        )
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({r})")}
        if "wait_key" not in columns:
            # A database from before waits. Its runs never waited, but one written by a
            # version whose records had the field and the table not may hold a key.
            conn.execute(f"ALTER TABLE {r} ADD COLUMN wait_key TEXT")
            conn.execute(
                f"UPDATE {r} SET wait_key = json_extract(data, '$.wait_key')"
                " WHERE json_extract(data, '$.wait_key') IS NOT NULL"
            )
        self._add_buckets(conn, r, "schedule_id")
        # A shard's due queries: one range of (bucket, time) per bucket it owns.
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {s}_due_by_bucket ON {s}(bucket, next_fire_at, id)"
            " WHERE next_fire_at IS NOT NULL"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_watch_by_bucket ON {r}(bucket, watch_at, id)"
            " WHERE watch_at IS NOT NULL"
        )
        # Partial: runs waiting on no key (nearly all) are not in the index.
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_waiting ON {r}(wait_key) WHERE wait_key IS NOT NULL"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_watch ON {r}(watch_at, id) WHERE watch_at IS NOT NULL"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {r}_by_schedule ON {r}(schedule_id, created_at, id)"
        )
        conn.execute(f"CREATE INDEX IF NOT EXISTS {r}_by_state ON {r}(state, created_at, id)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {r}_by_created ON {r}(created_at, id)")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {k} ("
            " key TEXT PRIMARY KEY,"
            " value TEXT NOT NULL,"  # compact JSON text
            " version INTEGER NOT NULL,"  # 1 when created, +1 per write
            " updated_at INTEGER NOT NULL)"  # epoch microseconds
        )
        # No rowid: the primary key is the only order lines are read in.
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._logs} ("
            " run_id TEXT NOT NULL,"
            " attempt INTEGER NOT NULL,"
            " seq INTEGER NOT NULL,"
            " at INTEGER NOT NULL,"  # epoch microseconds
            " level TEXT NOT NULL,"
            " logger TEXT NOT NULL,"
            " message TEXT NOT NULL,"
            " truncated INTEGER NOT NULL DEFAULT 0,"  # 1 on the marker line
            " PRIMARY KEY (run_id, attempt, seq)) WITHOUT ROWID"
        )
        conn.execute("COMMIT")

    @staticmethod
    def _add_buckets(conn: sqlite3.Connection, table: str, source: str) -> None:
        """Add the ``bucket`` column to a table from before shards, filled from ``source``.

        Inside the schema transaction. The column is set once, when a row is inserted:
        the id it hashes never changes, so no later write touches it.
        """
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "bucket" in columns:
            return
        conn.execute(f"ALTER TABLE {table} ADD COLUMN bucket INTEGER NOT NULL DEFAULT 0")
        conn.create_function("firecron_bucket", 1, bucket_of, deterministic=True)
        conn.execute(f"UPDATE {table} SET bucket = firecron_bucket({source})")

    def _due_rows(
        self,
        conn: sqlite3.Connection,
        *,
        table: str,
        columns: str,
        time_column: str,
        bound: int,
        limit: int,
        shard: Shard | None,
    ) -> list[Any]:
        """The due query (:func:`_due_query`), counted as one query."""
        sql, params = _due_query(table, columns, time_column, bound, limit, shard)
        return self._query(conn, sql, params)

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
                spec=ScheduleSpec.model_validate_json(spec),
                state=ScheduleState.model_validate_json(state),
                version=str(version),
            )
        except (ValueError, ValidationError) as exc:
            raise StoreError(
                f"store {self._url}: unreadable schedule {schedule_id!r}: {_first_line(exc)}"
            ) from exc

    def _run_from_row(self, run_id: str, data: str, version: int) -> Run:
        try:
            run = run_from_json(data)
            run.version = str(version)
            return run
        except (ValueError, ValidationError) as exc:
            raise StoreError(
                f"store {self._url}: unreadable run {run_id!r}: {_first_line(exc)}"
            ) from exc

    @staticmethod
    def _run_values(run: Run) -> _RunValues:
        """Column values (schedule_id, state, created_at, watch_at, wait_key, data) of ``run``.

        This is the one encoding of a run per write; raises :class:`InvalidInputError`
        for a naive datetime, so callers encode before touching the database.
        """
        return (
            run.schedule_id,
            run.state.value,
            _micros(run.created_at),
            _optional_micros(run.watch_at),
            run.wait_key,
            _encode(run),
        )

    def _insert_runs(self, conn: sqlite3.Connection, rows: Sequence[_RunRow]) -> bool:
        """Insert encoded runs inside the caller's transaction; False if an id exists."""
        try:
            conn.executemany(
                f"INSERT INTO {self._runs}"
                " (id, schedule_id, state, created_at, watch_at, wait_key, data, bucket, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                [(*row, bucket_of(row[1])) for row in rows],
            )
        except sqlite3.IntegrityError:
            return False
        return True

    # -- schedules ----------------------------------------------------------------

    async def put_schedule(
        self, spec: ScheduleSpec, state: ScheduleState, *, expect_version: str | None
    ) -> StoredSchedule:
        """See :meth:`Store.put_schedule`. One write (see the module docstring)."""
        spec_json, state_json = _encode(spec), _encode(state)
        next_fire = _optional_micros(state.next_fire_at)

        def put(conn: sqlite3.Connection) -> int:
            if expect_version is None:
                version = secrets.randbelow(_VERSION_START_BOUND) + 1
                try:
                    conn.execute(
                        f"INSERT INTO {self._schedules}"
                        " (id, spec, state, next_fire_at, version, bucket)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (spec.id, spec_json, state_json, next_fire, version, bucket_of(spec.id)),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ConflictError(f"schedule {spec.id!r} already exists") from exc
            else:
                expected = _parse_version(expect_version)
                # fetchall: the statement must be finished before the savepoint ends.
                rows = conn.execute(
                    f"UPDATE {self._schedules} SET spec = ?, state = ?, next_fire_at = ?,"
                    " version = version + 1 WHERE id = ? AND version = ? RETURNING version",
                    (spec_json, state_json, next_fire, spec.id, expected),
                ).fetchall()
                if not rows:
                    raise ConflictError(
                        f"schedule {spec.id!r} changed since it was read"
                        f" (expected version {expect_version}) or does not exist"
                    )
                version = int(rows[0][0])
            self.stats.writes += 1
            return version

        version = await self._call(put, write=True)
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

    async def list_schedules(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[StoredSchedule]:
        """See :meth:`Store.list_schedules`. One query on the primary key, ordered by id."""
        if limit is not None and limit <= 0:
            return []
        # LIMIT -1 is SQLite's "no limit"; '' sorts before every id.
        params = ("" if after is None else after, -1 if limit is None else limit)

        def list_some(conn: sqlite3.Connection) -> list[StoredSchedule]:
            rows = self._query(
                conn,
                f"SELECT id, spec, state, version FROM {self._schedules}"
                " WHERE id > ? ORDER BY id LIMIT ?",
                params,
            )
            return [self._schedule_from_row(row) for row in rows]

        return await self._call(list_some)

    async def write_schedules(
        self, writes: Sequence[ScheduleWrite], deletes: Sequence[str] = ()
    ) -> list[StoredSchedule | None]:
        """See :meth:`Store.write_schedules`. One write call, so one transaction.

        Everything is encoded first; then, inside the transaction, one ``SELECT`` per
        500 ids reads the current versions, which decide each write's condition (no
        one else can write in between), and ``executemany`` inserts, updates and
        deletes the rows.
        """
        check_distinct(writes, deletes)
        encoded = [
            (
                w.spec.id,
                _encode(w.spec),
                _encode(w.state),
                _optional_micros(w.state.next_fire_at),
                None if w.expect_version is None else _parse_version(w.expect_version),
            )
            for w in writes
        ]
        doomed = [(schedule_id,) for schedule_id in deletes]

        def write(conn: sqlite3.Connection) -> list[int | None]:
            current: dict[str, int] = {}
            ids = [row[0] for row in encoded]
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                current.update(
                    self._query(
                        conn,
                        f"SELECT id, version FROM {self._schedules} WHERE id IN ({marks})",
                        chunk,
                    )
                )
            inserts: list[tuple[str, str, str, int | None, int]] = []
            updates: list[tuple[str, str, int | None, int, str]] = []
            versions: list[int | None] = []
            for schedule_id, spec_json, state_json, next_fire, expected in encoded:
                have = current.get(schedule_id)
                if (have is not None) if expected is None else (have is None or have != expected):
                    versions.append(None)  # its condition failed: not applied
                    continue
                if have is None:
                    version = secrets.randbelow(_VERSION_START_BOUND) + 1
                    inserts.append((schedule_id, spec_json, state_json, next_fire, version))
                else:
                    version = have + 1
                    updates.append((spec_json, state_json, next_fire, version, schedule_id))
                versions.append(version)
            conn.executemany(
                f"INSERT INTO {self._schedules} (id, spec, state, next_fire_at, version, bucket)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, bucket_of(row[0])) for row in inserts],
            )
            conn.executemany(
                f"UPDATE {self._schedules} SET spec = ?, state = ?, next_fire_at = ?,"
                " version = ? WHERE id = ?",
                updates,
            )
            deleted = conn.executemany(
                f"DELETE FROM {self._schedules} WHERE id = ?", doomed
            ).rowcount
            self.stats.writes += len(inserts) + len(updates) + max(deleted, 0)
            return versions

        versions = await self._call(write, write=True)
        return [
            None
            if version is None
            else StoredSchedule(spec=w.spec, state=w.state, version=str(version))
            for w, version in zip(writes, versions, strict=True)
        ]

    async def delete_schedule(self, schedule_id: str, *, expect_version: str | None = None) -> bool:
        """See :meth:`Store.delete_schedule`. Runs are kept."""

        def delete(conn: sqlite3.Connection) -> bool:
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
                if exists:
                    raise ConflictError(
                        f"schedule {schedule_id!r} changed since it was read"
                        f" (expected version {expect_version})"
                    )
                return False
            self.stats.writes += 1
            return True

        return await self._call(delete, write=True)

    async def clock(self) -> datetime:
        """See :meth:`Store.clock`: the database file is on this machine, so its clock is ours."""
        return datetime.now(UTC)

    async def due_schedules(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[StoredSchedule]:
        """See :meth:`Store.due_schedules`. One query on a partial ``next_fire_at`` index
        (see :meth:`_due_rows`)."""
        bound = _micros(now)
        if limit <= 0:
            return []

        def due(conn: sqlite3.Connection) -> list[StoredSchedule]:
            rows = self._due_rows(
                conn,
                table=self._schedules,
                columns="id, spec, state, version",
                time_column="next_fire_at",
                bound=bound,
                limit=limit,
                shard=shard,
            )
            return readable_schedules(rows, self._schedule_from_row)

        return await self._call(due)

    async def claim(
        self, stored: StoredSchedule, new_state: ScheduleState, runs: Sequence[Run]
    ) -> list[Run] | None:
        """See :meth:`Store.claim`. One write (its own savepoint); all or nothing."""
        expected = _parse_version(stored.version)
        state_json = _encode(new_state)
        next_fire = _optional_micros(new_state.next_fire_at)
        # Encode each run once, before the lock: a bad run fails before anything is
        # written, and the transaction only executes statements.
        rows = [(run.id, *self._run_values(run)) for run in runs]

        def claim(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"UPDATE {self._schedules} SET state = ?, next_fire_at = ?, version = version + 1"
                " WHERE id = ? AND version = ?",
                (state_json, next_fire, stored.id, expected),
            )
            if cursor.rowcount == 0:
                return False
            if rows and not self._insert_runs(conn, rows):
                raise Abort(False)  # a run exists: undo the schedule update too
            self.stats.writes += 1 + len(rows)
            return True

        if not await self._call(claim, write=True):
            return None
        return [run.model_copy(update={"version": "1"}) for run in runs]

    # -- runs ---------------------------------------------------------------------

    async def create_run(self, run: Run) -> Run | None:
        """See :meth:`Store.create_run`. One ``INSERT``."""
        row = (run.id, *self._run_values(run))

        def create(conn: sqlite3.Connection) -> bool:
            if not self._insert_runs(conn, [row]):
                return False
            self.stats.writes += 1
            return True

        if not await self._call(create, write=True):
            return None
        return run.model_copy(update={"version": "1"})

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
        """See :meth:`Store.update_run`.

        With ``current``: the merged run is validated and encoded first, then one
        ``UPDATE ... WHERE id = ? AND version = ?`` writes it (no read, nothing decoded
        on the store's thread). Without: read, check and write in one write call (the
        batch's transaction makes the read and the write atomic).

        Raises :class:`InvalidInputError` (and writes nothing) when ``changes`` name an
        unknown field, hold an invalid value or try to change the run's ``id``.
        """
        allowed = {RunState(state).value for state in expect_states}
        check_run_changes(run_id, changes)
        if current is not None:
            return await self._update_known(run_id, current, changes)

        def update(conn: sqlite3.Connection) -> Run | None:
            rows = conn.execute(
                f"SELECT state, data, version FROM {self._runs} WHERE id = ?", (run_id,)
            ).fetchall()
            self.stats.queries += 1
            self.stats.reads += len(rows)
            if not rows:
                return None
            state, data, version = rows[0]
            stored = self._run_from_row(run_id, data, version)
            if state not in allowed or any(
                getattr(stored, k) != v for k, v in (expect or {}).items()
            ):
                return None
            updated = merge_run(run_id, stored, changes)
            conn.execute(
                f"UPDATE {self._runs} SET schedule_id = ?, state = ?, created_at = ?,"
                " watch_at = ?, wait_key = ?, data = ?, version = version + 1 WHERE id = ?",
                (*self._run_values(updated), run_id),
            )
            self.stats.writes += 1
            updated.version = str(version + 1)
            return updated

        return await self._call(update, write=True)

    async def _update_known(
        self, run_id: str, current: Run, changes: Mapping[str, Any]
    ) -> Run | None:
        """The version path of :meth:`update_run`: one compare-and-set ``UPDATE``."""
        if current.version is None:
            raise InvalidInputError(f"update_run {run_id!r}: 'current' carries no version")
        # The caller vouches for the conditions on ``current`` (see Store.update_run), so
        # the merged record is built from it, validated and encoded before the hop.
        updated = merge_run(run_id, current, changes)
        values = self._run_values(updated)
        version = _parse_version(current.version)
        if version is None:
            return None  # not a version this store issued: it cannot match

        def update(conn: sqlite3.Connection) -> bool:
            # One statement: the version check and the write cannot be separated.
            cursor = conn.execute(
                f"UPDATE {self._runs} SET schedule_id = ?, state = ?, created_at = ?,"
                " watch_at = ?, wait_key = ?, data = ?, version = version + 1"
                " WHERE id = ? AND version = ?",
                (*values, run_id, version),
            )
            if cursor.rowcount == 0:
                return False
            self.stats.writes += 1
            return True

        if not await self._call(update, write=True):
            return None
        updated.version = str(version + 1)
        return updated

    async def spawn(
        self,
        current: Run,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        runs: Sequence[Run],
    ) -> tuple[Run, list[Run]] | None:
        """See :meth:`Store.spawn`. One write call (its own savepoint): the version
        compare-and-set ``UPDATE`` of ``current``, then the ``INSERT`` of every run; an
        existing id rolls both back. Everything is validated and encoded first.

        ``current``'s state not in ``expect_states`` writes nothing (None), as does a
        version this store never issued.
        """
        if not check_spawn(current, expect_states, changes, runs):
            return None
        updated = merge_run(current.id, current, changes, "spawn")
        values = self._run_values(updated)
        rows = [(run.id, *self._run_values(run)) for run in runs]
        version = _parse_version(current.version or "")  # check_spawn refused None
        if version is None:
            return None  # not a version this store issued: it cannot match

        def spawn(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"UPDATE {self._runs} SET schedule_id = ?, state = ?, created_at = ?,"
                " watch_at = ?, wait_key = ?, data = ?, version = version + 1"
                " WHERE id = ? AND version = ?",
                (*values, current.id, version),
            )
            if cursor.rowcount == 0:
                return False
            if rows and not self._insert_runs(conn, rows):
                raise Abort(False)  # a run exists: undo the update too
            self.stats.writes += 1 + len(rows)
            return True

        if not await self._call(spawn, write=True):
            return None
        updated.version = str(version + 1)
        return updated, [run.model_copy(update={"version": "1"}) for run in runs]

    async def mark_upstream(self, run_id: str, task: str, end: UpstreamEnd) -> Run | None:
        """See :meth:`Store.mark_upstream`. One ``UPDATE ... RETURNING``: ``json_set`` of
        ``upstream.<task>`` inside ``data`` and a version bump, no precondition; the row
        it returns is the run after this write (one write, one read)."""
        check_mark(run_id, task)
        # The task id is checked above, so quoting it as a JSON path label is safe.
        path = f'$.upstream."{task}"'
        mark = to_json(end)

        def mark_one(conn: sqlite3.Connection) -> Run | None:
            rows = conn.execute(
                f"UPDATE {self._runs} SET data = json_set(data, ?, json(?)),"
                " version = version + 1 WHERE id = ? RETURNING data, version",
                (path, mark, run_id),
            ).fetchall()
            if not rows:
                return None
            self.stats.writes += 1
            self.stats.reads += 1
            data, version = rows[0]
            return self._run_from_row(run_id, data, version)

        return await self._call(mark_one, write=True)

    async def waiting_on(self, key: str, limit: int) -> list[Run]:
        """See :meth:`Store.waiting_on`. One query on the partial ``wait_key`` index."""
        if limit <= 0:
            return []

        def waiting(conn: sqlite3.Connection) -> list[Run]:
            rows = self._query(
                conn,
                f"SELECT id, data, version FROM {self._runs} WHERE wait_key = ? LIMIT ?",
                (key, limit),
            )
            return [self._run_from_row(run_id, data, v) for run_id, data, v in rows]

        return await self._call(waiting)

    # -- state --------------------------------------------------------------------

    def _entry_from_row(self, row: Sequence[Any]) -> StateEntry:
        key, value, version, updated_at = row
        try:
            return StateEntry(
                key=key,
                value=json.loads(value),
                version=version,
                updated_at=_EPOCH + updated_at * _MICROSECOND,
            )
        except (ValueError, TypeError, ValidationError) as exc:
            raise StoreError(
                f"store {self._url}: unreadable state entry {key!r}: {_first_line(exc)}"
            ) from exc

    def _check_fence(self, conn: sqlite3.Connection, key: str, fence: Run) -> None:
        """Raise :class:`~firecron.errors.Fenced` unless run ``fence.id`` is stored at
        ``fence.version`` (inside the caller's write transaction: nothing can change it
        before the write that follows commits)."""
        rows = conn.execute(
            f"SELECT version FROM {self._runs} WHERE id = ?", (fence.id,)
        ).fetchall()
        self.stats.queries += 1
        self.stats.reads += len(rows)
        if not rows or str(rows[0][0]) != fence.version:
            raise fence_refused(key, fence)

    def _state_version(self, conn: sqlite3.Connection, key: str) -> int | None:
        """The entry's version, or None when it does not exist (one counted read)."""
        rows = self._query(conn, f"SELECT version FROM {self._state} WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else None

    async def get_state(self, key: str) -> StateEntry | None:
        """See :meth:`Store.get_state`. One read."""
        check_state_key(key)

        def get(conn: sqlite3.Connection) -> StateEntry | None:
            rows = self._query(
                conn,
                f"SELECT key, value, version, updated_at FROM {self._state} WHERE key = ?",
                (key,),
            )
            return self._entry_from_row(rows[0]) if rows else None

        return await self._call(get)

    async def put_state(
        self,
        key: str,
        value: JsonValue,
        *,
        now: datetime,
        if_version: int | None = None,
        fence: Run | None = None,
    ) -> StateEntry:
        """See :meth:`Store.put_state`. One statement decides and writes: an upsert that
        adds one to the version (``if_version=None``), an ``INSERT`` (``0``) or an
        ``UPDATE ... WHERE version = N``; a lost compare-and-set reads the version found
        for its message. Nothing is written unless the key and value are valid. A
        ``fence`` is one more read, of the run's version, in the same transaction.
        """
        check_state_key(key)
        check_state_version("put_state", key, if_version, lowest=0)
        check_fence("put_state", key, fence)
        text = encode_state_value(key, value)
        stamp = _micros(now)

        def put(conn: sqlite3.Connection) -> int:
            if fence is not None:
                self._check_fence(conn, key, fence)
            if if_version is None:
                rows = conn.execute(
                    f"INSERT INTO {self._state} (key, value, version, updated_at)"
                    " VALUES (?, ?, 1, ?) ON CONFLICT (key) DO UPDATE SET"
                    " value = excluded.value, version = version + 1,"
                    " updated_at = excluded.updated_at RETURNING version",
                    (key, text, stamp),
                ).fetchall()
            elif if_version == 0:
                rows = conn.execute(
                    f"INSERT INTO {self._state} (key, value, version, updated_at)"
                    " VALUES (?, ?, 1, ?) ON CONFLICT (key) DO NOTHING RETURNING version",
                    (key, text, stamp),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"UPDATE {self._state} SET value = ?, version = version + 1,"
                    " updated_at = ? WHERE key = ? AND version = ? RETURNING version",
                    (text, stamp, key, if_version),
                ).fetchall()
            if not rows:
                raise _state_conflict(key, if_version, self._state_version(conn, key))
            self.stats.writes += 1
            return int(rows[0][0])

        version = await self._call(put, write=True)
        return StateEntry(key=key, value=json.loads(text), version=version, updated_at=now)

    async def delete_state(
        self, key: str, *, if_version: int | None = None, fence: Run | None = None
    ) -> bool:
        """See :meth:`Store.delete_state`. One ``DELETE`` (``WHERE version = N`` with
        ``if_version``); a lost compare-and-set reads the version found for its message.
        A ``fence`` is checked first in the same transaction, as for :meth:`put_state`."""
        check_state_key(key)
        check_state_version("delete_state", key, if_version, lowest=1)
        check_fence("delete_state", key, fence)

        def delete(conn: sqlite3.Connection) -> bool:
            if fence is not None:
                self._check_fence(conn, key, fence)
            if if_version is None:
                cursor = conn.execute(f"DELETE FROM {self._state} WHERE key = ?", (key,))
            else:
                cursor = conn.execute(
                    f"DELETE FROM {self._state} WHERE key = ? AND version = ?", (key, if_version)
                )
            if cursor.rowcount == 0:
                if if_version is None:
                    return False
                raise _state_conflict(key, if_version, self._state_version(conn, key))
            self.stats.writes += 1
            return True

        return await self._call(delete, write=True)

    async def list_state(
        self, *, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[StateEntry]:
        """See :meth:`Store.list_state`. One range query on the primary key, ordered by key."""
        bounds = state_key_range(prefix, after)
        if bounds is None or (limit is not None and limit <= 0):
            return []
        low, inclusive, high = bounds
        where = [f"key {'>=' if inclusive else '>'} ?"]
        params: list[Any] = [low]
        if high is not None:
            where.append("key < ?")
            params.append(high)
        params.append(-1 if limit is None else limit)  # LIMIT -1: no limit
        sql = (
            f"SELECT key, value, version, updated_at FROM {self._state}"
            f" WHERE {' AND '.join(where)} ORDER BY key LIMIT ?"
        )

        def list_some(conn: sqlite3.Connection) -> list[StateEntry]:
            return [self._entry_from_row(row) for row in self._query(conn, sql, params)]

        return await self._call(list_some)

    async def due_watches(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[Run]:
        """See :meth:`Store.due_watches`. One query on a partial ``watch_at`` index (see
        :meth:`_due_rows`)."""
        bound = _micros(now)
        if limit <= 0:
            return []

        def due(conn: sqlite3.Connection) -> list[Run]:
            rows = self._due_rows(
                conn,
                table=self._runs,
                columns="id, data, version",
                time_column="watch_at",
                bound=bound,
                limit=limit,
                shard=shard,
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

    # -- logs ---------------------------------------------------------------------

    async def append_logs(
        self,
        run_id: str,
        attempt: int,
        lines: Sequence[LogLine],
        *,
        expire_at: datetime | None = None,
    ) -> None:
        """See :meth:`Store.append_logs`. One ``INSERT OR IGNORE`` of every line, in one
        transaction: a line whose ``(run_id, attempt, seq)`` exists is left as it is.
        ``expire_at`` is checked (aware) and not stored: SQLite deletes no run either."""
        check_log_lines(run_id, attempt, lines)
        _optional_micros(expire_at)
        rows = [
            (
                run_id,
                attempt,
                line.seq,
                _micros(line.at),
                line.level,
                line.logger,
                line.message,
                int(line.truncated),
            )
            for line in lines
        ]
        if not rows:
            return

        def append(conn: sqlite3.Connection) -> None:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO {self._logs}"
                " (run_id, attempt, seq, at, level, logger, message, truncated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.stats.writes += conn.total_changes - before

        await self._call(append, write=True)

    async def get_logs(
        self, run_id: str, attempt: int | None = None, *, after: int = 0, limit: int | None = None
    ) -> list[LogLine]:
        """See :meth:`Store.get_logs`. One range query on the primary key."""
        check_get_logs(attempt, after)
        if limit is not None and limit <= 0:
            return []
        where = "run_id = ?"
        params: list[Any] = [run_id]
        if attempt is not None:
            where += " AND attempt = ? AND seq > ?"
            params += [attempt, after]
        params.append(-1 if limit is None else limit)  # LIMIT -1: no limit
        sql = (
            "SELECT attempt, seq, at, level, logger, message, truncated"
            f" FROM {self._logs} WHERE {where} ORDER BY attempt, seq LIMIT ?"
        )

        def read(conn: sqlite3.Connection) -> list[LogLine]:
            return [
                LogLine(
                    attempt=a,
                    seq=seq,
                    at=_EPOCH + at * _MICROSECOND,
                    level=level,
                    logger=logger,
                    message=message,
                    truncated=bool(truncated),
                )
                for a, seq, at, level, logger, message, truncated in self._query(conn, sql, params)
            ]

        return await self._call(read)

    async def close(self) -> None:
        """See :meth:`Store.close`. Idempotent; the calls already submitted run first."""
        await self._batcher.close()


def _state_conflict(key: str, expected: int | None, found: int | None) -> ConflictError:
    """The one-line conflict of a state write expecting version ``expected``."""
    have = "does not exist" if found is None else f"is at version {found}"
    want = "create only" if expected == 0 else f"expected version {expected}"
    return ConflictError(f"state key {key!r} {have} ({want})")


def _enable_wal(conn: sqlite3.Connection) -> str:
    """Switch the database to WAL mode (it stays so) and return the journal mode now.

    Openers of a new file race to switch it, and SQLite answers "database is locked"
    to the loser at once, without waiting in the busy handler: wait and try again, for
    as long as the busy timeout would have waited.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        # On the store's own thread (never the event loop): a short, growing pause.
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _first_line(exc: BaseException) -> str:
    """One line describing ``exc`` (pydantic errors span several lines)."""
    if isinstance(exc, ValidationError):
        parts: Iterable[str] = (
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
            for err in exc.errors()
        )
        return "; ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
