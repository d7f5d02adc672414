"""Stores with one fault on demand, for the faults the real backends cannot produce."""

from __future__ import annotations

from typing import Any

from firecron.core.runs import Run, RunState
from firecron.errors import StoreError
from firecron.store.base import Store

__all__ = ["OutcomeWriteFails", "UpdatesFail"]


class OutcomeWriteFails:
    """The real store, except that recording a send's outcome (``dispatched`` or
    ``delivered``) fails, ``failures`` times: a dispatcher that sent (or enqueued) and
    whose process died, or whose write failed, before it recorded it, so the run stays
    ``pending`` for the watchdog to send again. Everything else goes to the real store.
    """

    def __init__(self, store: Store, failures: int = 1) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_run(
        self, run_id: str, expect_states: Any, changes: Any, **kwargs: Any
    ) -> Run | None:
        sending = changes.get("state") in (RunState.delivered, RunState.dispatched)
        if sending and self.failures > 0:
            self.failures -= 1
            raise StoreError("the store went away")
        return await self._store.update_run(run_id, expect_states, changes, **kwargs)


class UpdatesFail:
    """A real store whose next ``failures`` run updates raise :class:`StoreError` before
    reaching it (a store outage during one write: no real backend fails on demand)."""

    def __init__(self, store: Store, failures: int = 0) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_run(self, *args: Any, **kwargs: Any) -> Run | None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database is locked")
        return await self._store.update_run(*args, **kwargs)
