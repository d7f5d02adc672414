"""The Store contract (``firecron/store/base.py``), run against every backend.

Each test runs once per ``store_factory`` param (``sqlite``, ``firestore``). Times are
fixed (``T0``); nothing here reads the clock or asserts on timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from _factories import MINUTE, T0, make_run, make_spec, make_state
from firecron.core.events import Delivery, Event, EventType, PubSubSink, Route
from firecron.core.models import ScheduleSpec, ScheduleState, StoredSchedule, TaskRule
from firecron.core.runs import Attempt, Run, RunState, RunTrigger, Send, scheduled_run_id
from firecron.errors import ConflictError, InvalidInputError
from firecron.store import open_store
from firecron.store.base import ScheduleWrite, Store

US = timedelta(microseconds=1)


async def put(
    store: Store, schedule_id: str, next_fire_at: datetime | None = T0, **spec: Any
) -> StoredSchedule:
    """Create a schedule due at ``next_fire_at`` (None: idle)."""
    return await store.put_schedule(
        make_spec(schedule_id, **spec), make_state(next_fire_at), expect_version=None
    )


def advance(stored: StoredSchedule, now: datetime = T0) -> tuple[ScheduleState, Run]:
    """What a dispatcher writes when it claims ``stored``'s due occurrence."""
    occurrence = stored.state.next_fire_at
    assert occurrence is not None
    run = make_run(stored.id, occurrence, created_at=now)
    state = stored.state.model_copy(
        update={
            "next_fire_at": now + MINUTE,
            "next_occurrence": now + MINUTE,
            "last_occurrence": occurrence,
            "last_run_id": run.id,
            "run_count": stored.state.run_count + 1,
            "updated_at": now,
        }
    )
    return state, run


def test_store_instances_satisfy_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.namespace.startswith(("firecron", "t"))


@pytest.mark.parametrize("url", ["sqlite:///unused.db", "firestore://firecron-test"])
@pytest.mark.parametrize("namespace", ["firecron\n", "Firecron", "9lives", "a" * 42, ""])
def test_every_backend_refuses_a_bad_namespace_in_one_line(url: str, namespace: str) -> None:
    # Opening does no I/O, so a bad name must fail here, not at the first statement.
    with pytest.raises(InvalidInputError) as caught:
        open_store(url, namespace)
    assert str(caught.value) == (
        f"invalid namespace {namespace!r}: "
        "use a lowercase letter, then up to 40 lowercase letters, digits or '_'"
    )


@pytest.mark.parametrize("url", ["sqlite:///unused.db", "firestore://firecron-test"])
def test_every_backend_takes_the_longest_namespace(url: str) -> None:
    assert open_store(url, "a" * 41).namespace == "a" * 41


# -- schedules -------------------------------------------------------------------------


async def test_put_get_roundtrip(store: Store) -> None:
    spec, state = make_spec("alpha"), make_state(T0)
    stored = await store.put_schedule(spec, state, expect_version=None)
    assert stored.spec == spec
    assert stored.state == state
    assert isinstance(stored.version, str)
    assert stored.version

    got = await store.get_schedule("alpha")
    assert got == stored
    assert await store.get_schedule("missing") is None


async def test_create_existing_conflicts(store: Store) -> None:
    first = await put(store, "alpha")
    with pytest.raises(ConflictError):
        await store.put_schedule(
            make_spec("alpha", description="other"), make_state(None), expect_version=None
        )
    assert await store.get_schedule("alpha") == first


async def test_replace_checks_version(store: Store) -> None:
    first = await put(store, "alpha")
    new_spec = make_spec("alpha", description="changed")
    second = await store.put_schedule(new_spec, first.state, expect_version=first.version)
    assert second.version != first.version
    assert await store.get_schedule("alpha") == second

    # The first version is stale now.
    with pytest.raises(ConflictError):
        await store.put_schedule(make_spec("alpha"), first.state, expect_version=first.version)
    assert await store.get_schedule("alpha") == second

    # Replacing what does not exist is a conflict too, not a create.
    with pytest.raises(ConflictError):
        await store.put_schedule(make_spec("ghost"), first.state, expect_version=first.version)
    assert await store.get_schedule("ghost") is None


async def test_version_changes_on_every_write(store: Store) -> None:
    stored = await put(store, "alpha")
    versions = [stored.version]
    stored = await store.put_schedule(stored.spec, stored.state, expect_version=stored.version)
    versions.append(stored.version)
    # Same content written again still gets a new version.
    stored = await store.put_schedule(stored.spec, stored.state, expect_version=stored.version)
    versions.append(stored.version)
    state, run = advance(stored)
    assert await store.claim(stored, state, [run])
    claimed = await store.get_schedule("alpha")
    assert claimed is not None
    versions.append(claimed.version)
    assert await store.claim(claimed, claimed.state, []) == []  # state-only claim
    after = await store.get_schedule("alpha")
    assert after is not None
    versions.append(after.version)
    assert len(set(versions)) == len(versions), versions


async def test_recreated_schedule_does_not_match_old_version(store: Store) -> None:
    old = await put(store, "alpha")
    assert await store.delete_schedule("alpha")
    await put(store, "alpha")
    state, run = advance(old)
    assert await store.claim(old, state, [run]) is None
    assert await store.get_run(run.id) is None


