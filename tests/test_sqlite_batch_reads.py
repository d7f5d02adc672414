"""The SQLite store's batches run their reads outside the write transaction.

SQLite's write lock is shared by every process on the file (shard ticks on one file):
a read that ran inside a batch's ``BEGIN IMMEDIATE`` (a page of due schedules decodes
for tens of milliseconds) kept the other processes waiting for it. A second connection,
as another process would hold one, tells whether the lock is held while a read runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from firecron.errors import StoreError
from firecron.store.sqlite import SQLiteStore


def _lock_is_free(path: Path) -> bool:
    """Whether another connection can take the write lock at once (no waiting)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def test_a_batchs_reads_run_first_and_without_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    try:
        await store.put_state("k", 1, now=datetime.now(UTC))  # opens the database
        batcher = store._batcher
        await batcher.call(lambda c: c.execute("CREATE TABLE t (x)"), write=True)
        seen: dict[str, object] = {}

        def write(conn: sqlite3.Connection) -> None:
            seen["write_in_transaction"] = conn.in_transaction
            seen["lock_free_during_write"] = _lock_is_free(path)
            conn.execute("INSERT INTO t VALUES (1)")

        def read(conn: sqlite3.Connection) -> int:
            seen["lock_free_during_read"] = _lock_is_free(path)
            count: int = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            return count

        # Submitted in one event-loop iteration: one batch, the write first.
        _, count = await asyncio.gather(batcher.call(write, write=True), batcher.call(read))
        # The read saw the table before the batch's write: the same batch, reads first.
        assert count == 0
        assert seen == {
            "lock_free_during_read": True,
            "write_in_transaction": True,
            "lock_free_during_write": False,
        }
        assert await batcher.call(read) == 1
    finally:
        await store.close()


async def test_a_failed_transaction_fails_its_writes_and_not_its_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    try:
        await store.put_state("k", 1, now=datetime.now(UTC))
        batcher = store._batcher
        await batcher.call(lambda c: c.execute("CREATE TABLE t (x)"), write=True)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("ROLLBACK")  # ends the batch's transaction: the batch fails

        def read(conn: sqlite3.Connection) -> int:
            count: int = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            return count

        results = await asyncio.gather(
            batcher.call(write, write=True), batcher.call(read), return_exceptions=True
        )
        assert isinstance(results[0], StoreError), results
        assert results[1] == 0
        assert await batcher.call(read) == 0  # nothing of the failed batch was kept
    finally:
        await store.close()
