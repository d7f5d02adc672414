"""Chaining ("submit now") on both stores: a run's end claims and fires the next run at once.

Plain URL targets against real HTTP sinks on 127.0.0.1; ticks are given their instant.
The worker paths (``ctx.submit``, a worker's end, a killed worker) are in
``tests/test_orchestration_workers.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from _factories import T0
from _sinks import serve
from firecron.causes import Causes
from firecron.core import planning
from firecron.core.models import ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Run, RunState, RunTrigger, caused_run_id
from firecron.dispatch import Dispatcher, TickSummary
from firecron.errors import StoreError
from firecron.settings import Settings
from firecron.store.base import Store


def settings() -> Settings:
    return Settings(allow_private_targets=True, ack_timeout=timedelta(seconds=2))


async def put(store: Store, **fields: Any) -> StoredSchedule:
    """Store a schedule: due at T0 when it has a trigger, idle when it is on demand."""
    spec = ScheduleSpec.model_validate(fields)
    if spec.on_demand:
        state = ScheduleState(created_at=T0, updated_at=T0)
    else:
        state = planning.initial_state(spec, T0 - timedelta(seconds=1))
    return await store.put_schedule(spec, state, expect_version=None)


async def put_chain(store: Store, url: str, first: str, then: str, **first_fields: Any) -> None:
    """An hourly ``first`` (a plain POST to ``url/first``, due at T0) whose runs chain to
    the on-demand ``then`` (a plain POST to ``url/then``)."""
    await put(store, id=then, target={"url": f"{url}/{then}"})
    fields: dict[str, Any] = {"target": {"url": f"{url}/{first}"}, **first_fields}
    await put(store, id=first, every="1h", then=[{"schedule": then}], **fields)


async def runs_of(store: Store, schedule_id: str) -> list[Run]:
    return await store.list_runs(schedule_id=schedule_id, limit=100)


async def test_a_delivered_run_claims_and_fires_its_then_step_at_once(store: Store) -> None:
    with serve() as sink:
        await put(store, id="report", target={"url": sink.url + "/report"}, params={"a": 1, "b": 1})
        await put(
            store,
            id="extract",
            every="1h",
            target={"url": sink.url + "/extract"},
            then=[{"schedule": "report", "params": {"b": 2}}],
        )
        d = Dispatcher(store, settings())
        try:
            summary = await d.tick(T0)
        finally:
            await d.aclose()
        paths = [r.path for r in sink.requests]
    # One tick: the cause and its successor, in that order, with nothing left to sweep.
    assert paths == ["/extract", "/report"]
    assert summary.caused == 1
    assert summary.settled == 1
    [cause] = await runs_of(store, "extract")
    [chained] = await runs_of(store, "report")
    assert cause.state is RunState.delivered
    assert cause.settle_at is None
    assert cause.watch_at is None
    assert chained.id == caused_run_id("report", cause.id, "then/0")
    assert chained.trigger is RunTrigger.chained
    assert chained.cause_run_id == cause.id
    assert chained.params == {"a": 1, "b": 2}  # the step's params over the schedule's
    assert chained.state is RunState.delivered
    # The on-demand schedule never fires by itself.
    d = Dispatcher(store, settings())
    try:
        later = await d.tick(T0 + timedelta(minutes=30))
    finally:
        await d.aclose()
    assert later.fired == 0


@pytest.mark.parametrize(
    ("status", "fired"),
    [(200, {"on-ok", "on-done"}), (400, {"on-failed", "on-done"})],
    ids=["succeeded", "failed"],
)
async def test_then_steps_follow_the_end(store: Store, status: int, fired: set[str]) -> None:
    with serve(status=status) as cause_sink, serve() as sink:
        for name in ("on-ok", "on-failed", "on-done"):
            await put(store, id=name, target={"url": f"{sink.url}/{name}"})
        await put(
            store,
            id="job",
            every="1h",
            target={"url": cause_sink.url + "/job"},
            then=[
                {"schedule": "on-ok"},
                {"schedule": "on-failed", "on": "failed"},
                {"schedule": "on-done", "on": "done"},
            ],
        )
        d = Dispatcher(store, settings())
        try:
            await d.tick(T0)
        finally:
            await d.aclose()
        got = {r.path.strip("/") for r in sink.requests}
    assert got == fired


async def test_a_run_that_causes_nothing_costs_what_it_did(store: Store) -> None:
    """No then step: 1 read and 3 writes per fired run, as before orchestration."""
    with serve() as sink:
        await put(store, id="plain", every="1h", target={"url": sink.url + "/p"})
        store.stats.reset()
        d = Dispatcher(store, settings())
        try:
            await d.tick(T0)
        finally:
            await d.aclose()
    [run] = await runs_of(store, "plain")
    assert run.settle_at is None
    # The due query's document, the claim (schedule + run), the outcome; on Firestore the
    # clock read and the empty watch query are billed as reads too.
    reads, writes = store.stats.reads, store.stats.writes
    assert writes == 3
    assert reads <= 3


async def test_a_crash_between_the_end_and_the_claim_is_healed_by_the_next_tick(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as sink:
        await put_chain(store, sink.url, "first", "next")

        # The recorder dies right after writing the end: its settle never runs.
        async def die(self: Causes, run: Run, summary: TickSummary, **kw: object) -> None:
            raise RuntimeError("recorder died")

        monkeypatch.setattr(Causes, "settle", die)
        d = Dispatcher(store, settings())
        try:
            crashed = await d.tick(T0)
        finally:
            await d.aclose()
        assert [r.path for r in sink.requests] == ["/first"]
        assert crashed.errors
        assert "recorder died" in crashed.errors[0]
        [ended] = await runs_of(store, "first")
        assert ended.state is RunState.delivered
        assert ended.settle_at is not None
        assert ended.watch_at == ended.settle_at
        assert await runs_of(store, "next") == []

        monkeypatch.undo()
        d = Dispatcher(store, settings())
        try:
            healed = await d.tick(T0 + timedelta(minutes=1))
            again = await d.tick(T0 + timedelta(minutes=2))
        finally:
            await d.aclose()
        paths = [r.path for r in sink.requests]
    assert paths == ["/first", "/next"]
    assert healed.settled == 1
    assert healed.caused == 1
    assert again.settled == 0
    assert again.caused == 0
    [ended] = await runs_of(store, "first")
    assert ended.settle_at is None
    assert ended.watch_at is None
    [chained] = await runs_of(store, "next")
    assert chained.cause_run_id == ended.id
    assert chained.state is RunState.delivered


async def test_racing_settlers_claim_the_successor_exactly_once(
    store_factory: Callable[[], Store],
) -> None:
    """Two ticks' sweeps and the recorder settle the same end at once: one run, one POST."""
    store = store_factory()
    with serve() as sink:
        await put_chain(store, sink.url, "before", "after")
        # Record the end without settling, then let three dispatchers settle it together.
        plain = Dispatcher(store, settings())
        stored = await store.get_schedule("before")
        assert stored is not None
        plan = planning.plan(stored, None, T0)
        created = await store.claim(stored, plan.new_state, plan.runs)
        assert created is not None
        original = Causes.settle

        async def later(self: Causes, run: Run, summary: TickSummary, **kw: object) -> None:
            raise RuntimeError("settled later")

        Causes.settle = later  # type: ignore[method-assign]
        try:
            ended = await plain.fire(created[0])
        finally:
            Causes.settle = original  # type: ignore[method-assign]
            await plain.aclose()
        assert ended.state is RunState.delivered
        assert ended.settle_at is not None
        settlers = [Dispatcher(store_factory(), settings()) for _ in range(3)]
        try:
            await asyncio.gather(*(s.settle(ended) for s in settlers))
        finally:
            await asyncio.gather(*(s.aclose() for s in settlers))
        paths = [r.path for r in sink.requests]
    assert paths.count("/after") == 1
    [chained] = await runs_of(store, "after")
    assert chained.state is RunState.delivered
    refreshed = await store.get_run(ended.id)
    assert refreshed is not None
    assert refreshed.settle_at is None


