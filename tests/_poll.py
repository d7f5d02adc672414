"""The one way tests wait: a bounded poll that fails with the last value it saw.

Tests never sleep to let something happen, and never assert on how long it took.
They wait for an observable condition (a run's state in the store, a sink's request
count, a process's output) with one of these helpers, whose deadline is generous
(:data:`TIMEOUT`, 60 s: CI machines are slow and shared) and whose interval is small
(:data:`INTERVAL`), so a fast machine is not slowed down.

    run = await wait_run(store, run_id, lambda r: r.is_terminal)
    n = await apoll(lambda: sink.received, lambda n: n >= 2, what="requests at the sink")
    line = poll(lambda: proc.output(), lambda out: "ready" in out, what="dev output")

- :func:`poll` (sync) calls ``probe()`` until ``until(value)`` is true and returns that
  value. It blocks the calling thread: use it from sync code, or for things that make
  progress in another thread or process (sinks, workers, subprocesses).
- :func:`apoll` (async) is the same for an ``async`` test: ``probe`` may be a plain
  function or return an awaitable (``lambda: store.get_run(run_id)``), which is awaited.
  Between probes it yields to the event loop, so work on the same loop progresses.
- :func:`wait_run` polls a store until the run satisfies ``until``.

On timeout each raises :class:`AssertionError` naming ``what``, the timeout and the last
value observed (its ``repr``, truncated), so a failure says where things got stuck. An
exception raised by ``probe`` or ``until`` propagates at once.

After a wait that reached a terminal state, "nothing more happens" is checked by
driving the system once more (a dispatcher tick or watchdog pass at a later instant)
and asserting that nothing new was sent, never by sleeping and looking again.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast, overload

if TYPE_CHECKING:
    from firecron.core.runs import Run
    from firecron.store.base import Store

__all__ = ["INTERVAL", "TIMEOUT", "apoll", "poll", "wait_run"]

T = TypeVar("T")

TIMEOUT = 60.0
"""Default deadline in seconds: generous, because it only matters when a test fails."""
INTERVAL = 0.02
"""Default pause between probes in seconds."""
_REPR_LIMIT = 2000


def _truthy(value: object) -> bool:
    return bool(value)


def _timeout_error(what: str, timeout: float, last: object, probes: int) -> AssertionError:
    shown = repr(last)
    if len(shown) > _REPR_LIMIT:
        shown = shown[:_REPR_LIMIT] + "...(truncated)"
    return AssertionError(
        f"timed out after {timeout:g}s waiting for {what} ({probes} probes); last value: {shown}"
    )


def poll(
    probe: Callable[[], T],
    until: Callable[[T], object] = _truthy,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str = "the condition",
) -> T:
    """Call ``probe()`` until ``until(value)`` is true; return that value.

    The probe runs at least once, even with ``timeout=0``. Raises AssertionError with
    ``what`` and the last value once ``timeout`` seconds passed without success.
    """
    deadline = time.monotonic() + timeout
    probes = 0
    while True:
        value = probe()
        probes += 1
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _timeout_error(what, timeout, value, probes)
        time.sleep(interval)


@overload
async def apoll(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object] = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def apoll(
    probe: Callable[[], T],
    until: Callable[[T], object] = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


async def apoll(
    probe: Callable[[], Awaitable[T] | T],
    until: Callable[[T], object] = _truthy,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str = "the condition",
) -> T:
    """:func:`poll` for async code: awaits ``probe()`` when it returns an awaitable.

    Sleeps with :func:`asyncio.sleep` between probes, so tasks on the running loop
    (a dispatcher, a server under test) make progress while it waits.
    """
    deadline = time.monotonic() + timeout
    probes = 0
    while True:
        result = probe()
        value = cast(T, await result if inspect.isawaitable(result) else result)
        probes += 1
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _timeout_error(what, timeout, value, probes)
        await asyncio.sleep(interval)


async def wait_run(
    store: Store,
    run_id: str,
    until: Callable[[Run], object],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> Run:
    """Poll ``store`` until run ``run_id`` exists and ``until(run)`` is true; return it.

    On timeout the AssertionError shows the run's last state and record (or that it
    was never found).
    """

    def found(run: Run | None) -> bool:
        return run is not None and bool(until(run))

    last: list[Run | None] = [None]

    async def probe() -> Run | None:
        last[0] = await store.get_run(run_id)
        return last[0]

    try:
        run = await apoll(probe, found, timeout=timeout, interval=interval, what=f"run {run_id}")
    except AssertionError:
        state = last[0].state.value if last[0] is not None else "not found"
        raise AssertionError(
            f"run {run_id} still {state} after {timeout:g}s; last record: {last[0]!r}"
        ) from None
    assert run is not None
    return run
