"""The deployed ``dispatch`` entry point's scale-out, served by functions-framework.

A root call with ``FIRECRON_SHARDS=N`` POSTs N one-way shard ticks to dispatch itself;
a tick out of its budget with work still due POSTs its continuation to itself. Both
stores; the targets are a real HTTP sink. Without ``FIRECRON_DISPATCH_AUDIENCE`` (local)
dispatch calls its own URL unauthenticated; the OIDC path is the scheduler's, tested in
``tests/test_oidc.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx

from _backend import Backend
from _poll import poll
from _sinks import Sink, serve
from _workers import serve_worker
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.store.base import ScheduleWrite


async def _seed(backend: Backend, n: int, url: str) -> None:
    """``n`` one-shot schedules due 10 s ago by the real clock (dispatch ticks at its own now)."""
    now = datetime.now(UTC).replace(microsecond=0)
    at = (now - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    writes = []
    for i in range(n):
        spec = ScheduleSpec.model_validate({"id": f"job-{i:04d}", "at": at, "target": {"url": url}})
        writes.append(
            ScheduleWrite(spec, planning.initial_state(spec, now - timedelta(seconds=20)), None)
        )
    for start in range(0, n, 500):
        assert all(await backend.store.write_schedules(writes[start : start + 500]))


def _fired(sink: Sink) -> Counter[str]:
    return Counter(json.loads(r.body)["schedule_id"] for r in sink.requests)


async def test_a_root_call_fans_out_one_shard_tick_per_shard(backend: Backend) -> None:
    n = 60
    # Seeded once dispatch is up: its readiness probe (a GET) is a root call too.
    with serve() as sink, serve_worker("dispatch", env=backend.env(FIRECRON_SHARDS="3")) as proc:
        await _seed(backend, n, sink.url + "/hook")
        refused = httpx.post(proc.url + "?shard=3", timeout=30)
        assert refused.status_code == 400
        assert refused.json() == {"error": "shard=3: must be 0 to 2"}
        assert sink.requests == []
        root = httpx.post(proc.url, timeout=60)
        assert root.status_code == 200, root.text
        body = root.json()
        assert body["shards"] == 3
        assert body["errors"] == []
        assert len(body["outcomes"]) == 3
        fired = poll(lambda: _fired(sink), lambda c: len(c) >= n, what="sends of every job")
    assert set(fired) == {f"job-{i:04d}" for i in range(n)}
    assert set(fired.values()) == {1}


async def test_a_tick_out_of_budget_posts_its_continuation(backend: Backend) -> None:
    n = 1200  # pages of 500: the root and two continuations
    env = backend.env(FIRECRON_TICK_BUDGET="1ms")  # each tick stops after one page
    with serve() as sink, serve_worker("dispatch", env=env) as proc:
        await _seed(backend, n, sink.url + "/hook")
        root = httpx.post(proc.url, timeout=120)
        assert root.status_code == 200, root.text
        body = root.json()
        assert body["continuation"] == 0
        assert body["more_due"] is True
        assert body["continuations"] == 1
        assert body["claimed"] == 500
        fired = poll(lambda: _fired(sink), lambda c: len(c) >= n, what="sends of every job")
        # The chain ended: a root call now finds nothing due and continues no more.
        last = httpx.post(proc.url, timeout=60).json()
    assert last["due"] == 0
    assert last["continuations"] == 0
    assert len(fired) == n
    assert set(fired.values()) == {1}
