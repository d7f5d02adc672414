"""Waits on the state collection, on both stores: gates, wait tasks and wait targets.

Targets are plain endpoints on 127.0.0.1 unless a worker is the point; ticks are given
their instant. Writes go through ``firecron.State`` (in this process or another), the
CLI (``tests/test_state_cli.py``), a worker's ``ctx.state``, or straight into the store.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _backend import Backend
from _factories import T0, store_schedule
from _poll import wait_run
from _sinks import serve
from _workers import serve_worker
from firecron import State
from firecron.core import planning
from firecron.core.runs import Run, RunState, RunTrigger, task_run_id
from firecron.core.waits import render_key
from firecron.dispatch import TickSummary
from firecron.errors import ConflictError, InvalidInputError
from firecron.store.base import Store

APP = Path(__file__).resolve().with_name("_orchestration_app.py")


@pytest.fixture(autouse=True)
def _private_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    # firecron.State reads its settings from the environment, as a program would.
    monkeypatch.setenv("FIRECRON_ALLOW_PRIVATE_TARGETS", "1")


@pytest.fixture
def state(backend: Backend) -> Iterator[State]:
    opened = State(backend.url, namespace=backend.namespace)
    yield opened
    opened.close()


async def tick(backend: Backend, at: datetime) -> TickSummary:
    d = backend.dispatcher()
    d.clock = lambda: at
    try:
        summary = await d.tick(at)
    finally:
        await d.aclose()
    assert not summary.errors, summary.errors
    return summary


async def only_run(store: Store, schedule_id: str) -> Run:
    runs = [r for r in await store.list_runs(schedule_id=schedule_id, limit=50) if r.task is None]
    assert len(runs) == 1, runs
    return runs[0]


def gate(**overrides: Any) -> dict[str, Any]:
    # `value` is null while the key is missing: the guard keeps `.rows` from erring then.
    until = "value != null && value.rows > 0"
    return {"key": "orders/{region}/{date}", "until": until, "every": "10m", **overrides}


async def gated_run(
    backend: Backend,
    now: datetime,
    schedule_id: str,
    target: dict[str, Any],
    params: dict[str, Any] | None = None,
    **wait: Any,
) -> Run:
    """An hourly schedule (``params``, default ``{"region": "eu"}``) gated by :func:`gate`
    with ``wait`` overrides, due at ``now``; a tick at ``now`` creates its waiting run,
    returned."""
    await store_schedule(
        backend.store,
        now,
        id=schedule_id,
        every="1h",
        params={"region": "eu"} if params is None else params,
        wait=gate(**wait),
        target=target,
    )
    await tick(backend, now)
    run = await only_run(backend.store, schedule_id)
    assert run.state is RunState.waiting
    return run


# -- templates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "date"),
    [("Europe/Berlin", "2027-01-05"), ("America/New_York", "2027-01-04"), ("UTC", "2027-01-04")],
)
def test_date_is_the_occurrence_s_date_in_the_schedule_s_zone(zone: str, date: str) -> None:
    at = datetime(2027, 1, 4, 23, 30, tzinfo=UTC)  # past midnight in Berlin, not in New York
    key = render_key("orders/{region}/{date}", {"region": "eu"}, at, zone)
    assert key == f"orders/eu/{date}"
    assert render_key("t:{scheduled_for}", {}, at, zone) == "t:2027-01-04T23:30:00Z"
    assert render_key("n/{n}", {"n": 7}, at, zone) == "n/7"


@pytest.mark.parametrize(
    ("template", "params", "fragment"),
    [
        ("orders/{region}", {}, "no param 'region'"),
        ("orders/{flag}", {"flag": True}, "param 'flag' is a boolean"),
        ("orders/{name}", {"name": "a b"}, "holds ' '"),
    ],
)
def test_a_key_that_cannot_be_rendered_is_one_line(
    template: str, params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError, match="wait key") as info:
        render_key(template, params, T0, "UTC")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# -- gates ------------------------------------------------------------------------------


async def test_a_gated_occurrence_waits_holding_nothing_and_a_state_write_releases_it(
    backend: Backend, state: State
) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="load",
            every="1h",
            timezone="Asia/Tokyo",
            params={"region": "eu"},
            wait=gate(),
            target={"url": sink.url + "/load"},
        )
        first = await tick(backend, now)
        run = await only_run(backend.store, "load")
        key = render_key(
            "orders/{region}/{date}", {"region": "eu"}, run.scheduled_for, "Asia/Tokyo"
        )
        assert run.state is RunState.waiting
        assert run.wait_key == key
        assert first.released == 0
        assert sink.received == 0
        # A value the condition refuses: still waiting, and the value is remembered.
        await asyncio.to_thread(state.set, key, {"rows": 0})
        looked = await backend.store.get_run(run.id)
        assert looked is not None
        assert looked.state is RunState.waiting
        assert looked.wait_value == {"rows": 0}
        # The value it waits for: released and fired before `set` returns.
        await asyncio.to_thread(state.set, key, {"rows": 1200})
        assert sink.received == 1
        done = await backend.store.get_run(run.id)
        assert done is not None
        assert done.state is RunState.delivered
        assert done.wait_key is None
        assert done.wait_value == {"rows": 1200}
        # Nothing more happens at the next tick.
        later = await tick(backend, now + timedelta(minutes=20))
        assert later.fired == 0
        assert sink.received == 1


async def test_the_watchdog_finds_a_value_written_directly_in_the_store(
    backend: Backend,
) -> None:
    """A write that bypasses firecron releases nothing by itself; the next look does."""
    now = datetime.now(UTC)
    with serve() as sink:
        run = await gated_run(
            backend, now, "poll", {"url": sink.url + "/poll"}, {"region": "us"}, every="30s"
        )
        assert run.wait_key is not None
        await write_directly(backend, run.wait_key, '{"rows": 3}')
        early = await tick(backend, now + timedelta(seconds=10))  # not due to look yet
        assert early.released == 0
        assert sink.received == 0
        late = await tick(backend, now + timedelta(seconds=31))
        assert late.waits_looked == 1
        assert late.released == 1
        assert sink.received == 1


async def write_directly(backend: Backend, key: str, value_json: str) -> None:
    """Write an entry as another program would, following docs/design.md's layout."""
    entry_time = datetime.now(UTC)
    if backend.url.startswith("sqlite:///"):
        import sqlite3

        path = backend.url.removeprefix("sqlite:///")
        micros = int(entry_time.timestamp() * 1_000_000)
        with sqlite3.connect(path) as db:
            db.execute(
                f"INSERT INTO {backend.namespace}_state (key, value, version, updated_at) "
                "VALUES (?, ?, 1, ?)",
                (key, value_json, micros),
            )
        return
    from google.cloud import firestore

    from firecron.store._firestore_private import close_client

    client = firestore.AsyncClient(project=backend.url.removeprefix("firestore://"))
    try:
        doc = client.collection(f"{backend.namespace}_state").document(key.replace("/", "%2F"))
        await doc.set({"key": key, "value": value_json, "version": 1, "updated_at": entry_time})
    finally:
        await close_client(client)


