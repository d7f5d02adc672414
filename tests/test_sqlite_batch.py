"""The SQLite store's batching thread: close() always stops it.

A stop lost on its way (the thread never sees it) must not leave ``close()`` joining the
thread forever: that hung a whole test process at exit once (``make flaky``). The loss
is injected by a queue that drops the first stop, a fault the real queue cannot produce
on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from firecron.errors import StoreError
from firecron.store.sqlite import SQLiteStore

HANG = 60.0
"""Far beyond any close here: reaching it means close() hung (not a timing check)."""


class _DropsFirstStop:
    """A queue whose first ``put(None)`` (the stop) is lost."""

    def __init__(self, inner: queue.SimpleQueue[Any]) -> None:
        self.inner = inner
        self.dropped = 0

    def put(self, item: Any) -> None:
        if item is None and not self.dropped:
            self.dropped += 1
            return
        self.inner.put(item)

    def get(self) -> Any:
        return self.inner.get()

    def get_nowait(self) -> Any:
        return self.inner.get_nowait()


async def test_close_stops_the_thread_even_when_its_stop_is_lost(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.put_state("k", 1, now=datetime.now(UTC))
    batcher = store._batcher
    thread = batcher._thread
    assert thread is not None
    assert thread.is_alive()
    lossy = _DropsFirstStop(batcher._queue)
    batcher._queue = lossy  # type: ignore[assignment]
    await asyncio.wait_for(store.close(), HANG)
    assert lossy.dropped == 1
    assert not thread.is_alive()


async def test_a_call_racing_close_never_hangs_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert await store.get_state("k") is None  # the thread is running

    async def late_call() -> None:
        await asyncio.sleep(0)  # after close() has begun
        with contextlib.suppress(StoreError):  # closed meanwhile: refused, as documented
            await asyncio.wait_for(store.get_state("k"), HANG)

    await asyncio.wait_for(asyncio.gather(store.close(), late_call(), late_call()), HANG)
    with pytest.raises(StoreError, match="is closed"):
        await store.get_state("k")