async def test_list_schedules_ordered_by_id(store: Store) -> None:
    for schedule_id in ["m", "b", "z", "a1", "a"]:
        await put(store, schedule_id)
    listed = await store.list_schedules()
    assert [s.id for s in listed] == ["a", "a1", "b", "m", "z"]
    assert all(isinstance(s, StoredSchedule) for s in listed)


async def test_list_schedules_empty(store: Store) -> None:
    assert await store.list_schedules() == []


async def test_list_schedules_pages_by_id(store: Store) -> None:
    ids = [f"s{i:02d}" for i in range(7)]
    for schedule_id in reversed(ids):
        await put(store, schedule_id)
    assert [s.id for s in await store.list_schedules(limit=3)] == ids[:3]
    assert [s.id for s in await store.list_schedules(after="s02", limit=3)] == ids[3:6]
    assert [s.id for s in await store.list_schedules(after="s05", limit=3)] == ids[6:]
    assert await store.list_schedules(after="s06", limit=3) == []
    # ``after`` need not exist; no limit means the rest.
    assert [s.id for s in await store.list_schedules(after="s025")] == ids[3:]
    assert [s.id for s in await store.list_schedules(after="a")] == ids
    assert await store.list_schedules(limit=0) == []
    page = await store.list_schedules(after="s03", limit=1)
    assert page == [await store.get_schedule("s04")]


async def test_list_schedules_page_reads_only_its_documents(store: Store) -> None:
    for i in range(30):
        await put(store, f"s{i:02d}")
    store.stats.reset()
    await store.list_schedules(after="s10", limit=5)
    assert (store.stats.reads, store.stats.queries) == (5, 1)


async def test_write_schedules_creates_replaces_and_deletes(store: Store) -> None:
    old = await put(store, "old", description="before")
    doomed = await put(store, "doomed")
    changed = make_spec("old", description="after")
    results = await store.write_schedules(
        [
            ScheduleWrite(make_spec("new"), make_state(T0 + MINUTE), None),
            ScheduleWrite(changed, old.state, old.version),
        ],
        deletes=[doomed.id, "never-existed"],
    )
    assert [r.id for r in results if r is not None] == ["new", "old"]
    assert results == [await store.get_schedule("new"), await store.get_schedule("old")]
    assert results[1] is not None
    assert results[1].spec == changed
    assert results[1].version != old.version
    assert await store.get_schedule("doomed") is None
    # The versions returned are the store's: the next compare-and-set accepts them.
    again = await store.put_schedule(changed, old.state, expect_version=results[1].version)
    assert again.version != results[1].version
    # A created schedule's version is valid for a claim too.
    assert results[0] is not None
    state, run = advance(results[0])
    claimed = await store.claim(results[0], state, [run])
    assert claimed is not None
    assert [r.id for r in claimed] == [run.id]


async def test_write_schedules_skips_failed_conditions(store: Store) -> None:
    taken = await put(store, "taken", description="first")
    stale = await put(store, "stale")
    fresh = await store.put_schedule(
        stale.spec, stale.state, expect_version=stale.version
    )  # ``stale.version`` is now out of date
    writes = [
        ScheduleWrite(make_spec("taken", description="second"), make_state(None), None),
        ScheduleWrite(make_spec("stale", description="lost"), stale.state, stale.version),
        ScheduleWrite(make_spec("ghost"), stale.state, stale.version),
        ScheduleWrite(make_spec("other"), make_state(None), None),
    ]
    results = await store.write_schedules(writes)
    assert results[:3] == [None, None, None]
    assert await store.get_schedule("taken") == taken
    assert await store.get_schedule("stale") == fresh
    assert await store.get_schedule("ghost") is None
    # A write whose condition held is applied, or (a backend writing atomic batches)
    # voided with its batch; never half written.
    assert results[3] == await store.get_schedule("other")


async def test_write_schedules_many_batches(store: Store) -> None:
    # More than two of Firestore's 500-write batches, with deletes of most of them after.
    n = 1_100
    writes = [ScheduleWrite(make_spec(f"s{i:04d}"), make_state(T0), None) for i in range(n)]
    results = await store.write_schedules(writes)
    assert all(r is not None for r in results)
    listed = await store.list_schedules()
    assert [s.id for s in listed] == [f"s{i:04d}" for i in range(n)]
    assert listed == results
    assert store.stats.writes >= n
    results = await store.write_schedules(
        [ScheduleWrite(make_spec("s0000", description="x"), make_state(None), listed[0].version)],
        deletes=[s.id for s in listed[1:]],
    )
    assert results[0] is not None
    assert await store.list_schedules() == results


async def test_write_schedules_refuses_an_id_twice(store: Store) -> None:
    await put(store, "alpha")
    for writes, deletes in [
        ([ScheduleWrite(make_spec("beta"), make_state(None), None)] * 2, []),
        ([ScheduleWrite(make_spec("beta"), make_state(None), None)], ["beta"]),
        ([], ["alpha", "alpha"]),
    ]:
        with pytest.raises(InvalidInputError, match="appears twice"):
            await store.write_schedules(writes, deletes)
    assert [s.id for s in await store.list_schedules()] == ["alpha"]


async def test_write_schedules_with_nothing_to_do(store: Store) -> None:
    assert await store.write_schedules([]) == []
    assert await store.write_schedules([], deletes=["missing"]) == []