async def test_a_chained_run_follows_the_target_overlap_policy(store: Store) -> None:
    with serve() as sink:
        target = await put(
            store, id="busy", target={"url": sink.url + "/busy", "worker": True}, overlap="skip"
        )
        # The target schedule's latest run is still running.
        d = Dispatcher(store, settings())
        try:
            active = await d.trigger("busy")
            assert active.state is RunState.dispatched
            stored = await store.get_schedule("busy")
            assert stored is not None
            await store.put_schedule(
                stored.spec,
                stored.state.model_copy(update={"last_run_id": active.id}),
                expect_version=stored.version,
            )
            await put(
                store,
                id="src",
                every="1h",
                target={"url": sink.url + "/src"},
                then=[{"schedule": "busy"}],
            )
            await d.tick(T0)
        finally:
            await d.aclose()
        assert target.spec.overlap.value == "skip"
    chained = [r for r in await runs_of(store, "busy") if r.trigger is RunTrigger.chained]
    assert len(chained) == 1
    assert chained[0].state is RunState.skipped
    assert chained[0].error is not None
    assert active.id in chained[0].error


def test_code_starts_an_on_demand_schedule_with_firecron_trigger(tmp_path: Path) -> None:
    """``firecron.trigger`` from a plain (synchronous) program: claimed, sent, its id back."""
    import firecron
    from firecron.store import open_store

    url = f"sqlite:///{tmp_path / 'code.db'}"

    async def seed(sink_url: str) -> None:
        store = open_store(url, "firecron")
        try:
            await put(store, id="on-call", target={"url": sink_url + "/code"}, params={"a": 1})
        finally:
            await store.close()

    async def read(run_id: str) -> Run | None:
        store = open_store(url, "firecron")
        try:
            return await store.get_run(run_id)
        finally:
            await store.close()

    with serve() as sink:
        asyncio.run(seed(sink.url))
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FIRECRON_ALLOW_PRIVATE_TARGETS", "1")
            run_id = firecron.trigger("on-call", {"b": 2}, store_url=url)
        paths = [r.path for r in sink.requests]
    assert paths == ["/code"]
    run = asyncio.run(read(run_id))
    assert run is not None
    assert run.trigger is RunTrigger.manual
    assert run.state is RunState.delivered
    assert run.params == {"a": 1, "b": 2}


