"""The worker's per-process runtime: settings, the store, the loop thread, store time.

Per process, lazily on the first request: ``Settings.from_env()`` is read once, the
store is opened once, and one background thread runs the asyncio event loop that
every store call is submitted to (the store is async; requests are threads). A
forked process (gunicorn forks after importing the source) starts its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from firecron.errors import StoreError
from firecron.worker._text import describe

if TYPE_CHECKING:
    from firecron.dispatch import Dispatcher
    from firecron.outbox import Deliverer
    from firecron.settings import Settings
    from firecron.store.base import Store

_STORE_TIMEOUT_S: Final = 60.0
"""Seconds one store call may take before it fails with :class:`StoreError`."""
_CLOCK_REFRESH_S: Final = 600.0
"""Seconds between measurements of the local clock's offset to the store's."""
_CLOCK_RETRY_S: Final = 30.0
"""Seconds before a failed measurement is tried again."""

_log = logging.getLogger("firecron.worker")

_T = TypeVar("_T")


class _Runtime:
    """Settings, the store and the event loop that runs every store call, per process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        notifier: Deliverer,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from firecron.dispatch import timeouts_for

        self.settings = settings
        self.store = store
        self.loop = loop
        self.pid = pid
        self.notifier = notifier
        self.timeouts = timeouts_for(settings)
        """The same deadlines the dispatcher's watchdog enforces."""
        self.clock = clock or _now
        """The local clock (injectable: tests skew it); :meth:`now` corrects it."""
        self._offset = timedelta(0)
        self._synced_at: float | None = None
        self._sync_lock = threading.Lock()
        self._dispatcher: Dispatcher | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        """A dispatcher on this runtime's store, settings, clock and notifier, created on
        first use: a worker that ends a run which causes others (``then`` steps, pipeline
        tasks, ``ctx.submit``) claims and fires them itself, at once. Use it through
        :meth:`call`, on the loop thread, like the store."""
        if self._dispatcher is None:
            from firecron.dispatch import Dispatcher

            self._dispatcher = Dispatcher(
                self.store, self.settings, clock=self.now, notifier=self.notifier, defers=True
            )
        return self._dispatcher

    def now(self) -> datetime:
        """The local clock corrected to the store's (docs/design.md, "Semantics > Clocks").

        Starts, lease renewals and ends are judged by the dispatcher at the store's time, so
        they are stamped at it too. The offset is measured by one :meth:`Store.clock`
        call when first needed and every :data:`_CLOCK_REFRESH_S` seconds after (Firestore: one
        read); a failed measurement keeps the last offset and is retried after
        :data:`_CLOCK_RETRY_S` seconds.
        """
        synced = self._synced_at
        if synced is None or time.monotonic() - synced >= _CLOCK_REFRESH_S:
            self._sync()
        return self.clock() + self._offset

    def _sync(self) -> None:
        if not self._sync_lock.acquire(blocking=self._synced_at is None):
            return  # another thread is measuring; the current offset is good meanwhile
        try:
            synced = self._synced_at
            if synced is not None and time.monotonic() - synced < _CLOCK_REFRESH_S:
                return
            from firecron.store.base import clock_offset

            try:
                _, self._offset = self.call(clock_offset(self.store, self.clock))
            except Exception as exc:
                _log.warning("firecron worker: reading the store's clock failed: %s", describe(exc))
                self._synced_at = time.monotonic() - _CLOCK_REFRESH_S + _CLOCK_RETRY_S
                return
            self._synced_at = time.monotonic()
        finally:
            self._sync_lock.release()

    @classmethod
    def start(
        cls, clock: Callable[[], datetime] | None = None, settings: Settings | None = None
    ) -> _Runtime:
        """Read the settings (unless given), start the loop thread, open the store on it
        and measure the offset of ``clock`` (default: the system clock) to the store's."""
        from firecron.settings import Settings
        from firecron.store import open_store

        settings = settings or Settings.from_env()
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()

        threading.Thread(target=serve, name="firecron-worker-loop", daemon=True).start()

        async def open_() -> tuple[Store, Deliverer]:
            # Opened on the loop that will use them: async clients bind to their loop.
            from firecron.notify import Notifier

            return open_store(settings.store_url, settings.namespace), Notifier(settings)

        try:
            store, notifier = asyncio.run_coroutine_threadsafe(open_(), loop).result(
                _STORE_TIMEOUT_S
            )
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        if not settings.signing_secrets:
            _log.warning(
                "firecron worker: FIRECRON_SIGNING_SECRET is not set, so requests are "
                "accepted unsigned; set it everywhere (firecron dev sets its own)"
            )
        runtime = cls(settings, store, loop, os.getpid(), notifier, clock)
        runtime.now()  # measures the clock offset now rather than in the first request
        return runtime

    def close(self) -> None:
        """Close the dispatcher, the notifier and the store, then stop the loop thread.

        For runtimes a program owns (``firecron.State``); a worker's lives as long as its
        process. The runtime is unusable afterwards."""

        async def close_all() -> None:
            if self._dispatcher is not None:
                await self._dispatcher.aclose()
            await self.notifier.aclose()
            await self.store.close()

        try:
            self.call(close_all())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a store coroutine on the loop thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(_STORE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreError(f"store call timed out after {_STORE_TIMEOUT_S:.0f}s") from None


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    """The process's runtime, started on first use (again in a forked child)."""
    global _runtime
    current = _runtime
    if current is not None and current.pid == os.getpid():
        return current
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            # Threads do not survive a fork: a child inherits a dead loop thread.
            _runtime = _Runtime.start()
        return _runtime


def _now() -> datetime:
    return datetime.now(UTC)
