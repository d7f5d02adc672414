"""``firecron.State``: the state collection from any Python program, and ``ctx.state``.

This is how a system outside firecron marks its data ready (``State().set("orders/2027-01-04",
{"rows": 1200})``), and how a worker keeps state between runs. Every write goes to the
store first; then the runs waiting on that key are looked at with the value just written
(one query, ``firecron.waits``), and those whose condition holds fire at once. If that
second step fails (the store went away), the write stands and the watchdog finds the
waiters at their next ``every``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from firecron.core.models import JsonValue
from firecron.core.runs import RunState
from firecron.core.state import StateEntry, key_problem, value_problem
from firecron.errors import ConflictError, Fenced, InvalidInputError

if TYPE_CHECKING:
    from firecron.core.runs import Run
    from firecron.worker._execution import _Execution
    from firecron.worker._runtime import _Runtime

__all__ = ["State"]

log = logging.getLogger("firecron.state")

_T = TypeVar("_T")

_FENCE_TRIES = 8
"""Fenced writes retried when the run changed but is still this attempt's (a heartbeat,
an event delivery): beyond this, the run is changing too fast to tell (ConflictError)."""


class State:
    """Get, set, delete and list state entries, and release the waits on what is set.

    ``State(store_url=None, namespace=None)`` opens the store of the ``FIRECRON_*``
    environment (``store_url`` and ``namespace`` override it) and the settings a release
    needs to fire runs (``FIRECRON_FUNCTIONS_BASE_URL``, the signing secret; against a
    ``firecron dev`` store, its own secret). Calls block; use it from synchronous code
    (or a thread), and :meth:`close` it (or use it as a context manager). Inside a
    worker, use ``ctx.state``: the same API on the worker's own connection.

    Errors: a bad key or value is :class:`~firecron.errors.InvalidInputError` (nothing
    written); a version mismatch :class:`~firecron.errors.ConflictError`; the store
    unreachable :class:`~firecron.errors.StoreError`.
    """

    def __init__(self, store_url: str | None = None, *, namespace: str | None = None) -> None:
        from firecron._dev_secret import program_settings
        from firecron.worker._runtime import _Runtime

        self._runtime: _Runtime = _Runtime.start(settings=program_settings(store_url, namespace))
        self._owned = True
        self._execution: _Execution | None = None

    @classmethod
    def _on(cls, runtime: _Runtime, execution: _Execution | None = None) -> State:
        """The API on an existing runtime (a worker's ``ctx.state``), which it does not
        own; ``execution`` is the run attempt whose writes may be fenced."""
        state = cls.__new__(cls)
        state._runtime = runtime
        state._owned = False
        state._execution = execution
        return state

    # -- reading ------------------------------------------------------------------------

    def get(self, key: str, default: JsonValue = None) -> JsonValue:
        """The value under ``key``, or ``default`` when there is none. One read."""
        found = self.entry(key)
        return default if found is None else found.value

    def entry(self, key: str) -> StateEntry | None:
        """The entry under ``key`` (value, version, updated_at), or None. One read."""
        _check_key(key)
        return self._runtime.call(self._runtime.store.get_state(key))

    def list(self, prefix: str = "", *, limit: int | None = None) -> list[StateEntry]:
        """Entries whose key starts with ``prefix``, in key order (at most ``limit``)."""
        return self._runtime.call(self._runtime.store.list_state(prefix=prefix, limit=limit))

    # -- writing ------------------------------------------------------------------------

    def set(
        self, key: str, value: JsonValue, if_version: int | None = None, *, fence: bool = False
    ) -> StateEntry:
        """Write ``value`` under ``key`` and return the entry; then release the runs
        waiting on it whose condition now holds.

        ``if_version`` makes it a compare-and-set: ``0`` creates only, ``N`` writes only
        over version ``N`` (:class:`~firecron.errors.ConflictError` otherwise).

        ``fence=True`` (``ctx.state`` only) writes only while the calling run attempt is
        still the live one, checked in the same atomic write: once a continuous
        schedule's next generation exists (this one ended, or was declared lost while it
        was frozen), or the attempt was retried, the write is refused with
        :class:`~firecron.errors.Fenced`, nothing is written, and ``ctx.keep_going()``
        turns false. One more read on SQLite; on Firestore, none unless refused.
        """
        _check_key(key)
        problem = value_problem(value)
        if problem is not None:
            raise InvalidInputError(f"state {key!r}: {problem}")
        _check_version(if_version, allow_zero=True)
        runtime = self._runtime
        entry = self._fenced(
            key,
            fence,
            lambda run: runtime.call(
                runtime.store.put_state(
                    key, value, now=runtime.now(), if_version=if_version, fence=run
                )
            ),
        )
        self._release(key, entry)
        return entry

    def delete(self, key: str, if_version: int | None = None, *, fence: bool = False) -> bool:
        """Delete the entry; False if there was none. With ``if_version`` (``N >= 1``), only
        at that version. The runs waiting on the key then see null. ``fence`` as for
        :meth:`set`."""
        _check_key(key)
        _check_version(if_version, allow_zero=False)
        store = self._runtime.store
        deleted = self._fenced(
            key,
            fence,
            lambda run: self._runtime.call(
                store.delete_state(key, if_version=if_version, fence=run)
            ),
        )
        if deleted:
            self._release(key, None)
        return deleted

    def _fenced(self, key: str, fence: bool, write: Callable[[Run | None], _T]) -> _T:
        """``write(None)``, or, fenced, ``write(run)`` with this attempt's run as last read.

        The store refuses a fenced write when the run changed since that read; then one
        read tells why. Still running as this attempt (a heartbeat or a delivery changed
        it): write again against the fresh record. Anything else (ended, lost, retried):
        the lease is gone, so :class:`Fenced`, and the attempt stops (``keep_going()``).
        """
        if not fence:
            return write(None)
        execution = self._execution
        if execution is None:
            raise RuntimeError(
                "fence=True needs a run started by the firecron worker SDK (ctx.state)"
            )
        run = execution.run
        for _ in range(_FENCE_TRIES):
            try:
                return write(run)
            except Fenced:
                fresh = self._runtime.call(self._runtime.store.get_run(run.id))
                if (
                    fresh is None
                    or fresh.attempt != run.attempt
                    or fresh.state is not RunState.running
                ):
                    execution.lose_lease()
                    raise Fenced(
                        f"state {key!r}: fenced write refused: {_not_live(run, fresh)}"
                    ) from None
                run = fresh
        raise ConflictError(f"state {key!r}: fenced write: run {run.id!r} kept changing")

    def _release(self, key: str, entry: StateEntry | None) -> None:
        from firecron.dispatch import TickSummary

        runtime = self._runtime
        summary = TickSummary(started_at=runtime.now())
        try:
            runtime.call(runtime.dispatcher.waits.on_write(key, entry, summary))
        except Exception as exc:  # the write stands: the watchdog looks at the waiters later
            log.warning("state %s: releasing its waits failed: %s", key, exc)
            return
        for line in summary.errors:
            log.warning("state %s: %s", key, line)

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the store connection (a ``ctx.state`` is closed with its worker)."""
        if self._owned:
            self._runtime.close()

    def __enter__(self) -> State:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _not_live(run: Run, fresh: Run | None) -> str:
    """Why ``run`` (this attempt, as last read) is no longer the live one."""
    who = (
        f"generation {run.generation} of {run.schedule_id!r}"
        if run.generation is not None
        else f"run {run.id!r} attempt {run.attempt}"
    )
    if fresh is None:
        return f"{who} is no longer the live one (its run is gone)"
    if fresh.attempt != run.attempt:
        return f"{who} is no longer the live one (attempt {fresh.attempt} took over)"
    return f"{who} is no longer the live one (its run is {fresh.state.value})"


def _check_key(key: str) -> None:
    problem = key_problem(key)
    if problem is not None:
        raise InvalidInputError(f"state: {problem}")


def _check_version(if_version: int | None, *, allow_zero: bool) -> None:
    if if_version is None:
        return
    lowest = 0 if allow_zero else 1
    if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < lowest:
        raise InvalidInputError(
            f"state: if_version must be an integer >= {lowest}, got {if_version!r}"
        )
