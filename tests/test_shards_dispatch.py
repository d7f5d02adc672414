"""Shard ticks on both stores, against a real HTTP sink on 127.0.0.1.

N shard ticks together do what one tick does; each claims only its own schedules; and
changing N in the middle of a run of ticks, with ticks of the old and the new N
overlapping, fires every occurrence exactly once (claims are compare-and-sets).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from _factories import T0
from _sinks import Sink, serve
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.shards import Shard
from firecron.dispatch import Dispatcher, TickSummary
from firecron.settings import Settings
from firecron.store.base import ScheduleWrite, Store

MINUTE = timedelta(minutes=1)
N_SCHEDULES = 60


def _settings() -> Settings:
    return Settings(allow_private_targets=True, ack_timeout=timedelta(seconds=2))


async def _seed(store: Store, url: str) -> list[str]:
    """Schedules firing every minute from T0; returns their ids."""
    writes = []
    for i in range(N_SCHEDULES):
        spec = ScheduleSpec.model_validate(
            {"id": f"job-{i:03d}", "every": "1m", "target": {"url": url}}
        )
        state = planning.initial_state(spec, T0 - timedelta(seconds=1))
        assert state.next_fire_at == T0
        writes.append(ScheduleWrite(spec, state, None))
    assert all(await store.write_schedules(writes))
    return [w.spec.id for w in writes]


def _fired(sink: Sink) -> Counter[tuple[str, str]]:
    """(schedule id, scheduled_for) of every request the sink received, counted."""
    out: Counter[tuple[str, str]] = Counter()
    for request in sink.requests:
        body = json.loads(request.body)
        out[(body["schedule_id"], body["scheduled_for"])] += 1
    return out


async def _ticks(
    store_factory: Callable[[], Store], at: timedelta, shards: list[Shard | None]
) -> list[TickSummary]:
    """Concurrent ticks at ``T0 + at``, one per entry of ``shards``, each on its own
    store instance and dispatcher (as separate instances would be), with small pages
    so each tick reads several."""
    dispatchers = [Dispatcher(store_factory(), _settings()) for _ in shards]
    for d in dispatchers:
        d.page_size = 7
    try:
        return list(
            await asyncio.gather(
                *(d.tick(T0 + at, shard=s) for d, s in zip(dispatchers, shards, strict=True))
            )
        )
    finally:
        await asyncio.gather(*(d.aclose() for d in dispatchers))


async def test_each_shard_tick_claims_its_own_schedules_and_together_all(
    store_factory: Callable[[], Store],
) -> None:
    with serve() as sink:
        ids = await _seed(store_factory(), sink.url + "/hook")
        seen: set[str] = set()
        for index in range(3):
            shard = Shard(index, 3)
            before = len(sink.requests)
            [summary] = await _ticks(store_factory, timedelta(seconds=5), [shard])
            mine = {json.loads(r.body)["schedule_id"] for r in sink.requests[before:]}
            assert mine == {i for i in ids if shard.owns(i)}
            assert summary.claimed == summary.fired == len(mine)
            assert summary.shard == f"{index}/3"
            assert summary.as_dict()["shard"] == f"{index}/3"
            seen |= mine
        fired = _fired(sink)
    assert seen == set(ids)
    assert set(fired.values()) == {1}


async def test_re_sharding_in_the_middle_of_a_run_of_ticks_doubles_and_loses_nothing(
    store_factory: Callable[[], Store],
) -> None:
    def every(count: int) -> list[Shard | None]:
        return [Shard(i, count) for i in range(count)]

    plan: list[list[Shard | None]] = [
        every(2),
        every(2),
        every(2) + every(3),  # the change: old and new shard ticks overlap
        every(3),
        [*every(3), None],  # an unsharded tick overlapping too
        every(4),
        every(1),
    ]
    with serve() as sink:
        ids = await _seed(store_factory(), sink.url + "/hook")
        for minute, shards in enumerate(plan):
            await _ticks(store_factory, minute * MINUTE + timedelta(seconds=5), shards)
        fired = _fired(sink)
    expected = {
        (schedule_id, (T0 + minute * MINUTE).isoformat().replace("+00:00", "Z"))
        for schedule_id in ids
        for minute in range(len(plan))
    }
    assert set(fired) == expected  # nothing lost
    assert set(fired.values()) == {1}  # nothing doubled