async def test_delete_schedule(store: Store) -> None:
    stored = await put(store, "alpha")
    run = make_run("alpha", T0)
    assert await store.create_run(run)

    assert await store.delete_schedule("alpha") is True
    assert await store.get_schedule("alpha") is None
    assert await store.delete_schedule("alpha") is False
    # Runs are kept as history.
    assert await store.get_run(run.id) == run

    # A new schedule of the same id can be created after a delete.
    again = await put(store, "alpha")
    assert again.id == stored.id


async def test_delete_schedule_with_version(store: Store) -> None:
    first = await put(store, "alpha")
    second = await store.put_schedule(first.spec, first.state, expect_version=first.version)
    with pytest.raises(ConflictError):
        await store.delete_schedule("alpha", expect_version=first.version)
    assert await store.get_schedule("alpha") == second
    assert await store.delete_schedule("alpha", expect_version=second.version) is True
    assert await store.get_schedule("alpha") is None
    assert await store.delete_schedule("alpha", expect_version=second.version) is False


# -- due schedules -------------------------------------------------------------------


async def test_due_schedules_order_boundary_limit(store: Store) -> None:
    await put(store, "later", T0 + US)  # one microsecond after now: not due
    await put(store, "now", T0)  # exactly now: due
    await put(store, "old", T0 - timedelta(hours=1))
    await put(store, "older", T0 - timedelta(days=1))
    await put(store, "mid", T0 - timedelta(minutes=5))
    await put(store, "idle", None)

    due = await store.due_schedules(T0, 10)
    assert [s.id for s in due] == ["older", "old", "mid", "now"]
    assert due[0] == await store.get_schedule("older")

    assert [s.id for s in await store.due_schedules(T0, 2)] == ["older", "old"]
    assert [s.id for s in await store.due_schedules(T0 - timedelta(hours=2), 10)] == ["older"]
    assert [s.id for s in await store.due_schedules(T0 + US, 10)] == [
        "older",
        "old",
        "mid",
        "now",
        "later",
    ]


async def corrupt_spec(store: Store, schedule_id: str) -> None:
    """Overwrite a schedule's stored spec with a record no version can read.

    A fault the store's API cannot produce (it only writes valid models), so it is
    written behind the store's back, through each backend's own client.
    """
    bad = '{"id": 1}'
    from firecron.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        import contextlib
        import sqlite3

        with contextlib.closing(sqlite3.connect(store._path)) as conn:
            conn.execute(
                f"UPDATE {store.namespace}_schedules SET spec = ? WHERE id = ?", (bad, schedule_id)
            )
            conn.commit()
    else:
        await store._schedules().document(schedule_id).update({"spec": bad})  # type: ignore[attr-defined]


