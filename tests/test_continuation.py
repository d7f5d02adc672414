"""Continuation on both stores, against a real HTTP sink on 127.0.0.1.

A tick that runs out of ``FIRECRON_TICK_BUDGET`` with work still due continues at once
(``Dispatcher.tick_chain``, ``firecron tick``'s loop), at most
``FIRECRON_MAX_CONTINUATIONS`` times; a continuation that finds nothing due ends the
chain; the summary counts the continuations. A zero budget makes every tick stop after
its first page, so the count of continuations is exact, not timed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from _factories import T0
from _sinks import serve
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.shards import Shard
from firecron.dispatch import Dispatcher, TickSummary
from firecron.errors import InvalidInputError
from firecron.settings import Settings
from firecron.store.base import ScheduleWrite, Store

N = 50
PAGE = 10


def _settings(max_continuations: int) -> Settings:
    return Settings(
        allow_private_targets=True,
        ack_timeout=timedelta(seconds=2),
        tick_budget=timedelta(0),  # every tick stops after its first page
        max_continuations=max_continuations,
    )


async def _seed(store: Store, url: str) -> None:
    writes = []
    for i in range(N):
        spec = ScheduleSpec.model_validate(
            {"id": f"job-{i:03d}", "every": "1h", "target": {"url": url}}
        )
        writes.append(
            ScheduleWrite(spec, planning.initial_state(spec, T0 - timedelta(seconds=1)), None)
        )
    assert all(await store.write_schedules(writes))


async def _chain(
    store_factory: Callable[[], Store], max_continuations: int, shard: Shard | None = None
) -> tuple[TickSummary, Counter[str]]:
    with serve() as sink:
        await _seed(store_factory(), sink.url + "/hook")
        dispatcher = Dispatcher(store_factory(), _settings(max_continuations))
        dispatcher.page_size = PAGE
        try:
            summary = await dispatcher.tick_chain(T0 + timedelta(seconds=5), shard=shard)
        finally:
            await dispatcher.aclose()
        fired = Counter(json.loads(r.body)["schedule_id"] for r in sink.requests)
    return summary, fired


async def test_a_tick_out_of_budget_continues_until_nothing_is_due(
    store_factory: Callable[[], Store],
) -> None:
    summary, fired = await _chain(store_factory, max_continuations=100)
    assert len(fired) == N
    assert set(fired.values()) == {1}
    # Five full pages, each stopping at the budget; the sixth tick finds nothing due
    # and ends the chain.
    assert summary.continuations == N // PAGE
    assert summary.claimed == summary.fired == N
    assert summary.pages == N // PAGE
    assert summary.more_due is False
    assert summary.as_dict()["continuations"] == N // PAGE


@pytest.mark.parametrize("bound", [0, 2])
async def test_continuations_are_bounded(store_factory: Callable[[], Store], bound: int) -> None:
    summary, fired = await _chain(store_factory, max_continuations=bound)
    assert summary.continuations == bound
    assert summary.fired == len(fired) == (bound + 1) * PAGE
    assert set(fired.values()) == {1}
    assert summary.more_due is True  # the next tick (the next minute's) goes on


async def test_a_shard_tick_continues_within_its_shard(
    store_factory: Callable[[], Store],
) -> None:
    shard = Shard(0, 2)
    summary, fired = await _chain(store_factory, max_continuations=100, shard=shard)
    mine = {f"job-{i:03d}" for i in range(N) if shard.owns(f"job-{i:03d}")}
    assert set(fired) == mine
    assert set(fired.values()) == {1}
    # Full pages each continue; a short page (or an empty tick after a full one) ends.
    assert summary.continuations == len(mine) // PAGE


def test_max_continuations_setting() -> None:
    assert Settings.from_env({}).max_continuations == 10
    assert Settings.from_env({"FIRECRON_MAX_CONTINUATIONS": "0"}).max_continuations == 0
    with pytest.raises(InvalidInputError, match="FIRECRON_MAX_CONTINUATIONS"):
        Settings.from_env({"FIRECRON_MAX_CONTINUATIONS": "-1"})
    assert Settings.from_env({"FIRECRON_SHARDS": "4"}).shards == 4
    with pytest.raises(InvalidInputError, match="FIRECRON_SHARDS"):
        Settings.from_env({"FIRECRON_SHARDS": "61"})