async def test_overlap_applies_to_waiting_runs(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="gated",
            every="1m",
            params={"region": "eu"},
            wait=gate(key="ready/{scheduled_for}"),
            target={"url": sink.url + "/g", "worker": True},
            overlap="skip",
        )
        await tick(backend, now)
        second = await tick(backend, now + timedelta(minutes=1))
    assert second.skipped == 1
    states = sorted(r.state.value for r in await backend.store.list_runs(schedule_id="gated"))
    assert states == ["skipped", "waiting"]


async def test_a_manual_trigger_waits_unless_told_not_to(backend: Backend, state: State) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="manual",
            params={"region": "eu"},
            wait=gate(key="flag/{region}", until="value == true"),
            target={"url": sink.url + "/m"},
        )
        d = backend.dispatcher()
        try:
            held = await d.trigger("manual")
            assert held.state is RunState.waiting
            assert held.wait_key == "flag/eu"
            assert held.trigger is RunTrigger.manual
            at_once = await d.trigger("manual", gate=False)
            assert at_once.state is RunState.delivered
            assert sink.received == 1
            await asyncio.to_thread(state.set, "flag/eu", True)
            assert sink.received == 2
            with pytest.raises(InvalidInputError, match="param 'region' is null"):
                await d.trigger("manual", {"region": None})
        finally:
            await d.aclose()


