"""Shards in the store: the due and watch queries of one shard, on both backends.

The contract (``Store.due_schedules`` / ``Store.due_watches`` with ``shard``): shard
``i`` of ``N`` returns exactly the due records whose bucket it owns, in the unsharded
order, in one query; the shards of any N partition the unsharded answer. Plus the pure
rules of ``firecron.core.shards``.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from google.cloud import firestore

from _factories import MINUTE, T0, make_run, make_spec, make_state
from firecron.core.runs import RunState
from firecron.core.shards import BUCKETS, MAX_SHARDS, Shard, bucket_of, parse_shard
from firecron.errors import InvalidInputError
from firecron.store.base import ScheduleWrite, Store
from firecron.store.sqlite import SQLiteStore, _due_query

US = timedelta(microseconds=1)
IDS = [f"job-{n:02d}" for n in range(40)]


def test_bucket_is_a_stable_hash_of_the_id() -> None:
    # Golden values: every process and every version must agree on a record's bucket.
    assert (
        bucket_of("a")
        == int.from_bytes(
            bytes.fromhex("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb")[:8],
            "big",
        )
        % BUCKETS
    )
    assert {bucket_of(i) for i in IDS} <= set(range(BUCKETS))
    # 40 ids spread over more than a handful of buckets (a constant hash would fail).
    assert len({bucket_of(i) for i in IDS}) > 10


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 30, MAX_SHARDS])
def test_the_shards_of_any_count_partition_the_buckets(count: int) -> None:
    owned = [Shard(i, count).buckets() for i in range(count)]
    assert sorted(b for buckets in owned for b in buckets) == list(range(BUCKETS))
    # Firestore takes at most 30 values in one `in` filter; count 1 does not filter.
    assert count == 1 or max(len(buckets) for buckets in owned) <= 30
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    for schedule_id in IDS:
        assert [Shard(i, count).owns(schedule_id) for i in range(count)].count(True) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", "shard: expected I/N (such as 0/4), got '1'"),
        ("a/2", "shard: expected I/N (such as 0/4), got 'a/2'"),
        ("2/2", "shard: index must be 0 to 1, got 2"),
        ("0/0", f"shards: must be 1 to {MAX_SHARDS}, got 0"),
        (f"0/{MAX_SHARDS + 1}", f"shards: must be 1 to {MAX_SHARDS}, got {MAX_SHARDS + 1}"),
    ],
)
def test_a_bad_shard_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_shard(text)
    assert str(caught.value) == message


def test_parse_shard() -> None:
    assert parse_shard(" 3/4 ") == Shard(3, 4)
    assert str(Shard(0, 1)) == "0/1"


async def _put_many(store: Store) -> list[str]:
    """Forty schedules due at distinct and tied times, one idle, one not yet due.

    Returns the ids in the unsharded due order at ``T0``.
    """
    writes = [
        ScheduleWrite(
            make_spec(schedule_id),
            make_state(T0 - timedelta(minutes=n % 7)),  # ties: ordered by id
            None,
        )
        for n, schedule_id in enumerate(IDS)
    ]
    writes.append(ScheduleWrite(make_spec("idle"), make_state(None), None))
    writes.append(ScheduleWrite(make_spec("later"), make_state(T0 + US), None))
    assert all(await store.write_schedules(writes))
    return [s.id for s in await store.due_schedules(T0, 100)]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
async def test_the_shards_due_schedules_partition_the_due_ones_in_order(
    store: Store, count: int
) -> None:
    everything = await _put_many(store)
    assert sorted(everything) == IDS
    seen: list[str] = []
    for index in range(count):
        shard = Shard(index, count)
        store.stats.reset()
        due = [s.id for s in await store.due_schedules(T0, 100, shard=shard)]
        assert store.stats.queries == 1
        assert store.stats.reads == len(due)
        # The unsharded order, restricted to the shard's own schedules.
        assert due == [i for i in everything if shard.owns(i)]
        # A limit cuts the same order.
        assert [s.id for s in await store.due_schedules(T0, 2, shard=shard)] == due[:2]
        seen += due
    assert sorted(seen) == IDS


async def test_a_schedule_keeps_its_shard_through_every_write(store: Store) -> None:
    await _put_many(store)
    target = "job-07"
    shard = next(Shard(i, 4) for i in range(4) if Shard(i, 4).owns(target))
    others = [Shard(i, 4) for i in range(4) if i != shard.index]

    async def owners() -> list[Shard]:
        found = []
        for candidate in [shard, *others]:
            due = await candidate_due(candidate)
            if target in due:
                found.append(candidate)
        return found

    async def candidate_due(candidate: Shard) -> list[str]:
        return [s.id for s in await store.due_schedules(T0 + MINUTE, 100, shard=candidate)]

    stored = await store.get_schedule(target)
    assert stored is not None
    # Replaced (a CAS), claimed, and written again in a batch: always the same shard.
    stored = await store.put_schedule(stored.spec, make_state(T0), expect_version=stored.version)
    assert await owners() == [shard]
    run = make_run(target, T0)
    assert await store.claim(stored, make_state(T0 + MINUTE), [run]) is not None
    assert await owners() == [shard]
    stored = await store.get_schedule(target)
    assert stored is not None
    [written] = await store.write_schedules(
        [ScheduleWrite(stored.spec, make_state(T0), stored.version)]
    )
    assert written is not None
    assert await owners() == [shard]
    # Its run is watched by the same shard.
    assert [r.id for r in await store.due_watches(T0 + MINUTE, 100, shard=shard)] == [run.id]
    for other in others:
        assert await store.due_watches(T0 + MINUTE, 100, shard=other) == []


@pytest.mark.parametrize("count", [2, 3])
async def test_the_shards_due_watches_partition_the_due_runs_in_order(
    store: Store, count: int
) -> None:
    runs = [
        make_run(schedule_id, T0, watch_at=T0 - timedelta(minutes=n % 5))
        for n, schedule_id in enumerate(IDS)
    ]
    runs.append(make_run("ended", T0, state=RunState.succeeded))  # terminal: never read
    runs.append(make_run("later", T0, watch_at=T0 + US))
    for run in runs:
        assert await store.create_run(run)
    everything = await store.due_watches(T0, 100)
    assert len(everything) == len(IDS)
    seen: list[str] = []
    for index in range(count):
        shard = Shard(index, count)
        store.stats.reset()
        due = await store.due_watches(T0, 100, shard=shard)
        assert store.stats.queries == 1
        assert store.stats.reads == len(due)
        assert due == [r for r in everything if shard.owns(r.schedule_id)]
        assert all(shard.owns(r.schedule_id) for r in due)
        assert await store.due_watches(T0, 1, shard=shard) == due[:1]
        # An update (a heartbeat moving the watch) keeps the run in its shard.
        if due:
            moved = await store.update_run(
                due[0].id, [RunState.pending], {"watch_at": T0 - timedelta(hours=1)}
            )
            assert moved is not None
            assert (await store.due_watches(T0, 1, shard=shard))[0].id == due[0].id
        seen += [r.id for r in due]
    assert sorted(seen) == sorted(r.id for r in everything)


async def test_a_database_from_before_shards_gets_its_buckets(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # The tables as the version before shards created them, with one due schedule.
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE firecron_schedules (id TEXT PRIMARY KEY, spec TEXT NOT NULL,"
        " state TEXT NOT NULL, next_fire_at INTEGER, version INTEGER NOT NULL);"
        "CREATE TABLE firecron_runs (id TEXT PRIMARY KEY, schedule_id TEXT NOT NULL,"
        " state TEXT NOT NULL, created_at INTEGER NOT NULL, watch_at INTEGER,"
        " version INTEGER NOT NULL DEFAULT 1, data TEXT NOT NULL, wait_key TEXT);"
    )
    conn.close()
    fresh = SQLiteStore(tmp_path / "fresh.db")
    await fresh.put_schedule(make_spec("job-07"), make_state(T0), expect_version=None)
    source = sqlite3.connect(tmp_path / "fresh.db")
    row = source.execute(
        "SELECT id, spec, state, next_fire_at, version FROM firecron_schedules"
    ).fetchone()
    source.close()
    await fresh.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO firecron_schedules VALUES (?, ?, ?, ?, ?)", row)
    conn.commit()
    conn.close()

    store = SQLiteStore(path)
    try:
        owner = next(Shard(i, 4) for i in range(4) if Shard(i, 4).owns("job-07"))
        for index in range(4):
            due = await store.due_schedules(T0, 10, shard=Shard(index, 4))
            assert [s.id for s in due] == (["job-07"] if index == owner.index else [])
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("table", "columns", "time_column", "index"),
    [
        ("firecron_schedules", "id, spec, state, version", "next_fire_at", "due_by_bucket"),
        ("firecron_runs", "id, data, version", "watch_at", "watch_by_bucket"),
    ],
)
async def test_a_sharded_sqlite_due_query_reads_only_its_buckets_index_ranges(
    tmp_path: Path, table: str, columns: str, time_column: str, index: str
) -> None:
    store = SQLiteStore(tmp_path / "plan.db")
    await store.put_schedule(make_spec("job-00"), make_state(T0), expect_version=None)
    await store.close()
    sql, params = _due_query(table, columns, time_column, 0, 500, Shard(1, 4))
    conn = sqlite3.connect(tmp_path / "plan.db")
    try:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()
    searches = [step for step in plan if step.startswith(("SEARCH", "SCAN")) and table in step]
    # One covering range per owned bucket, then a fetch by primary key: never a scan.
    assert len(searches) == len(Shard(1, 4).buckets()) + 1, plan
    assert all(f"COVERING INDEX {table}_{index} (bucket=?" in s for s in searches[:-1]), plan
    assert "(id=?)" in searches[-1], plan


# Firestore only: SQLite fills the column when it opens the database (the test above).
@pytest.mark.parametrize(
    "store_factory", [pytest.param("firestore", marks=pytest.mark.emulator)], indirect=True
)
async def test_a_firestore_document_from_before_shards_gets_its_bucket_at_its_claim(
    store: Store,
) -> None:
    """Until its next write only an unsharded query sees it; a claim writes the bucket."""
    from firecron.store.firestore import FirestoreStore

    assert isinstance(store, FirestoreStore)
    await store.put_schedule(make_spec("job-07"), make_state(T0), expect_version=None)
    ref = store._schedules().document("job-07")
    await ref.update({"bucket": firestore.DELETE_FIELD})  # as a version before shards wrote it
    owner = next(Shard(i, 4) for i in range(4) if Shard(i, 4).owns("job-07"))
    assert await store.due_schedules(T0, 10, shard=owner) == []
    [unsharded] = await store.due_schedules(T0, 10)
    assert await store.claim(unsharded, make_state(T0 + MINUTE), [make_run("job-07", T0)])
    assert [s.id for s in await store.due_schedules(T0 + MINUTE, 10, shard=owner)] == ["job-07"]
