"""The deployed ``dispatch`` entry point's scale-out, served by functions-framework.

A root call with ``FIRECRON_SHARDS=N`` POSTs N one-way shard ticks to dispatch itself;
a tick out of its budget with work still due POSTs its continuation to itself. Both
stores; the targets are a real HTTP sink. Without ``FIRECRON_DISPATCH_AUDIENCE`` (local)
dispatch calls its own URL unauthenticated; the OIDC path is the scheduler's, tested in
``tests/test_oidc.py``. With a queue (as deployed) the same calls are Cloud Tasks tasks,
sent by the real ``gcloud-tasks-emulator``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from _backend import Backend
from _poll import poll
from _sinks import Sink, serve
from _tasks_emulator import QUEUE, tasks_emulator_or_skip
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


# -- through Cloud Tasks: how a deployed dispatch reaches itself past its internal ingress


@pytest.fixture(scope="module")
def tasks_host() -> Iterator[str]:
    """``localhost:PORT`` of a Cloud Tasks emulator shared by this module's tests."""
    with tasks_emulator_or_skip() as host:
        yield host


def _queued_env(backend: Backend, tasks_host: str, **extra: str) -> dict[str, str]:
    return backend.env(FIRECRON_TASKS_QUEUE=QUEUE, CLOUD_TASKS_EMULATOR_HOST=tasks_host, **extra)


def _ticks_by_task(logs: str) -> list[dict[str, Any]]:
    """The tick lines of dispatch's log that a Cloud Tasks task started."""
    lines = []
    for raw in logs.splitlines():
        _, sep, payload = raw.partition("dispatch: {")
        if sep:
            line = json.loads("{" + payload)
            if "task" in line:
                lines.append(line)
    return lines


async def test_with_a_queue_the_fan_out_goes_through_cloud_tasks(
    backend: Backend, tasks_host: str
) -> None:
    n = 60
    env = _queued_env(backend, tasks_host, FIRECRON_SHARDS="3")
    with serve() as sink, serve_worker("dispatch", env=env) as proc:
        await _seed(backend, n, sink.url + "/hook")
        root = httpx.post(proc.url, timeout=60)
        assert root.status_code == 200, root.text
        assert root.json()["outcomes"] == ["unacknowledged"] * 3
        fired = poll(lambda: _fired(sink), lambda c: len(c) >= n, what="sends of every job")
        ticks = poll(
            lambda: _ticks_by_task(proc.logs()), lambda t: len(t) >= 3, what="3 shard ticks"
        )
    assert set(fired) == {f"job-{i:04d}" for i in range(n)}
    assert set(fired.values()) == {1}
    # The readiness probe (a GET) was a root call too: its 3 shard ticks may be among them.
    assert sorted({t["shard"] for t in ticks}) == ["0/3", "1/3", "2/3"]
    # A fresh name each: 8 hex digits of its hash, then dispatch- and a random id.
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-dispatch-[0-9a-f]{32}", t["task"].split("/")[-1]) for t in ticks
    )


async def test_with_a_queue_a_continuation_goes_through_cloud_tasks(
    backend: Backend, tasks_host: str
) -> None:
    n = 1200
    env = _queued_env(backend, tasks_host, FIRECRON_TICK_BUDGET="1ms")
    with serve() as sink, serve_worker("dispatch", env=env) as proc:
        await _seed(backend, n, sink.url + "/hook")
        root = httpx.post(proc.url, timeout=120)
        assert root.status_code == 200, root.text
        assert root.json()["continuations"] == 1
        fired = poll(lambda: _fired(sink), lambda c: len(c) >= n, what="sends of every job")
        ticks = poll(
            lambda: _ticks_by_task(proc.logs()),
            lambda t: len(t) >= 2,
            what="the continuations, started by Cloud Tasks",
        )
    assert len(fired) == n
    assert set(fired.values()) == {1}
    assert sorted(t["continuation"] for t in ticks)[:2] == [1, 2]
