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
from types import TracebackType
from typing import TYPE_CHECKING

from firecron.core.models import JsonValue
from firecron.core.state import StateEntry, key_problem, value_problem
from firecron.errors import InvalidInputError

if TYPE_CHECKING:
    from firecron.worker._runtime import _Runtime

__all__ = ["State"]

log = logging.getLogger("firecron.state")


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

    @classmethod
    def _on(cls, runtime: _Runtime) -> State:
        """The API on an existing runtime (a worker's ``ctx.state``), which it does not own."""
        state = cls.__new__(cls)
        state._runtime = runtime
        state._owned = False
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

    def set(self, key: str, value: JsonValue, if_version: int | None = None) -> StateEntry:
        """Write ``value`` under ``key`` and return the entry; then release the runs
        waiting on it whose condition now holds.

        ``if_version`` makes it a compare-and-set: ``0`` creates only, ``N`` writes only
        over version ``N`` (:class:`~firecron.errors.ConflictError` otherwise).
        """
        _check_key(key)
        problem = value_problem(value)
        if problem is not None:
            raise InvalidInputError(f"state {key!r}: {problem}")
        _check_version(if_version, allow_zero=True)
        runtime = self._runtime
        entry = runtime.call(
            runtime.store.put_state(key, value, now=runtime.now(), if_version=if_version)
        )
        self._release(key, entry)
        return entry

    def delete(self, key: str, if_version: int | None = None) -> bool:
        """Delete the entry; False if there was none. With ``if_version`` (``N >= 1``), only
        at that version. The runs waiting on the key then see null."""
        _check_key(key)
        _check_version(if_version, allow_zero=False)
        deleted = self._runtime.call(self._runtime.store.delete_state(key, if_version=if_version))
        if deleted:
            self._release(key, None)
        return deleted

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
