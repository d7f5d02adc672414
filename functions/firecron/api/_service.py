"""What the routes run on: the settings, the store, a dispatcher and the loop they live on.

The store and the dispatcher are async and the WSGI app is threaded, so, as in a worker,
one background thread per process runs an event loop and every call is submitted to it
(:class:`firecron.worker._runtime._Runtime`, started on the first request, never at
import or when the app is made). The clock is the local one corrected to the store's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from firecron.settings import Settings

if TYPE_CHECKING:
    from firecron._state_api import State
    from firecron.dispatch import Dispatcher
    from firecron.store.base import Store
    from firecron.worker._runtime import _Runtime

__all__ = ["Service"]

_T = TypeVar("_T")

log = logging.getLogger("firecron.api")

_CANCEL_WAIT_S = 10.0
"""How long close() waits for cancelled background work to unwind."""


class Service:
    """The store, dispatcher and clock of one app, opened lazily (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._background: set[concurrent.futures.Future[object]] = set()

    @property
    def runtime(self) -> _Runtime:
        """The runtime, started on first use."""
        runtime = self._runtime
        if runtime is not None:
            return runtime
        with self._lock:
            if self._closed:
                raise RuntimeError("the admin API's service is closed")
            if self._runtime is None:
                from firecron.worker._runtime import _Runtime

                self._runtime = _Runtime.start(settings=self.settings)
            return self._runtime

    @property
    def store(self) -> Store:
        """The store (use it through :meth:`call`)."""
        return self.runtime.store

    @property
    def dispatcher(self) -> Dispatcher:
        """A dispatcher on the store, firing the runs the API creates (use it through
        :meth:`call`). A run it cannot send from here is left ``pending`` for the next tick."""
        return self.runtime.dispatcher

    def state(self) -> State:
        """The state API on this store (a write releases the runs waiting on its key)."""
        from firecron._state_api import State

        return State._on(self.runtime)

    def now(self) -> datetime:
        """The local clock corrected to the store's."""
        return self.runtime.now()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the service's loop and wait for its result."""
        return self.runtime.call(coro)

    def start(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        """Run ``coro`` on the service's loop in the background (not waited for); its
        failure is logged as ``what``. The service keeps it until it ends."""
        future = asyncio.run_coroutine_threadsafe(coro, self.runtime.loop)
        with self._lock:
            self._background.add(future)

        def done(finished: concurrent.futures.Future[object]) -> None:
            with self._lock:
                self._background.discard(finished)
            if finished.cancelled():
                return
            exc = finished.exception()
            if exc is not None:
                log.error("admin API: %s failed: %s", what, exc)

        future.add_done_callback(done)

    def close(self) -> None:
        """Cancel the background work, close the store and stop the loop (idempotent).

        Background work (a ``max_parallel`` backfill) is resumable: cancelled here, the
        same request completes it later. It must end before the store closes, or it
        would go on using a closed store on a stopped loop.
        """
        with self._lock:
            self._closed = True
            runtime, self._runtime = self._runtime, None
            background = list(self._background)
        for future in background:
            future.cancel()
        if background:
            concurrent.futures.wait(background, timeout=_CANCEL_WAIT_S)
        if runtime is not None:
            runtime.close()