async def test_due_schedules_leave_out_a_record_they_cannot_read(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """One unreadable record must not stop the tick for every other due schedule."""
    await put(store, "before", T0 - timedelta(hours=1))
    await put(store, "broken", T0 - timedelta(minutes=30))
    await put(store, "after", T0 - timedelta(minutes=5))
    await corrupt_spec(store, "broken")

    due = await store.due_schedules(T0, 10)
    assert [s.id for s in due] == ["before", "after"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "firecron.store"]
    assert "'broken'" in line
    assert "left out of the due schedules" in line


async def test_due_schedules_skip_idle_without_reading_them(store: Store) -> None:
    idle_state_paused = make_state(None, paused=True, paused_at=T0 - timedelta(days=2))
    idle_state_exhausted = make_state(None, exhausted=True, last_occurrence=T0 - MINUTE)
    semaphore = asyncio.Semaphore(32)

    async def put_idle(i: int) -> None:
        async with semaphore:
            state = idle_state_paused if i % 2 else idle_state_exhausted
            await store.put_schedule(make_spec(f"idle-{i:03d}"), state, expect_version=None)

    await asyncio.gather(*(put_idle(i) for i in range(300)))
    await put(store, "due-a", T0 - MINUTE)
    await put(store, "due-b", T0)

    store.stats.reset()
    due = await store.due_schedules(T0, 1000)
    assert [s.id for s in due] == ["due-a", "due-b"]
    assert store.stats.reads == 2
    assert store.stats.queries == 1
    assert store.stats.writes == 0

    # With nothing due, only the query itself may be billed (Firestore bills an empty
    # query as one read; SQLite counts rows): never the idle schedules.
    store.stats.reset()
    assert await store.due_schedules(T0 - timedelta(hours=1), 1000) == []
    assert store.stats.queries == 1
    assert store.stats.reads <= 1


# -- claim -----------------------------------------------------------------------------


async def test_claim_writes_state_and_runs(store: Store) -> None:
    stored = await put(store, "alpha", T0 - MINUTE)
    state, run = advance(stored)
    extra = make_run("alpha", T0 - 2 * MINUTE, created_at=T0)
    assert await store.claim(stored, state, [run, extra]) is not None

    after = await store.get_schedule("alpha")
    assert after is not None
    assert after.state == state
    assert after.spec == stored.spec
    assert after.version != stored.version
    assert await store.get_runs([run.id, extra.id]) == [run, extra]
    # No longer due at T0: next_fire_at moved past now.
    assert await store.due_schedules(T0, 10) == []


async def test_claim_with_no_runs_updates_state_only(store: Store) -> None:
    stored = await put(store, "alpha")
    paused = stored.state.model_copy(update={"next_fire_at": None, "paused": True})
    assert await store.claim(stored, paused, []) is not None
    after = await store.get_schedule("alpha")
    assert after is not None
    assert after.state == paused
    assert await store.due_schedules(T0, 10) == []
    assert await store.list_runs() == []


async def test_claim_stale_version_writes_nothing(store: Store) -> None:
    stored = await put(store, "alpha")
    newer = await store.put_schedule(
        make_spec("alpha", description="edited"), stored.state, expect_version=stored.version
    )
    state, run = advance(stored)
    assert await store.claim(stored, state, [run]) is None
    assert await store.get_schedule("alpha") == newer
    assert await store.get_run(run.id) is None
    assert await store.list_runs() == []


async def test_claim_missing_schedule_fails(store: Store) -> None:
    stored = await put(store, "alpha")
    assert await store.delete_schedule("alpha")
    state, run = advance(stored)
    assert await store.claim(stored, state, [run]) is None
    assert await store.get_schedule("alpha") is None
    assert await store.get_run(run.id) is None


async def test_claim_existing_run_is_all_or_nothing(store: Store) -> None:
    stored = await put(store, "alpha")
    state, run = advance(stored)
    existing = make_run("alpha", T0 - MINUTE, state=RunState.succeeded, created_at=T0 - MINUTE)
    assert await store.create_run(existing)
    fresh = make_run("alpha", T0 - 2 * MINUTE, created_at=T0)
    clash = make_run("alpha", T0 - MINUTE, created_at=T0)  # same id as `existing`

    assert await store.claim(stored, state, [fresh, clash]) is None
    # The schedule is untouched (same version, same state) ...
    assert await store.get_schedule("alpha") == stored
    # ... no run was created, and the existing one is unchanged.
    assert await store.get_run(fresh.id) is None
    assert await store.get_run(existing.id) == existing
    # The version still matches, so a clean claim goes through.
    assert await store.claim(stored, state, [run]) is not None


async def test_concurrent_claimers_claim_each_occurrence_once(
    store_factory: Callable[[], Store],
) -> None:
    setup = store_factory()
    semaphore = asyncio.Semaphore(32)

    async def put_due(i: int) -> None:
        async with semaphore:
            # Spread over the last 200 seconds so the due order is well defined.
            await put(setup, f"s{i:03d}", T0 - timedelta(seconds=i + 1))

    await asyncio.gather(*(put_due(i) for i in range(200)))

    async def claimer(index: int) -> list[str]:
        store = store_factory()  # its own instance: its own connection/client
        rng = random.Random(index)  # deterministic, but different orders contend more
        won: list[str] = []
        while True:
            due = await store.due_schedules(T0, 500)
            if not due:
                return won
            if index % 2:
                rng.shuffle(due)
            for stored in due:
                assert stored.state.next_fire_at is not None
                run_id = scheduled_run_id(stored.id, stored.state.next_fire_at)
                run = make_run(stored.id, stored.state.next_fire_at, created_at=T0, run_id=run_id)
                state = stored.state.model_copy(
                    update={"next_fire_at": T0 + MINUTE, "last_run_id": run_id}
                )
                if await store.claim(stored, state, [run]) is not None:
                    won.append(run_id)

    results = await asyncio.gather(*(claimer(i) for i in range(8)))
    claimed = [run_id for won in results for run_id in won]
    assert len(claimed) == 200
    assert len(set(claimed)) == 200

    runs = await setup.list_runs(limit=1000)
    assert len(runs) == 200
    assert sorted(r.id for r in runs) == sorted(claimed)
    assert len({r.schedule_id for r in runs}) == 200
    for stored in await setup.list_schedules():
        assert stored.state.next_fire_at == T0 + MINUTE
        assert stored.state.last_run_id == scheduled_run_id(
            stored.id, T0 - timedelta(seconds=int(stored.id[1:]) + 1)
        )
    assert await setup.due_schedules(T0, 500) == []


# -- runs ------------------------------------------------------------------------------


async def test_create_and_get_run(store: Store) -> None:
    run = make_run("alpha", T0)
    assert await store.create_run(run) is not None
    assert await store.get_run(run.id) == run
    assert await store.get_run("alpha@20990101T000000Z") is None


async def test_create_run_duplicate_returns_false(store: Store) -> None:
    run = make_run("alpha", T0)
    assert await store.create_run(run)
    other = make_run("alpha", T0, state=RunState.failed, error="different")
    assert other.id == run.id
    assert await store.create_run(other) is None
    assert await store.get_run(run.id) == run


async def test_get_runs_order_and_missing(store: Store) -> None:
    runs = [make_run("alpha", T0 + i * MINUTE) for i in range(4)]
    for run in runs:
        assert await store.create_run(run)
    wanted = [runs[2].id, "missing@20270101T000000Z", runs[0].id, runs[3].id]
    store.stats.reset()
    assert await store.get_runs(wanted) == [runs[2], runs[0], runs[3]]
    assert store.stats.reads == 3
    assert await store.get_runs([]) == []
    assert await store.get_runs(["nope"]) == []


async def test_update_run_wrong_state_changes_nothing(store: Store) -> None:
    run = make_run("alpha", T0, state=RunState.dispatched)
    assert await store.create_run(run)
    result = await store.update_run(
        run.id,
        [RunState.pending, RunState.running],
        {"state": RunState.succeeded, "updated_at": T0 + MINUTE},
    )
    assert result is None
    assert await store.get_run(run.id) == run
    assert await store.update_run("missing", [RunState.pending], {"error": "x"}) is None


async def test_update_run_applies_and_roundtrips_all_field_types(store: Store) -> None:
    run = make_run("alpha", T0, params={"k": "v"})
    assert await store.create_run(run)
    t = T0 + timedelta(seconds=3, microseconds=123456)
    changes = {
        "state": RunState.running,
        "attempt": 2,
        "updated_at": t,
        "dispatched_at": T0 + timedelta(seconds=1),
        "started_at": t,
        "heartbeat_at": t + timedelta(seconds=30),
        "watch_at": t + timedelta(minutes=2),
        "retry_at": None,
        "sla_breached_at": t + timedelta(minutes=1),
        "cancel_requested": True,
        "blocked_by": "alpha@20261231T235900Z",
        "timeout": timedelta(minutes=30),
        "expected_duration": timedelta(minutes=10, milliseconds=500),
        "labels": {"team": "data", "tier": "1"},
        "retention": "7d",
        "expire_at": T0 + timedelta(days=8),
        "params": {"date": "2027-01-01", "n": 3, "nested": {"list": [1, 2.5, None, True]}},
        "output": {"rows": 42, "ok": True, "ratio": 0.25, "tags": ["a", "b"], "none": None},
        "error": "first attempt: connection reset",
        "attempts": [
            Attempt(
                number=1,
                dispatched_at=T0,
                acknowledged=False,
                status_code=503,
                ended_at=T0 + timedelta(seconds=2),
                outcome=RunState.failed,
                error="503 Service Unavailable",
            ),
            Attempt(
                number=2,
                dispatched_at=T0 + timedelta(seconds=1),
                acknowledged=True,
                status_code=202,
                started_at=t,
            ),
        ],
    }
    updated = await store.update_run(run.id, [RunState.pending, RunState.dispatched], changes)
    expected = Run.model_validate({**run.model_dump(), **changes})
    assert updated == expected
    assert await store.get_run(run.id) == expected

    # A second step in the state machine, with terminal values of other types.
    done = await store.update_run(
        run.id,
        [RunState.running],
        {
            "state": RunState.succeeded,
            "ended_at": t + timedelta(minutes=5),
            "watch_at": None,
            "output": "plain string output",
            "updated_at": t + timedelta(minutes=5),
        },
    )
    assert done is not None
    assert done.state is RunState.succeeded
    assert done.output == "plain string output"
    assert done.duration == timedelta(minutes=5)
    assert done.attempts == expected.attempts
    assert await store.get_run(run.id) == done
    # Terminal now: nothing to watch.
    assert await store.due_watches(T0 + timedelta(days=1), 10) == []


async def test_update_run_without_changes_returns_the_run_with_its_version(store: Store) -> None:
    run = make_run("alpha", T0)
    assert await store.create_run(run)
    same = await store.update_run(run.id, [RunState.pending], {})
    assert same == run
    assert same.version is not None  # usable as ``current``, like every run a store returns
    moved = await store.update_run(run.id, [RunState.pending], {"error": "e"}, current=same)
    assert moved is not None
    assert moved.error == "e"


async def test_update_run_rejects_bad_changes(store: Store) -> None:
    run = make_run("alpha", T0)
    created = await store.create_run(run)
    assert created is not None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"state": "no-such-state"}, "invalid changes: state: "),
        ({"no_such_field": 1}, "unknown run field(s) no_such_field"),
        ({"id": "other"}, "a run's id cannot change"),
    ]
    for changes, fault in bad:
        for current in (None, created):
            with pytest.raises(InvalidInputError) as caught:
                await store.update_run(run.id, [RunState.pending], changes, current=current)
            message = str(caught.value)
            assert message.startswith(f"update_run {run.id!r}: {fault}"), message
            assert "\n" not in message
    assert await store.get_run(run.id) == run


