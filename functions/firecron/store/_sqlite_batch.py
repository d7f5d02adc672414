"""The SQLite store's thread: one connection, calls handed over and committed in batches.

Every call of a :class:`~firecron.store.sqlite.SQLiteStore` runs on the thread of its
:class:`Batcher`, on its one connection, so the event loop never blocks on disk.

- Calls are handed over in batches: everything submitted during one event-loop
  iteration goes in one queue put, and the thread sends the results of a batch back in
  one wake-up of each waiting loop. (A thread hop per call, as ``asyncio.to_thread``
  does it, cost more CPU than most calls themselves.)
- The writes of a batch share one ``BEGIN IMMEDIATE`` transaction (group commit), each
  in its own savepoint, so each write is still all or nothing and a lost
  compare-and-set undoes only its own call. Results are delivered only after the
  ``COMMIT``; a failed ``BEGIN``, savepoint or ``COMMIT`` fails every write of the batch.
- The reads of a batch run first, in order, outside that transaction: the calls of one
  batch were submitted together, none waiting for another, so any order is theirs, and
  a read (a page of 500 due schedules decodes for tens of milliseconds) never holds
  SQLite's write lock. That lock is the one every process on the file shares: with
  several shard ticks on one file, reads inside the transaction kept the others
  waiting for it.
- ``stats.writes`` follows the transaction: a call's increments are taken back when its
  savepoint is rolled back, and the whole batch's when the transaction is.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from firecron.errors import StoreError
from firecron.store.base import StoreStats

__all__ = ["MAX_BATCH", "Abort", "Batcher"]

_T = TypeVar("_T")

MAX_BATCH: Final = 256
"""Most calls run in one transaction: bounds how long a batch holds SQLite's write lock."""


class Abort(Exception):
    """Raised by a write call to roll back its own changes and return ``value``."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


class _Job:
    """One submitted call: the function, whether it writes, where its result goes."""

    __slots__ = ("fn", "future", "loop", "write")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        write: bool,
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.write = write
        self.future = future
        self.loop = loop


_Result = tuple[bool, Any]
"""Whether a job succeeded, and its result or exception."""
_Outcome = tuple["asyncio.Future[Any]", bool, Any]
"""A job's future and its :data:`_Result`."""


