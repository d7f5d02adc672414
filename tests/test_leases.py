"""Leases: a running attempt renews its run only near the lease's end, and reads otherwise.

The worker SDK's :class:`~firecron.worker._Execution` is driven in process on a real
SQLite store, with the runtime's clock injected: each check-in is called directly at a
chosen instant (nothing sleeps, nothing waits for the check-in thread), and what it
cost is read from the store's own counters (``store.stats``). The watchdog is a real
:class:`~firecron.dispatch.Dispatcher` tick at chosen instants.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from _factories import make_run
from _faults import UpdatesFail
from _loop import loop_thread
from firecron.core import lifecycle
from firecron.core.models import RetryPolicy, Target
from firecron.core.runs import Run, RunState
from firecron.dispatch import Dispatcher
from firecron.settings import Settings
from firecron.store.sqlite import SQLiteStore

LEASE = lifecycle.RunTimeouts().heartbeat_timeout
MINUTE = timedelta(minutes=1)


class SimClock:
    """The local clock the runtime reads: moved by the test, never by time passing."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    """A SQLite store on a loop thread, a worker runtime on it with an injected clock."""

    db: SQLiteStore
    store: UpdatesFail
    loop: asyncio.AbstractEventLoop
    clock: SimClock
    runtime: Any
    runs: int = 0

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def started(self, **overrides: Any) -> Any:
        """An execution of a run started now (at the runtime's corrected clock)."""
        from firecron.worker import RunContext, _Execution

        interval: timedelta | None = overrides.pop("interval", None)
        self.runs += 1
        schedule_id = f"lease-{self.runs}"
        run = self.call(
            self.db.create_run(make_run(schedule_id, target=Target(function="job"), **overrides))
        )
        change = lifecycle.start(run, self.runtime.now(), self.runtime.timeouts)
        started = self.call(self.db.update_run(run.id, change.expect, change.changes, current=run))
        ctx = RunContext(
            run_id=run.id, schedule_id=run.schedule_id, scheduled_for=run.scheduled_for
        )
        return _Execution(self.runtime, lambda c: None, ctx, started, interval)

    def at(self, execution: Any, after_start: timedelta) -> None:
        """Move the clock to ``after_start`` past the execution's start (store time)."""
        started_at = execution.run.started_at
        self.clock.now += started_at + after_start - self.runtime.now()

    def stats(self) -> tuple[int, int]:
        return self.db.stats.reads, self.db.stats.writes

    def stored(self, run_id: str) -> Run:
        run: Run | None = self.call(self.db.get_run(run_id))
        assert run is not None
        return run


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    from firecron.outbox import Deliverer
    from firecron.store.base import Store
    from firecron.worker import _Runtime

    async def open_db() -> SQLiteStore:
        return SQLiteStore(tmp_path / "lease.db")

    with loop_thread() as (loop, call):
        db: SQLiteStore = call(open_db())
        store = UpdatesFail(db)
        clock = SimClock()
        runtime = _Runtime(
            Settings(), cast(Store, store), loop, os.getpid(), cast(Deliverer, None), clock
        )
        try:
            yield Env(db, store, loop, clock, runtime)
        finally:
            call(db.close())


def test_the_default_lease_and_check_in_cadence(env: Env) -> None:
    assert lifecycle.RunTimeouts().heartbeat_timeout == timedelta(minutes=5)
    default = env.started()
    assert (default.interval, default.renew_within) == (MINUTE, 2 * MINUTE)
    # A decorator's short interval reads more often, never renews more often.
    eager = env.started(interval=timedelta(seconds=0.3))
    assert (eager.interval, eager.renew_within) == (timedelta(seconds=0.3), 2 * MINUTE)
    # A schedule's short lease: a fifth of it, and never more than a third of it.
    short = env.started(heartbeat_timeout=timedelta(seconds=3))
    assert (short.interval, short.renew_within) == (timedelta(seconds=0.6), timedelta(seconds=1.2))
    capped = env.started(heartbeat_timeout=timedelta(seconds=3), interval=timedelta(seconds=100))
    assert capped.interval == timedelta(seconds=1)


def test_a_check_in_far_from_the_lease_end_reads_and_writes_nothing(env: Env) -> None:
    execution = env.started()
    before_run = env.stored(execution.run.id)
    env.at(execution, MINUTE)  # 4 minutes of the lease left
    reads, writes = env.stats()
    execution.check_in()
    assert env.stats() == (reads + 1, writes)  # one read, no write (no log lines either)
    assert env.stored(execution.run.id) == before_run
    assert not execution.ctx.cancelled
    assert not execution.orphaned


def test_a_check_in_near_the_lease_end_renews_it(env: Env) -> None:
    execution = env.started()
    first = execution.run
    env.at(execution, 3 * MINUTE)  # 2 minutes left: at most two intervals
    reads, writes = env.stats()
    execution.check_in()
    assert env.stats() == (reads, writes + 1)  # one write, no read
    renewed = env.stored(execution.run.id)
    assert renewed.heartbeat_at == env.runtime.now()
    assert first.heartbeat_at is not None
    assert renewed.heartbeat_at > first.heartbeat_at
    assert renewed.deadline_at == renewed.heartbeat_at + LEASE
    assert execution.run == renewed
    assert execution.lease_end() == renewed.heartbeat_at + LEASE


def test_a_five_minute_run_renews_once(env: Env) -> None:
    """The check-ins of a 5-minute run at the default settings: at 1, 2, 3 and 4 minutes;
    only the one at 3 minutes (2 minutes of the lease left) writes."""
    execution = env.started()
    reads, writes = env.stats()
    for minute in (1, 2, 3, 4):
        env.at(execution, minute * MINUTE)
        execution.check_in()
    assert env.stats() == (reads + 3, writes + 1)
    assert not execution.lease_expired(env.runtime.now())


def test_a_cancel_request_is_seen_by_a_read_check_in(env: Env) -> None:
    execution = env.started()
    now = env.runtime.now()
    asked = env.call(
        env.db.update_run(
            execution.run.id, [RunState.running], {"cancel_requested": True, "updated_at": now}
        )
    )
    assert asked is not None
    env.at(execution, MINUTE)
    reads, writes = env.stats()
    execution.check_in()
    assert env.stats() == (reads + 1, writes)
    assert execution.ctx.cancelled
    assert not execution.orphaned  # still its run: its end is recorded as usual


def test_a_run_lost_meanwhile_is_seen_by_a_read_check_in(env: Env) -> None:
    """The watchdog declares a silent attempt lost once its lease has passed, and not
    before; the attempt's next check-in (a read) then gives the work up."""
    execution = env.started(retry=RetryPolicy(max_attempts=2, backoff=timedelta(seconds=10)))
    run = execution.run
    lease_end = execution.lease_end()
    assert lease_end == run.started_at + LEASE
    dispatcher = Dispatcher(env.db, Settings())

    async def tick(at: datetime) -> Any:
        try:
            return await dispatcher.tick(at)
        finally:
            await dispatcher.aclose()

    early = env.call(tick(lease_end - timedelta(seconds=1)))
    assert early.watched == 0
    assert env.stored(run.id).state is RunState.running
    due = env.call(tick(lease_end))
    assert due.events["run.retrying"] == 1
    lost = env.stored(run.id)
    assert lost.state is RunState.retry_wait
    [attempt] = lost.attempts
    assert (attempt.outcome, attempt.error) == (RunState.lost, "no heartbeat for 5m")

    env.at(execution, MINUTE)  # far from the lease's end by this attempt's own count
    reads, writes = env.stats()
    execution.check_in()
    assert env.stats() == (reads + 1, writes)
    assert execution.orphaned
    assert execution.ctx.cancelled
    execution.check_in()  # orphaned: no more check-ins touch the store
    assert env.stats() == (reads + 1, writes)


def test_a_failed_renewal_is_retried_at_the_next_check_in(env: Env) -> None:
    execution = env.started()
    first = execution.run
    env.at(execution, 3 * MINUTE)
    env.store.failures = 1
    execution.check_in()  # the renewal fails: logged, never raised
    assert env.store.failures == 0
    assert env.stored(execution.run.id).heartbeat_at == first.heartbeat_at
    assert not execution.ctx.cancelled
    # One interval later the lease has not ended yet, and the renewal goes through.
    env.at(execution, 4 * MINUTE)
    assert not execution.lease_expired(env.runtime.now())
    reads, writes = env.stats()
    execution.check_in()
    assert env.stats() == (reads, writes + 1)
    renewed = env.stored(execution.run.id)
    assert renewed.heartbeat_at == env.runtime.now()
    assert renewed.deadline_at == renewed.heartbeat_at + LEASE


def test_keep_going_follows_the_lease(env: Env) -> None:
    """``keep_going()``'s local lease check: false once no renewal has succeeded for the
    lease; a renewal makes it true again."""
    execution = env.started()
    env.at(execution, LEASE)
    assert not execution.ctx.keep_going()
    execution.beat()  # ctx.heartbeat(): a renewal whatever is left
    assert execution.ctx.keep_going()
    assert execution.lease_end() == env.runtime.now() + LEASE


def test_logged_lines_are_written_at_the_check_in_and_silence_writes_nothing(env: Env) -> None:
    execution = env.started()
    execution.logs.open()  # as the SDK does around the function
    try:
        env.at(execution, MINUTE)
        reads, writes = env.stats()
        execution.check_in()
        assert env.stats() == (reads + 1, writes)  # the read, and no log document
        assert env.call(env.db.get_logs(execution.run.id)) == []
        execution.ctx.log.info("halfway")
        env.at(execution, 2 * MINUTE)
        reads, writes = env.stats()
        execution.check_in()
        assert env.stats()[1] > writes  # the user's line, not the lease
        [line] = env.call(env.db.get_logs(execution.run.id))
        assert line.message == "halfway"
        assert env.stored(execution.run.id).heartbeat_at == execution.run.started_at
    finally:
        execution.logs.close()