async def test_concurrent_update_run_exactly_one_wins(
    store_factory: Callable[[], Store],
) -> None:
    first, second = store_factory(), store_factory()
    runs = [make_run(f"s{i}", T0) for i in range(10)]
    for run in runs:
        assert await first.create_run(run)

    async def start(store: Store, run: Run, who: str) -> Run | None:
        return await store.update_run(
            run.id,
            [RunState.pending, RunState.dispatched],
            {"state": RunState.running, "error": who, "updated_at": T0 + MINUTE},
        )

    for run in runs:
        a, b = await asyncio.gather(start(first, run, "first"), start(second, run, "second"))
        winners = [r for r in (a, b) if r is not None]
        assert len(winners) == 1, (run.id, a, b)
        stored = await first.get_run(run.id)
        assert stored == winners[0]
        assert stored is not None
        assert stored.error in {"first", "second"}


async def test_due_watches_order_limit_and_terminal(store: Store) -> None:
    runs = [
        make_run("a", T0, watch_at=T0 - timedelta(minutes=3)),
        make_run("b", T0, watch_at=T0),  # exactly now: due
        make_run("c", T0, watch_at=T0 + US, state=RunState.running),  # not yet
        make_run("d", T0, watch_at=T0 - timedelta(minutes=10), state=RunState.retry_wait),
        make_run("e", T0, state=RunState.succeeded),  # terminal: watch_at None
        make_run("f", T0, state=RunState.delivered),
        make_run("g", T0, state=RunState.lost),
    ]
    for run in runs:
        assert await store.create_run(run)
    by = {r.schedule_id: r for r in runs}

    store.stats.reset()
    due = await store.due_watches(T0, 10)
    assert due == [by["d"], by["a"], by["b"]]
    assert store.stats.reads == 3
    assert store.stats.queries == 1
    assert await store.due_watches(T0, 2) == [by["d"], by["a"]]
    assert await store.due_watches(T0 + timedelta(days=365), 10) == [
        by["d"],
        by["a"],
        by["b"],
        by["c"],
    ]

    # A run that becomes terminal leaves the watch list.
    assert await store.update_run(
        by["a"].id, [RunState.pending], {"state": RunState.failed, "watch_at": None}
    )
    assert await store.due_watches(T0, 10) == [by["d"], by["b"]]


