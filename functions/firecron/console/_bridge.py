"""The console's way into the store: one event loop on its own thread, one store on it.

Flask views are synchronous and may run on several threads at once; the stores are
async and their clients bind to the loop that opened them. So the console owns one
loop thread, opens the store on it at the first request (not at import or register
time: a deployed function should not touch Firestore before it is asked to), and every
view hands its coroutine over with :meth:`StoreBridge.call` and waits for the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from firecron.errors import StoreError
from firecron.settings import Settings
from firecron.store import Store, open_store

__all__ = ["CALL_TIMEOUT_S", "StoreBridge"]

_T = TypeVar("_T")

CALL_TIMEOUT_S = 30.0
"""How long a view waits for the store before answering with an error page."""


class StoreBridge:
    """Runs store coroutines for synchronous code, on one loop thread and one store.

    Thread-safe. :meth:`call` starts the loop and opens the store on first use;
    :meth:`close` closes the store and stops the loop (tests; a server process simply
    exits).
    """

    def __init__(self, settings: Settings, opener: Callable[[], Store] | None = None) -> None:
        self._settings = settings
        self._opener = opener or (lambda: open_store(settings.store_url, settings.namespace))
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: Store | None = None

    def _start(self) -> tuple[asyncio.AbstractEventLoop, Store]:
        with self._lock:
            if self._loop is not None and self._store is not None:
                return self._loop, self._store
            loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.run_forever()

            threading.Thread(target=serve, name="firecron-console-loop", daemon=True).start()

            async def open_() -> Store:
                # Opened on the loop that uses it: async clients bind to their loop.
                return self._opener()

            try:
                store = asyncio.run_coroutine_threadsafe(open_(), loop).result(CALL_TIMEOUT_S)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                raise
            self._loop, self._store = loop, store
            return loop, store

    def call(self, make: Callable[[Store], Coroutine[Any, Any, _T]]) -> _T:
        """``await make(store)`` on the loop thread and return its result.

        Raises what the coroutine raises, or :class:`StoreError` when it takes longer
        than :data:`CALL_TIMEOUT_S`.
        """
        loop, store = self._start()
        future = asyncio.run_coroutine_threadsafe(make(store), loop)
        try:
            return future.result(CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreError(f"store call timed out after {CALL_TIMEOUT_S:.0f}s") from None

    def close(self) -> None:
        """Close the store and stop the loop thread; a later :meth:`call` starts afresh."""
        with self._lock:
            loop, store = self._loop, self._store
            self._loop = self._store = None
        if loop is None or store is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(store.close(), loop).result(CALL_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
