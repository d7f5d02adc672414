"""``firecron.Client`` and ``firecron.AsyncClient``: schedules and runs from Python.

One implementation: :class:`AsyncClient` calls the service layer (:mod:`firecron.service`,
:mod:`firecron.admin`) that the CLI and the admin API call, on a store it opens on the
running event loop. :class:`Client` is the same object run on a private event loop
thread (as the worker SDK's runtime runs its store): each method submits the async
one to that loop and waits, so the two cannot drift apart.

Both take and return the project's pydantic models (:class:`ScheduleSpec` in,
:class:`StoredSchedule` and :class:`Run` out), validate a schedule as a schedules file
is validated, and raise :class:`~firecron.errors.FirecronError` subclasses:
:class:`~firecron.errors.InvalidInputError` (:class:`~firecron.errors.InvalidSchedule`,
one line per problem naming its field), :class:`~firecron.errors.NotFoundError`,
:class:`~firecron.errors.ConflictError`, :class:`~firecron.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from firecron import service
from firecron.core.models import JsonValue, ScheduleSpec, StoredSchedule
from firecron.core.runs import Run, RunState
from firecron.errors import InvalidInputError, StoreError

if TYPE_CHECKING:
    from firecron.dispatch import Dispatcher
    from firecron.settings import Settings
    from firecron.store.base import Store

__all__ = ["AsyncClient", "Client"]

_T = TypeVar("_T")

_CALL_TIMEOUT_S = 120.0
"""Seconds a :class:`Client` call may take before it fails with :class:`StoreError`
(a trigger waits for its worker's acknowledgement, bounded by the ack timeout)."""
_CLOCK_REFRESH_S = 600.0
"""Seconds between two measurements of the local clock's offset to the store's."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


ScheduleInput = ScheduleSpec | Mapping[str, Any]
"""A schedule to put: a :class:`ScheduleSpec`, or one entry of a schedules file as a
mapping (what ``yaml.safe_load`` gives for it)."""


class AsyncClient:
    """Schedules and runs of one store, from async code (see the module docstring).

    ``store_url`` defaults to ``FIRECRON_STORE`` (else the local
    ``sqlite:///.firecron/firecron.db``), ``namespace`` to ``FIRECRON_NAMESPACE``; the
    other settings (``FIRECRON_FUNCTIONS_BASE_URL``, the signing secret,
    ``FIRECRON_ALLOW_PRIVATE_TARGETS``) come from the environment, as for the CLI, and
    against a ``firecron dev`` store its own signing secret is used, as ``firecron
    trigger`` uses it. A bad setting raises :class:`InvalidInputError` here.

    The store is opened on the first call, on the loop that makes it (its clients bind
    to that loop): use one client from one loop, and :meth:`aclose` it (or ``async
    with``). Writes are stamped with ``clock`` (default: the system clock, UTC)
    corrected to the store's clock, as the admin API and the workers stamp theirs
    (docs/design.md, "Semantics > Clocks"): the offset is measured with one store read
    on the first call that writes, and again every :data:`_CLOCK_REFRESH_S` seconds.
    """

    def __init__(
        self,
        store_url: str | None = None,
        *,
        namespace: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        from firecron._dev_secret import program_settings

        # No event log lines: a library's caller owns its stdout. The events stay
        # recorded with the runs, and notifications are the dispatcher's to send.
        self.settings: Settings = replace(program_settings(store_url, namespace), event_log=False)
        self._clock = clock
        self._offset = timedelta(0)
        self._synced_at: float | None = None
        self._store: Store | None = None
        self._dispatcher: Dispatcher | None = None
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store, opened on first use (on the calling loop)."""
        if self._closed:
            raise InvalidInputError("the firecron client is closed")
        if self._store is None:
            from firecron.store import open_store

            self._store = open_store(self.settings.store_url, self.settings.namespace)
        return self._store

    @property
    def _dispatch(self) -> Dispatcher:
        """A dispatcher on the store, for the runs a trigger creates (made on first use)."""
        if self._dispatcher is None:
            from firecron.dispatch import Dispatcher

            self._dispatcher = Dispatcher(self.store, self.settings, clock=self._corrected)
        return self._dispatcher

    def _corrected(self) -> datetime:
        return self._clock() + self._offset

    async def _now(self) -> datetime:
        """The local clock corrected to the store's, measuring the offset when it is due
        (a failed measurement is the :class:`StoreError` of the call that needed it)."""
        from firecron.store.base import clock_offset

        synced = self._synced_at
        if synced is None or time.monotonic() - synced >= _CLOCK_REFRESH_S:
            _, self._offset = await clock_offset(self.store, self._clock)
            self._synced_at = time.monotonic()
        return self._corrected()

    async def aclose(self) -> None:
        """Close the dispatcher and the store (idempotent); the client is unusable after."""
        self._closed = True
        dispatcher, self._dispatcher = self._dispatcher, None
        store, self._store = self._store, None
        try:
            if dispatcher is not None:
                await dispatcher.aclose()
        finally:
            if store is not None:
                await store.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- schedules ------------------------------------------------------------------------

    async def put_schedule(
        self,
        schedule: ScheduleInput,
        *,
        if_version: str | None = None,
        create_only: bool = False,
    ) -> StoredSchedule:
        """Create or replace a schedule, as the admin API's put does; return it as stored.

        ``schedule`` is validated as an entry of a schedules file (the refusals, the
        time checks, whether the store can hold it) and stored ``managed_by: api``, so
        ``firecron apply --prune`` leaves it alone. A replaced schedule keeps its state
        (pause, counters; its next fire time is recomputed only when its timing
        changed). ``if_version`` replaces only that version, ``create_only`` creates
        only (:class:`~firecron.errors.PreconditionFailed` otherwise). As for the API,
        ``notify`` routes are a schedules file's (a replaced schedule keeps its own, a
        new one logs), and a notify target names a sink by ``sink_config`` or as a
        stored schedule has it (see :mod:`firecron.service`).

        Raises :class:`~firecron.errors.InvalidSchedule` (an
        :class:`InvalidInputError`: ``errors`` holds every problem as ``(field,
        line)``), :class:`NotFoundError` (``if_version`` of a schedule that is gone).
        """
        body = (
            service.schedule_body(schedule)
            if isinstance(schedule, ScheduleSpec)
            else dict(schedule)
        )
        schedule_id = body.get("id")
        if not isinstance(schedule_id, str):
            raise service.InvalidSchedule([("id", "id: required (a schedule id)")])
        result = await service.put_schedule(
            self.store,
            self.settings,
            schedule_id,
            body,
            await self._now(),
            expect_version=if_version,
            create_only=create_only,
        )
        return result.schedule

    async def get_schedule(self, schedule_id: str) -> StoredSchedule:
        """The schedule (spec, state, version); :class:`NotFoundError` if unknown."""
        return await service.get_schedule(self.store, schedule_id)

    async def list_schedules(
        self, *, after: str | None = None, limit: int = 100
    ) -> list[StoredSchedule]:
        """At most ``limit`` schedules in id order, after the id ``after``: pass the last
        id of a page to get the next."""
        return await service.list_schedules(self.store, after=after, limit=limit)

    async def pause(self, schedule_id: str) -> StoredSchedule:
        """Pause a schedule (idempotent) and return it; a continuous schedule's live
        generation is asked to stop. :class:`NotFoundError` if unknown."""
        return await service.pause(self.store, schedule_id, await self._now())

    async def resume(self, schedule_id: str) -> StoredSchedule:
        """Resume a schedule (idempotent) and return it; its misfire policy judges what
        was missed while it was paused. :class:`NotFoundError` if unknown."""
        return await service.resume(self.store, schedule_id, await self._now())

    async def delete(self, schedule_id: str, *, if_version: str | None = None) -> None:
        """Delete a schedule, keeping its runs (``if_version``: only at that version).
        :class:`NotFoundError` if unknown."""
        await service.delete_schedule(
            self.store, schedule_id, await self._now(), expect_version=if_version
        )

    # -- runs -----------------------------------------------------------------------------

    async def trigger(
        self,
        schedule_id: str,
        *,
        params: Mapping[str, JsonValue] | None = None,
        gate: bool = True,
    ) -> Run:
        """Start a manual run now, as ``firecron trigger`` does, and return it as
        recorded once it was sent (its acknowledgement is waited for, never its work).

        ``params`` go over the schedule's; the overlap policy does not apply;
        ``gate=False`` skips the schedule's ``wait:`` gate. A send that failed is not an
        error here: the run says so (``retry_wait`` or ``failed``, its attempt's error).
        """
        await self._now()  # the dispatcher stamps the run with the corrected clock
        return await service.trigger(self._dispatch, schedule_id, params, gate=gate)

    async def runs(
        self,
        *,
        schedule_id: str | None = None,
        states: Sequence[RunState | str] | None = None,
        limit: int = 50,
        before: datetime | None = None,
    ) -> list[Run]:
        """At most ``limit`` runs, newest first, of one schedule or all, in ``states``
        (any when None), created before ``before``: pass the last run's ``created_at``
        to get the next page."""
        return await service.list_runs(
            self.store, schedule_id=schedule_id, states=states, limit=limit, before=before
        )

    async def run(self, run_id: str) -> Run:
        """One run, as recorded (attempts, output, error); :class:`NotFoundError` if unknown."""
        return await service.get_run(self.store, run_id)


class Client:
    """Schedules and runs of one store, from synchronous code.

    The same methods as :class:`AsyncClient`, with the same arguments, models and
    errors, blocking: each runs the :class:`AsyncClient` method on the client's own
    event loop thread. Thread-safe (calls are serialised on that loop). :meth:`close`
    it, or use it as a context manager. Do not call it from a running event loop's
    thread (use :class:`AsyncClient` there): it would block that loop.
    """

    def __init__(
        self,
        store_url: str | None = None,
        *,
        namespace: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._async = AsyncClient(store_url, namespace=namespace, clock=clock)
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="firecron-client-loop", daemon=True
        )
        self._thread.start()

    @property
    def settings(self) -> Settings:
        """The settings the client runs with (see :class:`AsyncClient`)."""
        return self._async.settings

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise InvalidInputError("the firecron client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(_CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreError(
                f"firecron client call timed out after {_CALL_TIMEOUT_S:.0f}s"
            ) from None

    def close(self) -> None:
        """Close the store and stop the loop thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True

        async def close_all() -> None:
            try:
                await self._async.aclose()
            finally:
                # The SQLite store works in the loop's default executor: its thread ends here.
                await self._loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(_CALL_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def put_schedule(
        self,
        schedule: ScheduleInput,
        *,
        if_version: str | None = None,
        create_only: bool = False,
    ) -> StoredSchedule:
        """See :meth:`AsyncClient.put_schedule`."""
        return self._call(
            self._async.put_schedule(schedule, if_version=if_version, create_only=create_only)
        )

    def get_schedule(self, schedule_id: str) -> StoredSchedule:
        """See :meth:`AsyncClient.get_schedule`."""
        return self._call(self._async.get_schedule(schedule_id))

    def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        """See :meth:`AsyncClient.list_schedules`."""
        return self._call(self._async.list_schedules(after=after, limit=limit))

    def pause(self, schedule_id: str) -> StoredSchedule:
        """See :meth:`AsyncClient.pause`."""
        return self._call(self._async.pause(schedule_id))

    def resume(self, schedule_id: str) -> StoredSchedule:
        """See :meth:`AsyncClient.resume`."""
        return self._call(self._async.resume(schedule_id))

    def delete(self, schedule_id: str, *, if_version: str | None = None) -> None:
        """See :meth:`AsyncClient.delete`."""
        self._call(self._async.delete(schedule_id, if_version=if_version))

    def trigger(
        self,
        schedule_id: str,
        *,
        params: Mapping[str, JsonValue] | None = None,
        gate: bool = True,
    ) -> Run:
        """See :meth:`AsyncClient.trigger`."""
        return self._call(self._async.trigger(schedule_id, params=params, gate=gate))

    def runs(
        self,
        *,
        schedule_id: str | None = None,
        states: Sequence[RunState | str] | None = None,
        limit: int = 50,
        before: datetime | None = None,
    ) -> list[Run]:
        """See :meth:`AsyncClient.runs`."""
        return self._call(
            self._async.runs(schedule_id=schedule_id, states=states, limit=limit, before=before)
        )

    def run(self, run_id: str) -> Run:
        """See :meth:`AsyncClient.run`."""
        return self._call(self._async.run(run_id))