async def test_list_runs_filters_order_and_paging(store: Store) -> None:
    specs = [
        # (schedule, minutes after T0, state)
        ("a", 0, RunState.succeeded),
        ("a", 1, RunState.failed),
        ("b", 2, RunState.running),
        ("a", 3, RunState.running),
        ("b", 4, RunState.succeeded),
        ("a", 5, RunState.pending),
    ]
    runs = [
        make_run(sid, T0 + m * MINUTE, state=st, created_at=T0 + m * MINUTE) for sid, m, st in specs
    ]
    for run in runs:
        assert await store.create_run(run)

    newest_first = list(reversed(runs))
    assert await store.list_runs() == newest_first
    assert await store.list_runs(limit=2) == newest_first[:2]
    assert await store.list_runs(schedule_id="a") == [runs[5], runs[3], runs[1], runs[0]]
    assert await store.list_runs(schedule_id="zzz") == []
    assert await store.list_runs(states=[RunState.running]) == [runs[3], runs[2]]
    assert await store.list_runs(states=[RunState.succeeded, RunState.failed]) == [
        runs[4],
        runs[1],
        runs[0],
    ]
    assert await store.list_runs(schedule_id="a", states=[RunState.running]) == [runs[3]]

    # `before` is an exclusive cursor on created_at.
    assert await store.list_runs(before=runs[3].created_at) == [runs[2], runs[1], runs[0]]
    assert await store.list_runs(before=runs[3].created_at, limit=1) == [runs[2]]
    assert await store.list_runs(schedule_id="b", before=runs[4].created_at) == [runs[2]]
    assert await store.list_runs(before=runs[0].created_at) == []

    # Paging through everything with the cursor visits each run once, in order.
    seen: list[Run] = []
    cursor = None
    while page := await store.list_runs(limit=4, before=cursor):
        seen.extend(page)
        cursor = page[-1].created_at
    assert seen == newest_first


async def test_list_runs_ties_by_id(store: Store) -> None:
    runs = [make_run(sid, T0, created_at=T0) for sid in ["b", "c", "a"]]
    for run in runs:
        assert await store.create_run(run)
    listed = await store.list_runs()
    # Newest first and, between equal created_at, by id descending (the same direction).
    assert [r.schedule_id for r in listed] == ["c", "b", "a"]


# -- round trips -----------------------------------------------------------------------


def assert_all_fields_set(model: BaseModel, except_: tuple[str, ...] = ()) -> None:
    """Guard of the round-trip tests: a field added to a model must be set here too."""
    fields = type(model).model_fields
    defaults = {
        name: info.get_default(call_default_factory=True)
        for name, info in fields.items()
        if name not in except_
    }
    unset = [name for name, default in defaults.items() if getattr(model, name) == default]
    assert not unset, f"set these {type(model).__name__} fields in the test: {unset}"


