"""Waits on the state collection: looking at a waiting run's key, and a write's waiters.

A run waiting on a key (``RunState.waiting`` with ``wait_key`` set) holds no function and
no connection: it is a record, indexed by its key. It is looked at (:meth:`Waits.look`):

- by whoever creates it (the tick's claim, a manual trigger, a pipeline task's judge),
  at once;
- by the watchdog, every ``wait.every`` (its deadline), which also catches writes made
  to the store directly, bypassing firecron;
- on every write through firecron to its key (:meth:`Waits.on_write`: the CLI,
  ``ctx.state``, ``firecron.State``), with the value just written and ONE query for the
  key's waiters (``Store.waiting_on``).

Looking judges the condition over the value (``core.waits.holds``): it holds, the run is
released (``pending``: its target fires at once; a ``wait`` target succeeds); it does
not, the run waits on (or ends ``timed_out`` past its timeout); it cannot be evaluated,
the run fails with that error as one line, unretried. Every outcome is a compare-and-set
on the run as read, so of a write's look and the watchdog's, exactly one moves it; an end
is settled like any other (its ``then`` steps, its pipeline).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from firecron.core import lifecycle
from firecron.core.conditions import ConditionError
from firecron.core.lifecycle import Change
from firecron.core.models import JsonValue
from firecron.core.runs import Run, RunState
from firecron.core.state import StateEntry
from firecron.core.waits import holds

if TYPE_CHECKING:
    from firecron.dispatch import Dispatcher, TickSummary

__all__ = ["WAITERS_PER_WRITE", "Waits"]

log = logging.getLogger("firecron.waits")

WAITERS_PER_WRITE: Final = 1000
"""How many waiters one write releases at most; the watchdog finds any beyond it."""

_UNREAD: Final = object()


class Waits:
    """Looks at waiting runs for one dispatcher (its store, clock and firing)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.store = dispatcher.store

    async def look(
        self, run: Run, summary: TickSummary, entry: StateEntry | object | None = _UNREAD
    ) -> Run | None:
        """Look at a run waiting on its key and move it on; return it as written (None
        when another writer moved it first, or it is not waiting on a key).

        ``entry`` is the key's entry when the caller has it (a write), else it is read
        (one read). Raises on store failures (the watchdog looks again later).
        """
        if run.state is not RunState.waiting or run.wait_key is None or run.wait is None:
            return None
        if entry is _UNREAD:
            entry = await self.store.get_state(run.wait_key)
        value: JsonValue = entry.value if isinstance(entry, StateEntry) else None
        now = self.d.now()
        change: Change
        try:
            ready = holds(run.wait, value)
        except ConditionError as exc:
            change = lifecycle.wait_failed(run, now, value, str(exc))
        else:
            if ready:
                change = lifecycle.wait_released(run, now, value, self.d.timeouts)
            elif run.wait_until is not None and now >= run.wait_until:
                change = lifecycle.wait_timed_out(run, now, value)
            else:
                change = lifecycle.wait_looked(run, now, value)
        written = await self.store.update_run(run.id, change.expect, change.changes, current=run)
        if written is None:
            return None  # another look (the watchdog's, a write's) moved it first
        if change.event is not None:
            summary.events[change.event] += 1
            written = await self.d.emit_new(written, {e.id for e in run.events}, summary)
        if written.state is RunState.pending:
            summary.released += 1
            return await self.d.fire_now(written, summary) or written
        if written.is_terminal and written.settle_at is not None:
            await self.d.settle(written, summary)
        return written

    async def on_write(self, key: str, entry: StateEntry | None, summary: TickSummary) -> int:
        """Look at every run waiting on ``key`` with the value just written (``entry``;
        None: deleted). One query; returns how many runs were released."""
        waiters = await self.store.waiting_on(key, WAITERS_PER_WRITE)
        before = summary.released
        slots = asyncio.Semaphore(self.d.settings.concurrency)

        async def one(run: Run) -> None:
            async with slots:
                try:
                    await self.look(run, summary, entry)
                except Exception as exc:  # one run's failure never stops the others
                    summary.errors.append(f"run {run.id}: looking at its wait: {exc}")
                    log.error("run %s: looking at its wait failed: %s", run.id, exc)

        await asyncio.gather(*(one(r) for r in waiters))
        return summary.released - before