async def test_the_watchdog_settles_a_run_it_ends_lost(store: Store) -> None:
    """A worker that never starts its run: the watchdog ends it lost and claims the step."""
    with serve() as sink:
        await put(store, id="page", target={"url": sink.url + "/page"})
        await put(
            store,
            id="silent",
            every="1h",
            target={"url": sink.url + "/silent", "worker": True},
            retry={"max_attempts": 1},
            then=[{"schedule": "page", "on": "failed"}],
        )
        clock = [T0]
        d = Dispatcher(store, settings(), clock=lambda: clock[0])
        try:
            await d.tick(T0)
            clock[0] = T0 + d.timeouts.start_timeout + timedelta(seconds=1)
            summary = await d.tick(clock[0])
        finally:
            await d.aclose()
        paths = [r.path for r in sink.requests]
    assert paths == ["/silent", "/page"]
    assert summary.events["run.lost"] == 1
    assert summary.caused == 1
    [lost] = await runs_of(store, "silent")
    assert lost.state is RunState.lost
    assert lost.settle_at is None
    [paged] = await runs_of(store, "page")
    assert paged.cause_run_id == lost.id


class _EndWriteFails:
    """A store whose next write of a ``delivered`` end fails, as if the dispatcher died
    between claiming what the end causes and recording the end."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_run(self, run_id: str, expect_states: Any, changes: Any, **kw: Any) -> Any:
        if (
            self.armed
            and run_id.startswith("first@")
            and changes.get("state") is RunState.delivered
        ):
            self.armed = False
            raise StoreError("the dispatcher died here")
        return await self.inner.update_run(run_id, expect_states, changes, **kw)


async def test_a_plain_end_is_settled_before_it_is_recorded_and_a_crash_in_between_is_resent(
    store: Store,
) -> None:
    """A plain target's end claims its successors first; if the end is then never
    recorded, the run is still pending, so the watchdog sends the same attempt again and
    settles it again: the cause may arrive twice (at least once, same key), the successor
    is claimed once."""
    with serve() as sink:
        await put_chain(store, sink.url, "first", "next")
        flaky = _EndWriteFails(store)
        d = Dispatcher(cast(Store, flaky), settings(), clock=lambda: T0)
        try:
            await d.tick(T0)
            [pending] = await runs_of(store, "first")
            assert pending.state is RunState.pending
            assert len(await runs_of(store, "next")) == 1  # claimed before the end
            later = T0 + d.timeouts.pending_grace + timedelta(seconds=1)
            d.clock = lambda: later
            await d.tick(later)
        finally:
            await d.aclose()
        ids = [r.headers["webhook-id"] for r in sink.requests]
    [ended] = await runs_of(store, "first")
    [chained] = await runs_of(store, "next")
    assert ids == [f"{ended.id}/1", f"{chained.id}/1", f"{ended.id}/1"]
    assert ended.state is RunState.delivered
    assert ended.settle_at is None
    assert chained.state is RunState.delivered


async def test_a_then_step_whose_schedule_was_deleted_does_not_keep_the_end_unsettled(
    store: Store,
) -> None:
    with serve() as sink:
        await put_chain(store, sink.url, "first", "gone")
        assert await store.delete_schedule("gone")
        d = Dispatcher(store, settings(), clock=lambda: T0)
        try:
            summary = await d.tick(T0)
            again = await d.tick(T0 + timedelta(minutes=1))
        finally:
            await d.aclose()
    assert any("schedule 'gone' is gone" in line for line in summary.errors)
    assert again.errors == []
    [ended] = await runs_of(store, "first")
    assert ended.state is RunState.delivered
    assert ended.settle_at is None