async def test_full_spec_and_state_roundtrip(store: Store) -> None:
    spec = ScheduleSpec.model_validate(
        {
            "id": "full_spec-1",
            "description": "Every field set — with unicode ✓",
            "timezone": "Europe/Berlin",
            "cron": "30 7 * * 1-5",
            "target": {"function": "nightly_report", "auth": "oidc"},
            "params": {"region": "eu", "limit": 10, "ratio": 0.5, "flags": [True, None]},
            "enabled": False,
            "start_at": "2027-01-01T08:00:00+01:00",
            "end_at": "2027-12-31T23:59:59.250000+00:00",
            "max_runs": 12,
            "jitter": "30s",
            "expected_duration": "10m",
            "timeout": "1h30m",
            "retry": {"max_attempts": 5, "backoff": "5s", "max_backoff": "2m", "multiplier": 3},
            "overlap": "queue_one",
            "misfire": {"policy": "all", "grace": "2h"},
            "labels": {"team": "data", "env": "prod"},
            "retention": "90d",
            "notify": [
                {"sink_name": "log", "types": [], "sink": {"type": "log"}},
                {
                    "sink_name": "ops",
                    "types": ["run.failed", "run.lost"],
                    "sink": {
                        "type": "webhook",
                        "url": "https://hooks.example.com/x",
                        "format": "slack",
                    },
                },
                {
                    "sink_name": "pager",
                    "types": ["run.failed", "run.sla_breached"],
                    "sink": {"type": "pagerduty", "routing_key_env": "PD_ROUTING_KEY"},
                },
                {
                    "sink_name": "mail",
                    "types": ["run.lost"],
                    "sink": {
                        "type": "email",
                        "host": "smtp.example.com",
                        "port": 2525,
                        "from": "firecron@example.com",
                        "to": ["oncall@example.com", "data@example.com"],
                        "username": "firecron",
                        "password_env": "SMTP_PASSWORD",
                    },
                },
            ],
            "then": [
                {"schedule": "after-1", "on": "done", "params": {"k": [1, None]}},
                {"schedule": "after-2"},
            ],
            "heartbeat_timeout": "2m",
            "managed_by": "api",
            "wait": {
                "key": "orders/{region}/{date}",
                "until": "value != null && value.ready",
                "every": "1m",
                "timeout": "3h",
            },
        }
    )
    state = ScheduleState(
        next_fire_at=T0 + timedelta(seconds=17, microseconds=5),
        next_occurrence=T0,
        last_occurrence=T0 - timedelta(days=1),
        last_run_id="full_spec-1@20261231T000000Z",
        run_count=7,
        skipped_count=2,
        missed_count=1,
        paused=True,
        paused_at=T0 - timedelta(hours=1),
        exhausted=True,
        created_at=T0 - timedelta(days=30),
        updated_at=T0 - timedelta(hours=1),
        last_error="OverflowError: date value out of range",
        last_error_at=T0 - timedelta(minutes=5),
    )
    # One trigger only: the frequencies' round trips are in test_frequencies.py (on this
    # same fixture), and a pipeline_spec goes with a pipeline target, whose round trip is
    # in test_store_orchestration.py.
    others = ("every", "at", "continuous", "hourly", "daily", "weekly", "monthly")
    assert_all_fields_set(spec, except_=(*others, "pipeline_spec"))
    assert_all_fields_set(state)
    stored = await store.put_schedule(spec, state, expect_version=None)
    got = await store.get_schedule(spec.id)
    assert got == stored
    assert got is not None
    assert got.spec == spec
    assert got.state == state
    assert got.spec.model_dump() == spec.model_dump()
    assert [s.spec for s in await store.list_schedules()] == [spec]


async def test_full_run_roundtrip(store: Store) -> None:
    run = make_run(
        "alpha",
        T0,
        run_id="alpha@m20270101T000000Z-abc123",
        trigger=RunTrigger.manual,
        state=RunState.running,
        fire_at=T0 + timedelta(seconds=7),
        attempt=3,
        params={"x": [1, {"y": "z"}]},
        target={"url": "https://example.com/worker", "worker": True, "auth": "hmac"},
        retry={"max_attempts": 4, "backoff": "1s", "max_backoff": "1m", "multiplier": 1.5},
        timeout="45m",
        expected_duration="15m",
        labels={"a": "b"},
        deadline_at=T0 + timedelta(minutes=2),
        notify=[
            Route(
                sink_name="bus",
                types=(),
                sink=PubSubSink(type="pubsub", topic="projects/p-roj/topics/events"),
            )
        ],
        events=[
            Event(
                id="x@1/run.failed/1",
                type=EventType.run_failed,
                source="//firecron/schedules/x",
                subject="x@1",
                time=T0,
                data={"error": "boom", "n": 1, "nested": {"a": [1, None]}},
                deliveries=[
                    Delivery(
                        sink="bus", attempts=2, next_at=T0 + timedelta(minutes=1), last_error="503"
                    )
                ],
            )
        ],
        retention=timedelta(days=7),
        expire_at=T0 + timedelta(days=7),
        dispatched_at=T0 + timedelta(seconds=8),
        started_at=T0 + timedelta(seconds=9),
        heartbeat_at=T0 + timedelta(seconds=39),
        ended_at=T0 + timedelta(minutes=20),
        retry_at=T0 + timedelta(minutes=5),
        sla_breached_at=T0 + timedelta(minutes=16),
        cancel_requested=True,
        timed_out_at=T0 + timedelta(minutes=19),
        blocked_by="alpha@20261231T235900Z",
        output=[1, "two", {"three": 3.0}],
        error="boom",
        attempts=[
            Attempt(number=1, outcome=RunState.lost),
            Attempt(
                number=2,
                sends=[
                    Send(at=T0, outcome="unknown"),
                    Send(
                        at=T0 + timedelta(seconds=8),
                        outcome="retryable",
                        status_code=503,
                        error="HTTP 503",
                    ),
                ],
            ),
        ],
        parent_run_id="pipe@20270101T000000Z",
        task="extract",
        pipeline="pipe",
        pipeline_spec={
            "id": "pipe",
            "max_parallel": 3,
            "timeout": "2h",
            "params": {"p": 1},
            "tasks": [
                {"id": "extract", "target": {"function": "extract"}},
                {
                    "id": "load-1",
                    "target": {"url": "https://example.com/load"},
                    "after": ["extract"],
                    "when": "any_failed",
                    "if": "tasks.extract.state == 'failed'",
                },
            ],
        },
        cause_run_id="pipe@20270101T000000Z",
        reused_from="pipe@m20261231T000000Z-abc123.extract",
        then=[{"schedule": "next", "on": "failed", "params": {"why": "x"}}],
        rule=TaskRule.none_failed,
        generation=7,
        window=timedelta(minutes=10),
        heartbeat_timeout=timedelta(minutes=2),
        failures=2,
        after=["extract", "0-th"],
        downstream=["load-1", "2nd"],
        holds_slot=True,
        upstream={
            "up-0": {"outcome": "upstream_failed", "state": "skipped", "failed_within": True}
        },
        slots=["extract"],
        ready=["load-1"],
        settle_at=T0 + timedelta(minutes=21),
        cancelled_at=T0 + timedelta(minutes=19, seconds=30),
        wait={"key": "orders/{date}", "until": "value.rows > 0", "every": "10s"},
        wait_key="orders/2027-01-01",
        wait_value={"rows": 0, "files": ["a", None]},
        wait_checked_at=T0 + timedelta(minutes=3),
        wait_until=T0 + timedelta(hours=6),
        timezone="Europe/Berlin",
    )
    assert_all_fields_set(run, except_=("version",))
    assert await store.create_run(run)
    assert await store.get_run(run.id) == run
    assert await store.list_runs(schedule_id="alpha") == [run]
    assert await store.due_watches(T0 + timedelta(hours=1), 10) == [run]
    assert await store.waiting_on("orders/2027-01-01", 10) == [run]