def _deliver(outcomes: Sequence[_Outcome]) -> None:
    """On the caller's loop: settle the futures of a batch (skipping cancelled ones)."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


_STOP_WAIT_S = 1.0
"""How long close() waits for the thread before it sends the stop again."""


class Batcher:
    """Runs calls on one SQLite connection, on its own thread, in batches.

    ``connect`` opens (and migrates) the connection; it is called on the thread, at the
    first batch, and must raise :class:`StoreError` when it cannot. ``url`` names the
    database in error messages; ``name`` names the thread. ``stats`` is the store's:
    the calls count their writes in it, and the batcher takes back those rolled back.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        url: str,
        name: str,
        stats: StoreStats,
    ) -> None:
        self._open = connect
        self._url = url
        self._name = name
        self._stats = stats
        # The thread (started on the first call) owns the connection; the lock only
        # orders it against close().
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._pending: list[_Job] = []
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def call(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        """Run ``fn(connection)`` on the thread and return its result.

        ``write=True``: ``fn`` runs inside the batch's ``BEGIN IMMEDIATE`` transaction,
        within its own savepoint; raising :class:`Abort` (or anything else) rolls back
        only ``fn``'s changes. The result is delivered once the batch has committed;
        if the commit fails, every call of the batch gets the :class:`StoreError`.
        sqlite3 errors become :class:`StoreError`; after :meth:`close`, every call
        raises :class:`StoreError`.
        """
        if self._closed:
            raise StoreError(f"store {self._url} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Job(fn, write, future, loop))
        if len(self._pending) == 1:
            # Hand over everything submitted during this loop iteration at once: one
            # queue put and one thread wake-up for the whole batch.
            loop.call_soon(self._flush)
        result: _T = await future
        return result

    async def close(self) -> None:
        """Run the calls already submitted, stop the thread, close the connection.

        Idempotent. Raises :class:`StoreError` if closing the connection fails.
        """
        self._flush()
        # The stop goes to this thread's own queue: a call racing the close may start a
        # new thread on a new queue, which must not take the stop meant for this one
        # (this thread would then wait for work forever, and the join with it).
        thread, jobs = self._thread, self._queue
        self._thread = None
        while thread is not None and thread.is_alive():
            # Stop again until it has stopped: the queue is this thread's alone, so a
            # second stop is harmless, and no lost one can leave close() waiting forever.
            jobs.put(None)
            await asyncio.to_thread(thread.join, _STOP_WAIT_S)
        await asyncio.to_thread(self._close_sync)

    def _flush(self) -> None:
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        if self._thread is None:
            self._queue = queue.SimpleQueue()  # each thread its own (see close)
            self._thread = threading.Thread(
                target=self._serve, args=(self._queue,), name=self._name, daemon=True
            )
            self._thread.start()
        self._queue.put(jobs)

    def _serve(self, inbox: queue.SimpleQueue[list[_Job] | None]) -> None:
        """The thread: runs batches of calls from ``inbox`` in order and sends results
        back, until it takes the stop (None)."""
        while True:
            jobs = inbox.get()
            if jobs is None:
                return
            # Whatever else is already waiting joins this batch (one transaction).
            while len(jobs) < MAX_BATCH:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    inbox.put(None)  # stop after this batch
                    break
                jobs.extend(more)
            results = self._run_batch(jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for job, outcome in zip(jobs, results, strict=True):
                by_loop.setdefault(job.loop, []).append((job.future, *outcome))
            for loop, outcomes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, outcomes)

    def _run_batch(self, jobs: Sequence[_Job]) -> list[_Result]:
        """Run ``jobs``: the reads first, in order, outside any transaction; then the
        writes, in order, together in one transaction, one savepoint each."""
        with self._lock:
            try:
                conn = self._connection()
            except StoreError as exc:
                return [(False, exc)] * len(jobs)
            # A caller that was cancelled before its turn does not get its call run
            # (best effort, as with a thread pool job that has not started).
            results: list[_Result | None] = [
                (False, asyncio.CancelledError()) if job.future.cancelled() else None
                for job in jobs
            ]
            for i, job in enumerate(jobs):
                if results[i] is None and not job.write:
                    results[i] = self._run_read(conn, job.fn)
            writes = [i for i, result in enumerate(results) if result is None]
            if writes:
                written_before = self._stats.writes
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for i in writes:
                        results[i] = self._run_write(conn, jobs[i].fn)
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # BEGIN, a savepoint or COMMIT failed: no write of the batch is kept.
                    self._rollback(conn)
                    self._stats.writes = written_before
                    error = StoreError(f"store {self._url}: {exc}")
                    for i in writes:
                        results[i] = (False, error)
            done = [result for result in results if result is not None]
            assert len(done) == len(jobs)  # every job was run or refused above
            return done

    def _run_read(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
    ) -> _Result:
        try:
            return (True, fn(conn))
        except sqlite3.Error as exc:
            return (False, StoreError(f"store {self._url}: {exc}"))
        except Exception as exc:
            return (False, exc)

    def _run_write(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
    ) -> _Result:
        conn.execute("SAVEPOINT call")
        written_before = self._stats.writes
        try:
            value = fn(conn)
        except Abort as abort:
            outcome: _Result = (True, abort.value)
        except sqlite3.Error as exc:
            outcome = (False, StoreError(f"store {self._url}: {exc}"))
        except Exception as exc:
            outcome = (False, exc)
        else:
            conn.execute("RELEASE call")
            return (True, value)
        # Undo only this call's changes; the rest of the batch goes on.
        self._stats.writes = written_before
        conn.execute("ROLLBACK TO call")
        conn.execute("RELEASE call")
        return outcome

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # Leave no transaction open whatever went wrong, so the next call starts clean.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened on first use. Caller holds the lock."""
        if self._closed:
            raise StoreError(f"store {self._url} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _close_sync(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise StoreError(f"store {self._url}: {exc}") from exc
