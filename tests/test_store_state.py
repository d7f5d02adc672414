"""The Store contract of issue 14: the state collection and the waiting-run index, on
every backend.

Each test runs once per ``store_factory`` param (``sqlite``, ``firestore`` on the
emulator), except the SQLite migration at the end. Times are fixed (``T0``); nothing
reads the clock or asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _factories import MINUTE, T0, make_run, make_spec, make_state
from firecron.core.models import JsonValue, WaitSpec
from firecron.core.runs import Run, RunState
from firecron.core.state import MAX_VALUE_BYTES, StateEntry
from firecron.errors import ConflictError, Fenced, InvalidInputError
from firecron.store._codec import to_json
from firecron.store.base import Store
from firecron.store.sqlite import SQLiteStore

US = timedelta(microseconds=1)
WAIT = WaitSpec(key="orders/{date}")


async def entries(store: Store, **kwargs: Any) -> list[tuple[str, JsonValue, int]]:
    """``list_state(**kwargs)`` as (key, value, version) triples."""
    return [(e.key, e.value, e.version) for e in await store.list_state(**kwargs)]


# -- state: reads and writes -----------------------------------------------------------


async def test_state_crud(store: Store) -> None:
    assert await store.get_state("orders/2027-01-01") is None
    value: JsonValue = {"ready": True, "rows": 1_200, "files": ["a.csv", "b.csv"], "note": "é ✓"}
    at = T0 + 7 * US  # microseconds survive the round trip
    created = await store.put_state("orders/2027-01-01", value, now=at)
    assert created == StateEntry(key="orders/2027-01-01", value=value, version=1, updated_at=at)
    assert await store.get_state("orders/2027-01-01") == created

    second = await store.put_state("orders/2027-01-01", None, now=at + MINUTE)
    assert (second.version, second.value, second.updated_at) == (2, None, at + MINUTE)
    # A null value is an entry that exists, not a missing one.
    assert await store.get_state("orders/2027-01-01") == second

    assert await store.delete_state("orders/2027-01-01") is True
    assert await store.get_state("orders/2027-01-01") is None
    assert await store.delete_state("orders/2027-01-01") is False
    assert await entries(store) == []

    # Deleted, then written again: a new entry, from version 1.
    again = await store.put_state("orders/2027-01-01", [1, 2.5, "x", False], now=at)
    assert (again.version, again.value) == (1, [1, 2.5, "x", False])


async def test_state_values_round_trip_as_json(store: Store) -> None:
    values: list[JsonValue] = [
        0,
        -1,
        2**63 - 1,
        1.5,
        "",
        'text with "quotes" and \n newline',
        [],
        {},
        {"nested": [[1, [2]], {"": None, "__x__": True}]},
    ]
    for i, value in enumerate(values):
        await store.put_state(f"v/{i}", value, now=T0)
    assert [e.value for e in await store.list_state(prefix="v/")] == values
    for i, value in enumerate(values):
        got = await store.get_state(f"v/{i}")
        assert got is not None
        assert got.value == value


async def test_create_only_conflicts_when_the_key_exists(store: Store) -> None:
    first = await store.put_state("export:eu", {"ready": False}, now=T0, if_version=0)
    assert first.version == 1
    with pytest.raises(ConflictError) as caught:
        await store.put_state("export:eu", {"ready": True}, now=T0 + MINUTE, if_version=0)
    assert str(caught.value) == "state key 'export:eu' is at version 1 (create only)"
    assert await store.get_state("export:eu") == first


async def test_compare_and_set_on_the_version(store: Store) -> None:
    await store.put_state("k", 1, now=T0)
    second = await store.put_state("k", 2, now=T0 + MINUTE, if_version=1)
    assert (second.version, second.value) == (2, 2)
    assert await store.get_state("k") == second

    for stale in (1, 3):
        with pytest.raises(ConflictError) as caught:
            await store.put_state("k", 99, now=T0 + 2 * MINUTE, if_version=stale)
        assert str(caught.value) == f"state key 'k' is at version 2 (expected version {stale})"
        assert await store.get_state("k") == second  # nothing written

    # A version given for a key that does not exist is a conflict, not a create.
    with pytest.raises(ConflictError) as caught:
        await store.put_state("missing", 1, now=T0, if_version=1)
    assert str(caught.value) == "state key 'missing' does not exist (expected version 1)"
    assert await store.get_state("missing") is None


async def test_delete_with_and_without_a_version(store: Store) -> None:
    await store.put_state("a", "x", now=T0)
    await store.put_state("a", "y", now=T0)
    with pytest.raises(ConflictError) as caught:
        await store.delete_state("a", if_version=1)
    assert str(caught.value) == "state key 'a' is at version 2 (expected version 1)"
    entry = await store.get_state("a")
    assert entry is not None
    assert entry.version == 2

    assert await store.delete_state("a", if_version=2) is True
    assert await store.get_state("a") is None
    with pytest.raises(ConflictError) as caught:
        await store.delete_state("a", if_version=2)
    assert str(caught.value) == "state key 'a' does not exist (expected version 2)"

    with pytest.raises(InvalidInputError, match="if_version must be an integer >= 1"):
        await store.delete_state("a", if_version=0)


@pytest.mark.parametrize("if_version", [-1, True, "1"])
async def test_a_bad_if_version_is_refused(store: Store, if_version: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await store.put_state("k", 1, now=T0, if_version=if_version)
    assert str(caught.value) == (
        f"put_state 'k': if_version must be an integer >= 0, got {if_version!r}"
    )
    assert await store.get_state("k") is None


async def test_list_by_prefix_after_and_limit(store: Store) -> None:
    keys = [
        "orders/2027-01-02",
        "orders",
        "orders/2027-01-01",
        "orders:eu",
        "ordersx",
        "orders/2027-01-01/part-1",
        "other",
        "a",
        "zz",
        "Orders",
        "0rders",
    ]
    for version, key in enumerate(keys, start=1):
        await store.put_state(key, version, now=T0)
    ordered = sorted(keys)  # byte order: digits, capitals, lowercase
    assert [e.key for e in await store.list_state()] == ordered
    assert [e.key for e in await store.list_state(prefix="orders/")] == [
        "orders/2027-01-01",
        "orders/2027-01-01/part-1",
        "orders/2027-01-02",
    ]
    assert [e.key for e in await store.list_state(prefix="orders")] == [
        "orders",
        "orders/2027-01-01",
        "orders/2027-01-01/part-1",
        "orders/2027-01-02",
        "orders:eu",
        "ordersx",
    ]
    assert await entries(store, prefix="orders:") == [("orders:eu", 4, 1)]
    assert await store.list_state(prefix="nothing") == []
    # A prefix no key can start with matches nothing (and is no error).
    assert await store.list_state(prefix="orders%") == []

    # Paging: after is exclusive and need not exist; a page reads its own entries only.
    store.stats.reset()
    page = await store.list_state(prefix="orders", limit=2)
    assert [e.key for e in page] == ["orders", "orders/2027-01-01"]
    assert (store.stats.reads, store.stats.queries) == (2, 1)
    page = await store.list_state(prefix="orders", after=page[-1].key, limit=2)
    assert [e.key for e in page] == ["orders/2027-01-01/part-1", "orders/2027-01-02"]
    page = await store.list_state(prefix="orders", after=page[-1].key, limit=2)
    assert [e.key for e in page] == ["orders:eu", "ordersx"]
    assert await store.list_state(prefix="orders", after="ordersx") == []
    assert await store.list_state(prefix="orders", after="orders~") == []
    # after before the prefix: the prefix bounds the page.
    assert [e.key for e in await store.list_state(prefix="orders/", after="a", limit=1)] == [
        "orders/2027-01-01"
    ]
    assert [e.key for e in await store.list_state(after="other")] == ["zz"]
    assert [e.key for e in await store.list_state(after="ordersa", limit=1)] == ["ordersx"]
    assert await store.list_state(limit=0) == []


async def test_keys_with_every_allowed_character_round_trip(store: Store) -> None:
    keys = [
        "a/b/c",
        "export:eu/2027-01-01T00:00:00Z",
        "__reserved__",
        "__/__",
        "_",
        "x/../y",
        "a/.",
        "A-Z_a-z.0-9",
        "k" * 256,
        "/" * 256,
    ]
    for i, key in enumerate(keys):
        entry = await store.put_state(key, i, now=T0)
        assert await store.get_state(key) == entry
    assert [e.key for e in await store.list_state()] == sorted(keys)
    for key in keys:
        assert await store.delete_state(key, if_version=1) is True
    assert await store.list_state() == []


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "invalid state key is empty"),
        ("a b", "invalid state key 'a b' holds ' ': keys are letters, digits and / _ . : -"),
        ("50%", "invalid state key '50%' holds '%': keys are letters, digits and / _ . : -"),
        ("é", "invalid state key 'é' holds 'é': keys are letters, digits and / _ . : -"),
        ("k\n", "invalid state key 'k\\n' holds '\\n': keys are letters, digits and / _ . : -"),
        ("k" * 257, "invalid state key is 257 characters long; the limit is 256"),
        (".", "invalid state key '.' is not allowed"),
        ("..", "invalid state key '..' is not allowed"),
    ],
)
async def test_a_bad_key_is_refused_and_nothing_is_written(
    store: Store, key: str, message: str
) -> None:
    for call in (
        store.put_state(key, 1, now=T0),
        store.get_state(key),
        store.delete_state(key),
    ):
        with pytest.raises(InvalidInputError) as caught:
            await call
        assert str(caught.value) == message
    assert store.stats.writes == 0
    assert await store.list_state() == []


async def test_a_value_that_is_too_large_or_not_json_is_refused(store: Store) -> None:
    # The limit is on the compact UTF-8 JSON text: a string of n ASCII characters is n + 2.
    largest = "x" * (MAX_VALUE_BYTES - 2)
    assert (await store.put_state("big", largest, now=T0)).value == largest
    got = await store.get_state("big")
    assert got is not None
    assert got.value == largest

    with pytest.raises(InvalidInputError) as caught:
        await store.put_state("big", largest + "x", now=T0 + MINUTE)
    assert str(caught.value) == (
        "state key 'big': value is 65,537 bytes of JSON; the limit is 65,536 (64 KiB)"
    )
    with pytest.raises(InvalidInputError, match=r"^state key 'nan': value is not JSON"):
        await store.put_state("nan", {"x": float("nan")}, now=T0)
    assert await store.get_state("big") == got  # nothing written
    assert [e.key for e in await store.list_state()] == ["big"]


async def test_a_naive_now_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.put_state("k", 1, now=T0.replace(tzinfo=None))
    assert await store.get_state("k") is None


async def test_concurrent_unconditional_writers_get_exact_versions(
    store_factory: Callable[[], Store],
) -> None:
    # Three instances (own connections/clients), as three processes writing one key.
    stores = [store_factory() for _ in range(3)]
    written = await asyncio.gather(
        *(stores[i % 3].put_state("hot", {"writer": i}, now=T0 + i * US) for i in range(10))
    )
    assert sorted(e.version for e in written) == list(range(1, 11))
    final = await stores[0].get_state("hot")
    assert final is not None
    assert final.version == 10
    # The entry is the write that got version 10, whole.
    [last] = [e for e in written if e.version == 10]
    assert final == last


async def test_racing_compare_and_sets_exactly_one_wins(
    store_factory: Callable[[], Store],
) -> None:
    stores = [store_factory() for _ in range(3)]
    await stores[0].put_state("cas", 0, now=T0)
    outcomes = await asyncio.gather(
        *(stores[i % 3].put_state("cas", i, now=T0, if_version=1) for i in range(6)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, StateEntry)]
    assert len(won) == 1
    assert all(isinstance(o, ConflictError) for o in outcomes if o not in won)
    assert await stores[1].get_state("cas") == won[0]


async def test_state_costs(store: Store) -> None:
    store.stats.reset()
    await store.put_state("c", 1, now=T0)
    await store.put_state("c", 2, now=T0)
    await store.put_state("d", 1, now=T0, if_version=0)
    assert (store.stats.writes, store.stats.reads) == (3, 0)  # no read: no conditional read
    await store.get_state("c")
    assert store.stats.reads == 1
    await store.delete_state("d")
    assert store.stats.writes == 4


# -- fenced writes ---------------------------------------------------------------------


async def running(store: Store, run_id: str = "tail@g0000000001") -> Run:
    """A stored running run, as read back (it carries its version)."""
    created = await store.create_run(make_run("tail", T0, run_id=run_id))
    assert created is not None
    started = await store.update_run(
        run_id, [RunState.pending], {"state": RunState.running, "started_at": T0}
    )
    assert started is not None
    assert started.version
    return started


async def test_a_fenced_write_applies_while_its_run_is_unchanged(store: Store) -> None:
    live = await running(store)
    store.stats.reset()
    first = await store.put_state("offset", 1, now=T0, fence=live)
    again = await store.put_state("offset", 2, now=T0, fence=live, if_version=1)
    assert (first.version, again.version, again.value) == (1, 2, 2)
    assert await store.delete_state("offset", fence=live) is True
    assert await store.get_state("offset") is None
    # The fence changes nothing: the run keeps its version, so its attempt's next
    # compare-and-set (a heartbeat) still applies.
    assert await store.get_run(live.id) == live
    assert (await store.get_run(live.id) or live).version == live.version
    beat = await store.update_run(
        live.id, [RunState.running], {"heartbeat_at": T0 + MINUTE}, current=live
    )
    assert beat is not None
    assert store.stats.writes == 4  # three state writes and the heartbeat


async def test_a_fenced_write_is_refused_once_its_run_changed(store: Store) -> None:
    live = await running(store)
    await store.put_state("offset", 1, now=T0)
    lost = await store.update_run(
        live.id, [RunState.running], {"state": RunState.lost, "ended_at": T0 + MINUTE}
    )
    assert lost is not None
    with pytest.raises(
        Fenced, match=r"state 'offset': fenced write refused: run 'tail@g0000000001'"
    ):
        await store.put_state("offset", 2, now=T0, fence=live)
    with pytest.raises(Fenced):
        await store.put_state("offset", 2, now=T0, fence=live, if_version=1)
    with pytest.raises(Fenced):
        await store.put_state("fresh", 2, now=T0, fence=live, if_version=0)
    with pytest.raises(Fenced):
        await store.delete_state("offset", fence=live)
    with pytest.raises(Fenced):
        await store.delete_state("offset", fence=live, if_version=1)
    entry = await store.get_state("offset")
    assert entry is not None
    assert (entry.value, entry.version) == (1, 1)  # nothing written
    assert await store.get_state("fresh") is None
    # The record as it is now fences again; a missing run never does.
    assert (await store.put_state("offset", 3, now=T0, fence=lost)).version == 2
    gone = lost.model_copy(update={"id": "tail@g0000000009"})
    with pytest.raises(Fenced):
        await store.put_state("offset", 4, now=T0, fence=gone)


async def test_a_lost_compare_and_set_under_a_valid_fence_is_a_conflict(store: Store) -> None:
    live = await running(store)
    await store.put_state("offset", 1, now=T0)
    with pytest.raises(ConflictError) as caught:
        await store.put_state("offset", 2, now=T0, fence=live, if_version=5)
    assert not isinstance(caught.value, Fenced)
    with pytest.raises(ConflictError) as caught:
        await store.delete_state("offset", fence=live, if_version=5)
    assert not isinstance(caught.value, Fenced)


async def test_a_fence_without_a_version_is_refused(store: Store) -> None:
    unread = make_run("tail", T0, run_id="tail@g0000000001")
    with pytest.raises(InvalidInputError, match="carries no version"):
        await store.put_state("offset", 1, now=T0, fence=unread)
    assert await store.get_state("offset") is None


# -- the waiting-run index -------------------------------------------------------------


def waiting_run(n: int, key: str | None, *, schedule_id: str = "gate") -> Run:
    """A run of ``schedule_id`` waiting on ``key`` (None: a plain pending run)."""
    at = T0 + n * MINUTE
    if key is None:
        return make_run(schedule_id, at)
    return make_run(
        schedule_id,
        at,
        state=RunState.waiting,
        wait=WAIT,
        wait_key=key,
        wait_until=at + timedelta(hours=6),
    )


async def test_waiting_on_finds_exactly_the_waiters_of_a_key(store: Store) -> None:
    runs = [waiting_run(n, f"orders/{n}") for n in range(50)]
    runs += [waiting_run(100 + n, None) for n in range(10)]
    # Two more on one key, and runs waiting on keys that share its prefix.
    runs += [waiting_run(200, "shared", schedule_id="other"), waiting_run(201, "shared")]
    runs += [waiting_run(202, "orders/7/x"), waiting_run(203, "orders/70")]
    created = await asyncio.gather(*(store.create_run(run) for run in runs))
    assert all(created)

    store.stats.reset()
    [found] = await store.waiting_on("orders/7", 100)
    assert found == runs[7]
    made = created[7]
    assert made is not None
    assert found.version == made.version
    assert (store.stats.queries, store.stats.reads, store.stats.writes) == (1, 1, 0)
    # The version it carries is the one a compare-and-set needs.
    released = await store.update_run(
        found.id, [RunState.waiting], {"wait_key": None, "state": RunState.pending}, current=found
    )
    assert released is not None

    shared = await store.waiting_on("shared", 100)
    assert sorted(r.id for r in shared) == sorted([runs[-4].id, runs[-3].id])
    assert len(await store.waiting_on("shared", 1)) == 1
    assert await store.waiting_on("shared", 0) == []
    store.stats.reset()
    assert await store.waiting_on("nobody/waits", 100) == []
    assert store.stats.queries == 1


async def test_a_run_whose_wait_key_is_cleared_is_no_longer_a_waiter(store: Store) -> None:
    first, second = waiting_run(1, "k"), waiting_run(2, "k")
    created = await store.create_run(first)
    assert created is not None
    assert await store.create_run(second)
    assert len(await store.waiting_on("k", 10)) == 2

    # Cleared with a version compare-and-set (no read) ...
    assert await store.update_run(
        first.id, [RunState.waiting], {"wait_key": None, "state": RunState.pending}, current=created
    )
    assert [r.id for r in await store.waiting_on("k", 10)] == [second.id]
    # ... and with a read-check-write; moving to another key moves it in the index.
    assert await store.update_run(second.id, [RunState.waiting], {"wait_key": "k2"})
    assert await store.waiting_on("k", 10) == []
    [moved] = await store.waiting_on("k2", 10)
    assert (moved.id, moved.wait_key) == (second.id, "k2")
    assert await store.update_run(
        second.id,
        [RunState.waiting],
        {"wait_key": None, "state": RunState.timed_out, "watch_at": None},
    )
    assert await store.waiting_on("k2", 10) == []


async def test_runs_created_by_a_claim_or_a_spawn_are_indexed(store: Store) -> None:
    stored = await store.put_schedule(make_spec("gate"), make_state(T0), expect_version=None)
    gated = waiting_run(0, "orders/2027-01-01")
    assert await store.claim(stored, make_state(T0 + MINUTE), [gated]) == [gated]
    parent = await store.create_run(make_run("etl", T0, run_id="etl@1"))
    assert parent is not None
    task = waiting_run(1, "orders/2027-01-01", schedule_id="etl").model_copy(
        update={"id": "etl@1.wait", "parent_run_id": "etl@1", "task": "wait"}
    )
    spawned = await store.spawn(parent, [RunState.pending], {"state": RunState.running}, [task])
    assert spawned is not None
    waiters = await store.waiting_on("orders/2027-01-01", 10)
    assert sorted(r.id for r in waiters) == sorted([gated.id, task.id])
    assert all(r.version for r in waiters)


# -- SQLite: migrating a database from before waits ------------------------------------


def test_sqlite_migrates_a_database_created_without_the_wait_key_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = make_run("legacy", T0)
    # A record from the version in between, whose runs had the field but the table not.
    between = waiting_run(5, "orders/2027-01-01", schedule_id="legacy")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        # The runs table as firecron created it before issue 14, and no state table.
        conn.execute(
            "CREATE TABLE firecron_runs ("
            " id TEXT PRIMARY KEY, schedule_id TEXT NOT NULL, state TEXT NOT NULL,"
            " created_at INTEGER NOT NULL, watch_at INTEGER,"
            " version INTEGER NOT NULL DEFAULT 1, data TEXT NOT NULL)"
        )
        for run in (old, between):
            conn.execute(
                "INSERT INTO firecron_runs (id, schedule_id, state, created_at, data, version)"
                " VALUES (?, ?, ?, 0, ?, 3)",
                (run.id, run.schedule_id, run.state.value, to_json(run)),
            )
        conn.commit()

    async def use() -> None:
        store = SQLiteStore(path)
        try:
            got = await store.get_run(old.id)
            assert got == old
            assert got is not None
            assert got.version == "3"
            [found] = await store.waiting_on("orders/2027-01-01", 10)
            assert (found.id, found.version) == (between.id, "3")
            entry = await store.put_state("orders/2027-01-01", {"ready": True}, now=T0)
            assert entry.version == 1
            assert await store.update_run(
                between.id, [RunState.waiting], {"wait_key": None}, current=found
            )
            assert await store.waiting_on("orders/2027-01-01", 10) == []
        finally:
            await store.close()
        # Opening again finds everything in place and changes nothing.
        again = SQLiteStore(path)
        try:
            assert await again.get_state("orders/2027-01-01") == entry
        finally:
            await again.close()

    asyncio.run(use())
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(firecron_runs)")]
        assert columns.count("wait_key") == 1
        indexes = {row[1]: row for row in conn.execute("PRAGMA index_list(firecron_runs)")}
        assert indexes["firecron_runs_waiting"][4] == 1  # partial
        plan = " ".join(
            str(row[3])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM firecron_runs WHERE wait_key = ?", ("k",)
            )
        )
        assert "firecron_runs_waiting" in plan
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "firecron_state" in tables


def test_sqlite_reads_an_entry_written_with_the_documented_statement(tmp_path: Path) -> None:
    """docs/design.md, "The state collection's layout": another program's upsert."""
    path = tmp_path / "firecron.db"

    async def create() -> None:
        store = SQLiteStore(path)
        await store.list_state()  # opens the file and creates the tables
        await store.close()

    asyncio.run(create())
    micros = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)) / US)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for value in ('{"ready": false}', '{"ready": true}'):
            conn.execute(
                "INSERT INTO firecron_state (key, value, version, updated_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " version = version + 1, updated_at = excluded.updated_at",
                ("orders/2027-01-01", value, micros),
            )
        conn.commit()

    async def read() -> None:
        store = SQLiteStore(path)
        try:
            entry = await store.get_state("orders/2027-01-01")
            assert entry == StateEntry(
                key="orders/2027-01-01", value={"ready": True}, version=2, updated_at=T0
            )
            assert (await store.put_state(entry.key, 3, now=T0, if_version=2)).version == 3
        finally:
            await store.close()

    asyncio.run(read())