async def test_update_run_expect_conditions(store: Store) -> None:
    created = await store.create_run(make_run("exp", T0, attempt=2))
    assert created is not None
    assert (
        await store.update_run(
            created.id, [RunState.pending], {"error": "x"}, expect={"attempt": 1}
        )
        is None
    )
    updated = await store.update_run(
        created.id, [RunState.pending], {"error": "y"}, expect={"attempt": 2}
    )
    assert updated is not None
    assert updated.error == "y"


async def test_versions_are_set_and_change_on_every_write(store: Store) -> None:
    stored = await store.put_schedule(make_spec("ver"), make_state(T0), expect_version=None)
    claimed = await store.claim(stored, make_state(T0 + MINUTE), [make_run("ver", T0)])
    assert claimed is not None
    [run] = claimed
    assert run.version is not None
    read = await store.get_run(run.id)
    assert read is not None
    assert read.version == run.version
    assert read == run
    changed = await store.update_run(run.id, [RunState.pending], {"error": "e"})
    assert changed is not None
    assert changed.version not in (None, run.version)
    [listed] = await store.list_runs(schedule_id="ver")
    assert listed.version == changed.version
    [got] = await store.get_runs([run.id])
    assert got.version == changed.version


async def test_update_run_with_current_is_a_version_cas_without_a_read(store: Store) -> None:
    stored = await store.put_schedule(make_spec("cas"), make_state(T0), expect_version=None)
    claimed = await store.claim(stored, make_state(T0 + MINUTE), [make_run("cas", T0)])
    assert claimed is not None
    [run] = claimed
    store.stats.reset()
    moved = await store.update_run(
        run.id, [RunState.pending], {"state": RunState.delivered, "watch_at": None}, current=run
    )
    assert moved is not None
    assert moved.state is RunState.delivered
    assert (store.stats.reads, store.stats.writes) == (0, 1)
    # The same stale copy cannot write again: the run changed since.
    assert (
        await store.update_run(run.id, [RunState.pending], {"error": "late"}, current=run) is None
    )
    final = await store.get_run(run.id)
    assert final is not None
    assert (final.state, final.error) == (RunState.delivered, None)


async def test_racing_version_cas_has_exactly_one_winner(
    store_factory: Callable[[], Store],
) -> None:
    first = store_factory()
    created = await first.create_run(make_run("race2", T0))
    assert created is not None
    stores = [store_factory() for _ in range(6)]
    results = await asyncio.gather(
        *(
            s.update_run(created.id, [RunState.pending], {"error": f"w{i}"}, current=created)
            for i, s in enumerate(stores)
        )
    )
    assert sum(r is not None for r in results) == 1


# -- the store clock and schedule errors (issue 10) --------------------------------------


async def test_clock_is_the_store_time_in_utc_at_a_bounded_cost(store: Store) -> None:
    """Both backends run on this machine here: their clock is this machine's (within 1 s)."""
    from datetime import UTC, datetime

    store.stats.reset()
    before = datetime.now(UTC)
    now = await store.clock()
    after = datetime.now(UTC)
    assert now.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= now <= after + timedelta(seconds=1)
    # SQLite reads nothing; Firestore bills one read (a get of a missing document).
    assert store.stats.reads <= 1
    assert store.stats.writes == 0


async def test_a_schedule_error_is_claimed_and_read_back(store: Store) -> None:
    from firecron.core import planning

    stored = await store.put_schedule(make_spec("e"), make_state(), expect_version=None)
    errored = planning.errored(stored.state, T0, "OverflowError: date value out of range")
    assert await store.claim(stored, errored, []) == []
    [due] = await store.due_schedules(T0 + planning.ERROR_BACKOFF, 10)
    assert due.state == errored
    assert due.status == "error"
    assert await store.due_schedules(T0 + planning.ERROR_BACKOFF - US, 10) == []


async def test_sqlite_openers_racing_on_a_new_file_all_open_it(tmp_path: Path) -> None:
    """Openers of a new file race to switch it to WAL mode; SQLite answers the loser
    "database is locked" at once (no busy wait), so the store must try again. A race:
    before the fix this failed now and then, under load, not every time."""
    from firecron.store.sqlite import SQLiteStore

    for n in range(20):
        stores = [SQLiteStore(tmp_path / f"new{n}" / "firecron.db") for _ in range(8)]
        try:
            assert await asyncio.gather(*(s.list_state() for s in stores)) == [[]] * 8
        finally:
            for store in stores:
                await store.close()