async def test_a_condition_that_cannot_be_evaluated_fails_the_run_unretried(
    backend: Backend, state: State
) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        run = await gated_run(backend, now, "typed", {"url": sink.url + "/t"}, key="typed")
        await asyncio.to_thread(state.set, "typed", "not a map")
        failed = await backend.store.get_run(run.id)
        assert sink.received == 0
    assert failed is not None
    assert failed.state is RunState.failed
    assert failed.error is not None
    assert failed.error.startswith("wait on typed until value != null && value.rows > 0: ")
    assert "\n" not in failed.error
    assert failed.attempts == []
    assert failed.wait_key is None


async def test_a_wait_target_succeeds_when_released_and_chains(
    backend: Backend, state: State
) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store, now, id="after-ready", target={"url": sink.url + "/after"}
        )
        await store_schedule(
            backend.store,
            now,
            id="ready",
            every="1h",
            target={"wait": {"key": "export/done"}},
            then=[{"schedule": "after-ready"}],
        )
        await tick(backend, now)
        run = await only_run(backend.store, "ready")
        assert run.state is RunState.waiting
        await asyncio.to_thread(state.set, "export/done", {"at": "now"})
        assert [r.path for r in sink.requests] == ["/after"]
    done = await backend.store.get_run(run.id)
    assert done is not None
    assert done.state is RunState.succeeded


# -- pipelines -------------------------------------------------------------------------


