"""The ``Store`` protocol: the one interface between firecron's services and persistence.

The docstrings here are the contract. Every backend (``sqlite.py``, ``firestore.py``)
implements it, and ``tests/test_store_contract.py`` checks every backend against it.

General rules for every backend:
- All datetimes going in and out are timezone-aware UTC.
- Models are converted to rows/documents only inside the backend (see ``_codec.py``).
- Backend exceptions are translated: a lost compare-and-set is :class:`ConflictError`
  or a ``False``/``None`` return as documented per method; anything else is
  :class:`StoreError`. Callers never see sqlite3 or google-api-core exceptions.
- ``stats`` counts documents/rows read and written, as a bill would, so benchmarks
  and tests can check the cost model (an idle tick reads nothing but its queries).
  Where the backend bills a minimum per query (Firestore: an empty result costs one
  read) the backend counts it; SQLite counts rows returned only.
- There is no ``set_paused`` (the first design listed one; see docs/design.md,
  "Store contract"): pausing and resuming need trigger math from the core to compute
  the next state, and a store must not compute. The
  admin service computes the state and writes it with ``put_schedule``'s
  compare-and-set, which also makes a pause race safely with a concurrent claim.
- Schedules live in ``{namespace}_schedules``, runs in ``{namespace}_runs``, state
  entries in ``{namespace}_state`` and runs' captured log lines in ``{namespace}_logs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from firecron.core.logs import LogLine
from firecron.core.models import JsonValue, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Run, RunState, UpstreamEnd
from firecron.core.shards import Shard
from firecron.core.state import StateEntry
from firecron.errors import InvalidInputError

__all__ = [
    "ScheduleWrite",
    "Store",
    "StoreStats",
    "check_distinct",
    "check_get_logs",
    "check_log_lines",
    "clock_offset",
]


@dataclass
class StoreStats:
    """Documents or rows read and written since the store was opened (or last reset)."""

    reads: int = 0
    """Documents/rows returned by reads and queries."""
    writes: int = 0
    """Documents/rows created, updated or deleted by committed writes."""
    queries: int = 0
    """Queries issued (a query returning nothing still costs one read on Firestore)."""

    def reset(self) -> None:
        """Zero all counters."""
        self.reads = self.writes = self.queries = 0


@dataclass(frozen=True)
class ScheduleWrite:
    """One write of :meth:`Store.write_schedules`: what :meth:`Store.put_schedule` takes."""

    spec: ScheduleSpec
    state: ScheduleState
    expect_version: str | None
    """None creates (the id must not exist); else the version the schedule must still have."""


@runtime_checkable
class Store(Protocol):
    """Persistence for schedules and runs. All methods are coroutines and safe to call concurrently."""

    namespace: str
    """Prefix of the collections/tables."""
    stats: StoreStats
    """Read/write counters (see :class:`StoreStats`)."""

    async def put_schedule(
        self, spec: ScheduleSpec, state: ScheduleState, *, expect_version: str | None
    ) -> StoredSchedule:
        """Create or replace one schedule atomically and return it with its new version.

        ``expect_version=None`` creates: raises :class:`ConflictError` if the id exists.
        Otherwise replaces: raises :class:`ConflictError` unless the stored version
        equals ``expect_version`` (this is how pause/resume/apply race safely with claims).
        """
        ...

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        """The schedule, or None. One read."""
        ...

    async def list_schedules(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[StoredSchedule]:
        """Schedules ordered by id (ascending): those with an id greater than ``after``,
        at most ``limit`` of them (``None``: every one; ``limit <= 0``: none).

        A page costs its own documents only, whatever the schedule count: this is how
        ``firecron list`` pages (``after`` = the last id of the previous page).
        """
        ...

    async def write_schedules(
        self, writes: Sequence[ScheduleWrite], deletes: Sequence[str] = ()
    ) -> list[StoredSchedule | None]:
        """Many :meth:`put_schedule` writes and unconditional deletes, as few round trips.

        Returns, in the order of ``writes``, the stored schedule of each write applied
        and None for each write not applied. A write whose condition fails (the id
        exists for a create; the version differs, or the schedule is gone, for a
        replace) is never applied and is None; it raises nothing, so the caller can
        re-read and retry those alone. Deleting an id that does not exist is not an
        error. Runs are kept, as with :meth:`delete_schedule`.

        Atomicity differs by backend, and callers must allow for both:

        - SQLite: everything applied is committed in ONE transaction, so a failure
          (:class:`StoreError`) leaves the store as it was. Only failed conditions
          make a write None.
        - Firestore: writes, then deletes, are committed in atomic batches of at most
          500. A write whose condition fails voids its whole batch: every write of it
          is None and none of it is applied, while the other batches are applied. A
          :class:`StoreError` may come after some batches were committed.

        The same id twice in ``writes`` and ``deletes`` together is
        :class:`InvalidInputError`, and nothing is written.
        """
        ...

    async def delete_schedule(self, schedule_id: str, *, expect_version: str | None = None) -> bool:
        """Delete a schedule; its runs are kept as history. False if it did not exist.

        With ``expect_version``, raises :class:`ConflictError` if the version differs.
        """
        ...

    async def due_schedules(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[StoredSchedule]:
        """Schedules with ``state.next_fire_at <= now``, earliest first, at most ``limit``.

        With ``shard``, only those whose bucket (:func:`firecron.core.shards.bucket_of`
        of the id, stored with the record) that shard owns; None or a shard of count 1
        means every schedule. One indexed query, on ``(bucket, next_fire_at)`` when
        sharded. Idle schedules (``next_fire_at`` is None) are neither
        returned nor read, so an idle tick costs O(1) reads whatever the schedule count.
        A record that cannot be decoded is left out with one error log line naming it
        (it still counts against ``limit``), so one bad record never stops a tick.
        """
        ...

    async def claim(
        self, stored: StoredSchedule, new_state: ScheduleState, runs: Sequence[Run]
    ) -> list[Run] | None:
        """Atomically replace the schedule's state and create ``runs``; all or nothing.

        Succeeds only if the schedule's version still equals ``stored.version`` and none
        of the run ids exists yet, returning the created runs with their ``version`` set
        (so the caller's next write to them needs no read). Otherwise writes nothing and
        returns None: another dispatcher won the race. ``runs`` may be empty
        (state-only update; success returns ``[]``).
        """
        ...

    async def create_run(self, run: Run) -> Run | None:
        """Create a run and return it with its version; None (nothing written) if the id exists."""
        ...

    async def get_run(self, run_id: str) -> Run | None:
        """The run (with its version), or None. One read. Every method returning runs sets ``version``."""
        ...

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        """The runs that exist among ``run_ids``, in the order given. One read per found run."""
        ...

    async def update_run(
        self,
        run_id: str,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        current: Run | None = None,
    ) -> Run | None:
        """Compare-and-set on the run.

        If the run exists, its current state is in ``expect_states`` and every field in
        ``expect`` equals the given value (e.g. ``{"attempt": 2}``), apply ``changes``
        (``Run`` field names to new values; the caller sets ``updated_at``) atomically
        and return the updated run with its new version. Otherwise write nothing and
        return None. Of two concurrent calls whose conditions both hold, exactly one
        applies; the other is re-checked against the new record.

        With ``current`` (the run as returned by an earlier read or write, carrying its
        ``version``) the write is a pure compare-and-set on that version, done without
        a read: it applies only if the run is unchanged since then, and the caller
        vouches that ``expect_states`` and ``expect`` held for ``current``. This is how
        the dispatcher records a send outcome, and the watchdog acts, for one write. Invalid ``changes`` raise
        :class:`InvalidInputError` and write nothing.
        """
        ...

    async def spawn(
        self,
        current: Run,
        expect_states: Sequence[RunState],
        changes: Mapping[str, Any],
        runs: Sequence[Run],
    ) -> tuple[Run, list[Run]] | None:
        """Atomically apply ``changes`` to ``current`` and create ``runs``; all or nothing.

        The update is a version compare-and-set, as :meth:`update_run` with
        ``current=``: it applies only if the run is unchanged since ``current`` was read
        (the caller vouches that ``expect_states`` held for it). Each of ``runs`` is
        created only if its id does not exist. If either condition fails, nothing is
        written and the result is None. Otherwise returns the updated run and the
        created runs, each with its version. This is how a pipeline run starts: it
        becomes ``running`` in the same write that creates its task runs, so a crash
        leaves either both or neither. At most 499 runs (a Firestore commit holds 500
        writes); more is :class:`InvalidInputError` and writes nothing.
        """
        ...

    async def mark_upstream(self, run_id: str, task: str, end: UpstreamEnd) -> Run | None:
        """Record on run ``run_id`` that upstream task ``task`` ended as ``end``; return the
        run as it is after this write (with its version), or None if it does not exist.

        The mark is one entry of ``Run.upstream``, written on its own: it never fails on a
        concurrent write and never overwrites another task's mark, and writing the same
        mark again changes nothing but the version. Only this method writes marks;
        :meth:`update_run` and :meth:`spawn` keep them as they are. It bumps the version,
        so a compare-and-set computed from an earlier read fails.

        Linearizable per run: of several concurrent calls, the one that returns last
        sees every mark committed before it, so when N upstream tasks mark the same run
        at once, at least one caller sees all N (this is how a join task is judged
        exactly once: the judges then race a compare-and-set on its state). Costs one
        write and one read.
        """
        ...

    async def waiting_on(self, key: str, limit: int) -> list[Run]:
        """Runs whose ``wait_key`` is ``key`` (waiting on it), at most ``limit``, in no
        particular order. One indexed query, whatever the number of waiting runs: a write
        to a key finds its own waiters only. ``wait_key`` is set only while a run waits
        on the key, so released and ended runs are never returned."""
        ...

    # -- state: a small key-value collection (``{namespace}_state``) ---------------------
    # Keys and values follow ``firecron.core.state``; a bad key or value is
    # InvalidInputError and writes nothing.

    async def get_state(self, key: str) -> StateEntry | None:
        """The entry, or None. One read."""
        ...

    async def put_state(
        self,
        key: str,
        value: JsonValue,
        *,
        now: datetime,
        if_version: int | None = None,
        fence: Run | None = None,
    ) -> StateEntry:
        """Write ``value`` under ``key`` and return the entry (version 1 when created,
        else one more), stamped ``updated_at=now``. Atomic.

        ``if_version`` makes it a compare-and-set: ``0`` writes only if the key does not
        exist, ``N`` only if its version is ``N``; otherwise :class:`ConflictError` (one
        line naming the key and the version found) and nothing is written. One write
        (plus the read a compare-and-set needs on backends without conditional writes).

        ``fence`` (a run as read, with its version) makes the write a fenced one: it
        applies only if that run's stored record is still at ``fence.version``, checked
        in the same atomic write; otherwise :class:`~firecron.errors.Fenced` and nothing
        is written. The caller re-reads the run to tell a harmless change (a heartbeat of
        the same attempt) from a lost lease (see ``firecron._state_api``).
        """
        ...

    async def delete_state(
        self, key: str, *, if_version: int | None = None, fence: Run | None = None
    ) -> bool:
        """Delete the entry; False if it did not exist. With ``if_version`` (``N >= 1``),
        :class:`ConflictError` unless the entry exists at version ``N``. ``fence`` as
        for :meth:`put_state`."""
        ...

    async def list_state(
        self, *, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[StateEntry]:
        """Entries whose key starts with ``prefix``, ordered by key, those after ``after``,
        at most ``limit``. A page reads only its own entries."""
        ...

    async def due_watches(
        self, now: datetime, limit: int, *, shard: Shard | None = None
    ) -> list[Run]:
        """Runs with ``watch_at <= now``, earliest first, at most ``limit``. One indexed query.

        With ``shard``, only runs whose bucket (their schedule id's, stored with the
        record) that shard owns, as :meth:`due_schedules`. Terminal runs have no
        ``watch_at`` and are never returned or read.
        """
        ...

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        states: Sequence[RunState] | None = None,
        limit: int = 50,
        before: datetime | None = None,
    ) -> list[Run]:
        """Runs newest first by ``created_at`` (ties by id), optionally filtered.

        ``before`` is an exclusive cursor on ``created_at`` for paging. ``states=None``
        means no filter; an empty sequence matches nothing.
        """
        ...

    # -- logs: each attempt's captured lines (``{namespace}_logs``) -----------------------

    async def append_logs(
        self,
        run_id: str,
        attempt: int,
        lines: Sequence[LogLine],
        *,
        expire_at: datetime | None = None,
    ) -> None:
        """Store ``lines`` of attempt ``attempt`` of run ``run_id``, as few writes as the
        backend allows (SQLite: one transaction; Firestore: one batch of chunk documents).

        ``expire_at`` (the worker passes the write's time plus the run's retention) is
        when Firestore's TTL policy may delete these lines, as it deletes ended runs;
        None keeps them. SQLite keeps logs as it keeps runs, for good, and ignores it.

        Idempotent per ``(run_id, attempt, seq)``: a line already stored is kept as it is,
        so a writer may send a batch again after an error that left it unknown whether
        it was written. Every line's ``attempt`` must equal ``attempt``
        (:class:`InvalidInputError` otherwise, and nothing is written). The store keeps
        what it is given: the 256 KiB cap per attempt is the writer's
        (:class:`firecron.core.logs.LogBudget`; one writer per attempt, the worker that
        runs it). The run need not exist; an empty ``lines`` writes nothing.
        """
        ...

    async def get_logs(
        self, run_id: str, attempt: int | None = None, *, after: int = 0, limit: int | None = None
    ) -> list[LogLine]:
        """The stored lines of run ``run_id``, ordered by ``(attempt, seq)``, each once.

        ``attempt`` selects one attempt (None: every attempt). ``after`` is a cursor on
        ``seq`` within that attempt: only lines with ``seq > after`` (how ``firecron
        logs --follow`` reads what is new); it needs ``attempt`` when not 0
        (:class:`InvalidInputError`). At most ``limit`` lines (None: all). A run without
        lines, or unknown, has none: ``[]``.
        """
        ...

    async def clock(self) -> datetime:
        """The store's current time (aware UTC): what its next commit would be stamped with.

        The reference against which the dispatcher judges due times, heartbeats and
        deadlines (see docs/design.md, "Clocks"). Firestore: the ``read_time`` of a get
        of one document that never exists, one round trip billed as one read (counted in
        ``stats.reads``). SQLite: the local clock, since the database file lives on this
        machine; no I/O and nothing counted. Raises :class:`StoreError` when the store
        cannot answer.
        """
        ...

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...


def check_distinct(writes: Sequence[ScheduleWrite], deletes: Sequence[str]) -> None:
    """Raise :class:`InvalidInputError` when an id appears twice in ``writes`` and ``deletes``.

    The backends call it before writing anything (see :meth:`Store.write_schedules`).
    """
    seen: set[str] = set()
    for schedule_id in (*(w.spec.id for w in writes), *deletes):
        if schedule_id in seen:
            raise InvalidInputError(f"write_schedules: schedule {schedule_id!r} appears twice")
        seen.add(schedule_id)


def check_log_lines(run_id: str, attempt: int, lines: Sequence[LogLine]) -> None:
    """Raise :class:`InvalidInputError` unless ``lines`` may be appended as attempt
    ``attempt`` of ``run_id`` (see :meth:`Store.append_logs`). The backends call it
    before writing anything."""
    if not run_id:
        raise InvalidInputError("append_logs: run_id is empty")
    if attempt < 1:
        raise InvalidInputError(f"append_logs: attempt {attempt} is below 1")
    for line in lines:
        if line.attempt != attempt:
            raise InvalidInputError(
                f"append_logs: line {line.seq} is of attempt {line.attempt}, not {attempt}"
            )


def check_get_logs(attempt: int | None, after: int) -> None:
    """Raise :class:`InvalidInputError` for a :meth:`Store.get_logs` cursor without an attempt."""
    if after < 0:
        raise InvalidInputError(f"get_logs: after {after} is below 0")
    if after and attempt is None:
        raise InvalidInputError(f"get_logs: after={after} needs an attempt")


async def clock_offset(store: Store, local: Callable[[], datetime]) -> tuple[datetime, timedelta]:
    """The store's time and ``store time - local time``, from one :meth:`Store.clock` call.

    The local clock is read before and after the call and taken at the midpoint, so the
    round trip's own duration is not counted as skew (the error is at most half of it).
    """
    before = local()
    store_now = await store.clock()
    after = local()
    return store_now, store_now - (before + (after - before) / 2)
