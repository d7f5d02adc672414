"""An event loop on its own thread, as the worker SDK runs one: for tests that drive
the SDK's synchronous side (``_Execution``) against a real store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = ["loop_thread"]


@contextlib.contextmanager
def loop_thread() -> Iterator[
    tuple[asyncio.AbstractEventLoop, Callable[[Coroutine[Any, Any, Any]], Any]]
]:
    """``(loop, call)``: ``call(coro)`` runs ``coro`` on the loop and returns its result
    (30 s at most). The loop is stopped and closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    try:
        yield loop, call
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