async def test_a_wait_task_times_out_and_the_error_path_runs(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        await store_schedule(
            backend.store,
            now,
            id="etl",
            every="1h",
            params={"region": "eu"},
            pipeline={
                "id": "waiting-etl",
                "tasks": [
                    {
                        "id": "ready",
                        "wait": {"key": "orders/{date}", "every": "30s", "timeout": "1m"},
                    },
                    {"id": "load", "target": {"url": sink.url + "/load"}, "after": ["ready"]},
                    {
                        "id": "alert",
                        "target": {"url": sink.url + "/alert"},
                        "after": ["load"],
                        "when": "any_failed",
                    },
                ],
            },
        )
        await tick(backend, now)
        pipeline = await only_run(backend.store, "etl")
        ready_id = task_run_id(pipeline.id, "ready")
        ready = await backend.store.get_run(ready_id)
        assert ready is not None
        assert ready.state is RunState.waiting
        assert ready.wait_key == f"orders/{pipeline.scheduled_for.date().isoformat()}"
        mid = await tick(backend, now + timedelta(seconds=31))
        assert mid.waits_looked == 1
        await tick(backend, now + timedelta(seconds=61))
        paths = [r.path for r in sink.requests]
    assert paths == ["/alert"]
    ready = await backend.store.get_run(ready_id)
    assert ready is not None
    assert ready.state is RunState.timed_out
    assert ready.error is not None
    assert "waited 1m on orders/" in ready.error
    done = await backend.store.get_run(pipeline.id)
    assert done is not None
    assert done.state is RunState.failed


async def test_a_worker_write_through_ctx_state_releases_a_wait(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve() as sink, serve_worker("setter", env=backend.env(), source=APP) as setter:
        await store_schedule(
            backend.store,
            now,
            id="consumer",
            every="1h",
            params={"region": "eu"},
            wait=gate(key="handoff/{region}"),
            target={"url": sink.url + "/consumer"},
        )
        await store_schedule(
            backend.store,
            now,
            id="producer",
            every="1h",
            target={"url": setter.url, "worker": True},
            params={"key": "handoff/eu", "value": {"rows": 9}},
        )
        await tick(backend, now)
        producer = await only_run(backend.store, "producer")
        done = await wait_run(backend.store, producer.id, lambda r: r.is_terminal)
        consumer = await only_run(backend.store, "consumer")
        released = await wait_run(backend.store, consumer.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    assert done.output == {"version": 1}
    assert released.state is RunState.delivered
    assert released.wait_value == {"rows": 9}


async def test_a_write_from_another_process_releases_a_wait(backend: Backend) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        run = await gated_run(
            backend, now, "outside", {"url": sink.url + "/outside"}, key="outside/{region}"
        )
        program = (
            "import firecron, sys\n"
            "with firecron.State(sys.argv[1], namespace=sys.argv[2]) as state:\n"
            "    print(state.set('outside/eu', {'rows': 4}).version)\n"
        )
        env = backend.env()
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", program, backend.url, backend.namespace],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"
        # The other process released it and fired it before it exited.
        assert sink.received == 1
    released = await backend.store.get_run(run.id)
    assert released is not None
    assert released.state is RunState.delivered


async def test_one_write_releases_exactly_its_own_waiter_among_a_thousand(
    backend: Backend,
) -> None:
    now = datetime.now(UTC)
    with serve() as sink:
        spec = await store_schedule(
            backend.store,
            now,
            id="many",
            params={"n": 0},
            wait=gate(key="k/{n}", until="value == 1", every="1h"),
            target={"url": sink.url + "/many"},
        )
        runs = [
            planning.build_run(
                spec, f"many@n{n:04d}", planning.Occurrence(now, now), now, params={"n": n}
            )
            for n in range(1000)
        ]
        created = await asyncio.gather(*(backend.store.create_run(r) for r in runs))
        assert all(created)
        d = backend.dispatcher()
        try:
            entry = await backend.store.put_state("k/517", 1, now=now)
            backend.store.stats.reset()
            summary = TickSummary(started_at=now)
            released = await d.waits.on_write("k/517", entry, summary)
            queries = backend.store.stats.queries
        finally:
            await d.aclose()
        assert released == 1
        assert queries == 1  # one query found the key's waiters among 1,000
        assert sink.received == 1
    waiting = await backend.store.list_runs(
        schedule_id="many", states=[RunState.waiting], limit=2000
    )
    assert len(waiting) == 999
    one = await backend.store.get_run("many@n0517")
    assert one is not None
    assert one.state is RunState.delivered


async def test_versions_are_compare_and_set(state: State) -> None:
    first = await asyncio.to_thread(state.set, "v/key", {"a": 1})
    assert first.version == 1
    with pytest.raises(ConflictError):
        await asyncio.to_thread(state.set, "v/key", {"a": 2}, 5)
    second = await asyncio.to_thread(state.set, "v/key", {"a": 2}, 1)
    assert second.version == 2
    with pytest.raises(ConflictError):
        await asyncio.to_thread(state.set, "v/key", {"a": 3}, 0)  # create only
    assert await asyncio.to_thread(state.get, "v/key") == {"a": 2}
    assert await asyncio.to_thread(state.get, "v/none", "default") == "default"
    with pytest.raises(InvalidInputError, match="holds ' '"):
        await asyncio.to_thread(state.set, "bad key", 1)
    with pytest.raises(InvalidInputError, match=re.escape(r"holds '\n'")):
        await asyncio.to_thread(state.set, "trailing\n", 1)
    assert await asyncio.to_thread(state.delete, "v/key", 2)
    assert await asyncio.to_thread(state.get, "v/key") is None


async def test_a_writer_without_the_dispatcher_s_settings_leaves_the_release_to_the_tick(
    backend: Backend, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that writes state but cannot send to a `function` target (no
    FIRECRON_FUNCTIONS_BASE_URL here) releases the run and leaves it pending, due at
    once: the next tick sends it, instead of the run failing for want of a setting."""
    monkeypatch.delenv("FIRECRON_FUNCTIONS_BASE_URL", raising=False)
    now = datetime.now(UTC)
    with serve() as sink:
        run = await gated_run(backend, now, "fn", {"function": "hello"}, key="fn/{region}")
        await asyncio.to_thread(state.set, "fn/eu", {"rows": 1})
        left = await backend.store.get_run(run.id)
        assert left is not None
        assert left.state is RunState.pending
        assert left.error is None
        assert sink.received == 0
        d = backend.dispatcher(functions_base_url=sink.url)
        try:
            summary = await d.tick(now + timedelta(seconds=5))
        finally:
            await d.aclose()
        assert summary.fired == 1
        assert [r.path for r in sink.requests] == ["/hello"]
