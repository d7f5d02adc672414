"""Continuous schedules against real worker processes (functions-framework), on both stores.

What issue 15 promises, each proven here rather than hoped for:

- handoffs over many windows never let two generations run at once (the worker's own
  record of its intervals, checked pairwise);
- an instance killed (SIGKILL) at a random point is replaced at once (a death is not a
  crash: no backoff), and no generation runs twice;
- an instance frozen (SIGSTOP) past its lease, then thawed (SIGCONT), finds its fenced
  write refused and ``keep_going()`` false, while its successor's writes stand;
- two dispatchers and the worker racing to create the successor create exactly one;
- a crash loop backs off, and a generation that works its window resets the backoff.

Every wait is a poll that drives the system (a tick per probe), never a sleep. The
``generation`` worker (``tests/_orchestration_app.py``) logs its start, end and refused
writes to a file, one JSON line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from _backend import Backend
from _factories import store_schedule
from _generations import pause_and_stop
from _poll import apoll
from _workers import serve_worker
from firecron import admin
from firecron.core.runs import Run, RunState, generation_run_id
from firecron.core.state import StateEntry

APP = Path(__file__).resolve().with_name("_orchestration_app.py")
HEARTBEAT_TIMEOUT = timedelta(seconds=3)
CLOCK_ALLOWANCE = timedelta(milliseconds=250)
"""Two processes' store-clock offsets, each measured by one read, may differ this much."""

T = TypeVar("T")


def continuous(log: Path, url: str, **fields: Any) -> dict[str, Any]:
    """The fields of a continuous schedule on the ``generation`` worker at ``url``."""
    return {
        "continuous": {"window": "1h"},
        "heartbeat_timeout": "3s",
        "retry": {"backoff": "1s", "max_backoff": "2s", "multiplier": 2},
        "target": {"url": url, "worker": True},
        "params": {"log": str(log), "key": "progress"},
        **fields,
    }


def lines(log: Path) -> list[dict[str, Any]]:
    """The worker's log, one dict per line (none yet: empty)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def starts(log: Path) -> list[int]:
    """The generations that started, in the order they did."""
    return [line["gen"] for line in lines(log) if line["event"] == "start"]


async def ticking(
    backend: Backend, probe: Callable[[], Awaitable[T]], until: Callable[[T], object], what: str
) -> T:
    """Poll ``probe`` until ``until`` holds, with one real-time tick before each probe:
    the watchdog's passes, as the scheduler's ticks would make them."""

    async def tick_then_probe() -> T:
        d = backend.dispatcher()
        try:
            await d.tick()
        finally:
            await d.aclose()
        return await probe()

    return await apoll(tick_then_probe, until, what=what)


async def retarget(backend: Backend, schedule_id: str, url: str) -> None:
    """Point the schedule at a fresh worker process: the next generation is sent there,
    as the platform would route it to a new instance."""
    stored = await backend.store.get_schedule(schedule_id)
    assert stored is not None
    target = stored.spec.target.model_copy(update={"url": url})
    spec = stored.spec.model_copy(update={"target": target})
    assert await backend.store.put_schedule(spec, stored.state, expect_version=stored.version)


async def generation_run(backend: Backend, schedule_id: str, n: int) -> Run | None:
    return await backend.store.get_run(generation_run_id(schedule_id, n))


def at_step(gen: int, steps: int) -> Callable[[StateEntry | None], bool]:
    """Whether the progress entry says generation ``gen`` made at least ``steps`` steps."""

    def reached(entry: StateEntry | None) -> bool:
        value = entry.value if entry is not None else None
        return (
            isinstance(value, dict)
            and value.get("generation") == gen
            and isinstance(step := value.get("step"), int)
            and step >= steps
        )

    return reached


def is_running(run: Run | None) -> bool:
    return run is not None and run.state is RunState.running


def assert_one_at_a_time(log: Path, killed: dict[int, float]) -> None:
    """Each generation started once, and each started after the one before it ended
    (its ``end`` or ``fenced`` line, or its kill): the worker's own clock, one machine."""
    events = lines(log)
    started = starts(log)
    assert sorted(started) == list(range(1, len(started) + 1))  # once each, none skipped
    intervals: list[tuple[float, float, int]] = []
    for gen in started:
        begin = next(e["t"] for e in events if e["gen"] == gen and e["event"] == "start")
        ends = [e["t"] for e in events if e["gen"] == gen and e["event"] in ("end", "fenced")]
        if gen in killed:
            ends.append(killed[gen])
        intervals.append((begin, min(ends, default=float("inf")), gen))
    intervals.sort()
    for (_, end, gen), (begin, _, after) in itertools.pairwise(intervals):
        assert end <= begin, f"generation {after} started before generation {gen} ended"


async def test_handoffs_over_many_windows_never_overlap(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "log"
    now = datetime.now(UTC)
    with serve_worker("generation", env=backend.env(), source=APP) as worker:
        await store_schedule(
            backend.store,
            now,
            id="tail",
            **continuous(log, worker.url, continuous={"window": "1s"}),
        )
        await ticking(
            backend,
            lambda: generation_run(backend, "tail", 6),
            is_running,
            what="generation 6 running (five handoffs)",
        )
        last = await pause_and_stop(backend.store, "tail")
    runs = sorted(
        await backend.store.list_runs(schedule_id="tail"), key=lambda r: r.generation or 0
    )
    assert last.generation is not None
    assert last.generation >= 6
    assert [r.generation for r in runs] == list(range(1, last.generation + 1))
    assert [r.state for r in runs] == [RunState.succeeded] * (len(runs) - 1) + [RunState.cancelled]
    assert all(r.failures == 0 for r in runs)  # a generation that works its window
    assert_one_at_a_time(log, killed={})
    for before, after in itertools.pairwise(runs):
        assert after.cause_run_id == before.id
        assert before.ended_at is not None
        assert after.started_at is not None
        assert before.ended_at <= after.started_at
        [handoff] = [e for e in after.events if e.type.value == "run.handoff"]
        assert handoff.data["generation"] == after.generation


async def test_a_killed_instance_is_replaced_and_no_generation_runs_twice(
    backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    now = datetime.now(UTC)
    chance = random.Random(15)
    killed: dict[int, float] = {}
    env = backend.env()
    with contextlib.ExitStack() as processes:
        victim = processes.enter_context(serve_worker("generation", env=env, source=APP))
        await store_schedule(backend.store, now, id="tail", **continuous(log, victim.url))
        for gen in (1, 2, 3):
            # A random point of the instance's work: after its n-th fenced write.
            steps = chance.randint(1, 40)
            await ticking(
                backend,
                lambda: backend.store.get_state("progress"),
                at_step(gen, steps),
                what=f"generation {gen} at step {steps}",
            )
            victim.kill()  # SIGKILL, the whole process group
            killed[gen] = time.time()
            # The platform starts a fresh instance for the successor.
            fresh = processes.enter_context(serve_worker("generation", env=env, source=APP))
            await retarget(backend, "tail", fresh.url)
            successor = await ticking(
                backend,
                functools.partial(generation_run, backend, "tail", gen + 1),
                is_running,
                what=f"generation {gen + 1} running after the kill",
            )
            assert successor is not None
            dead = await generation_run(backend, "tail", gen)
            assert dead is not None
            assert dead.state is RunState.lost
            assert dead.error == "no heartbeat for 3s"
            assert dead.heartbeat_at is not None
            assert dead.ended_at is not None
            assert dead.ended_at >= dead.heartbeat_at + HEARTBEAT_TIMEOUT  # never early
            [lost_event] = [e for e in dead.events if e.type.value == "run.lost"]
            assert lost_event.data["generation"] == gen
            assert successor.cause_run_id == dead.id
            # A death, not a crash: the successor was fired at once, with no backoff.
            assert successor.failures == 0
            assert successor.blocked_by is None
            victim = fresh
        await admin.pause(backend.store, "tail", datetime.now(UTC))
        await apoll(
            lambda: generation_run(backend, "tail", 4),
            lambda r: r is not None and r.is_terminal,
            what="generation 4 stopped by the pause",
        )
    assert_one_at_a_time(log, killed)
    assert starts(log) == [1, 2, 3, 4]


async def test_a_frozen_instance_is_fenced_and_stops(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "log"
    now = datetime.now(UTC)
    env = backend.env()
    with serve_worker("generation", env=env, source=APP) as frozen:
        await store_schedule(backend.store, now, id="tail", **continuous(log, frozen.url))
        await ticking(
            backend,
            lambda: backend.store.get_state("progress"),
            at_step(1, 3),
            what="generation 1 working",
        )
        # The whole group: functions-framework's server runs the work in a child process.
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        try:
            with serve_worker("generation", env=env, source=APP) as fresh:
                await retarget(backend, "tail", fresh.url)
                await ticking(
                    backend,
                    lambda: backend.store.get_state("progress"),
                    lambda e: (
                        e is not None
                        and isinstance(e.value, dict)
                        and e.value.get("generation") == 2
                    ),
                    what="generation 2 writing, generation 1 frozen",
                )
                lost = await generation_run(backend, "tail", 1)
                assert lost is not None
                assert lost.state is RunState.lost
        finally:
            os.killpg(frozen.process.pid, signal.SIGCONT)
        # Thawed: its next write is refused, and then it stops. (Whether keep_going() was
        # already false before that write depends on where the freeze caught it: between
        # the check and the write, the check said true. Its lease lapsing on its own is
        # test_keep_going_is_false_once_the_lease_lapsed.)
        [refused] = await apoll(
            lambda: [e for e in lines(log) if e["event"] == "fenced"],
            what="generation 1's refused write",
        )
        assert refused["gen"] == 1
        assert refused["after"] is False
        assert (
            "generation 1 of 'tail' is no longer the live one (its run is lost)" in refused["error"]
        )
        assert frozen.alive  # it returned; nothing killed it
    entry = await backend.store.get_state("progress")
    assert entry is not None
    assert isinstance(entry.value, dict)
    assert entry.value["generation"] == 2  # the stale write never landed
    still = await generation_run(backend, "tail", 1)
    assert still is not None
    assert still.state is RunState.lost  # its end was not recorded over the verdict
    assert starts(log) == [1, 2]


async def test_two_dispatchers_and_the_worker_race_for_the_successor(
    backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    go = tmp_path / "go"
    now = datetime.now(UTC)
    env = backend.env(TEST_HOLD_BEFORE_SETTLE=str(go))
    with serve_worker("generation", env=env, source=APP) as worker:
        await store_schedule(
            backend.store,
            now,
            id="tail",
            **continuous(log, worker.url, continuous={"window": "1s"}),
        )
        d = backend.dispatcher()
        try:
            await d.tick()
        finally:
            await d.aclose()
        # Generation 1's end is recorded; the worker holds before it claims generation 2.
        ended = await apoll(
            lambda: generation_run(backend, "tail", 1),
            lambda r: r is not None and r.is_terminal,
            what="generation 1 ended",
        )
        assert ended is not None
        assert ended.settle_at is not None
        assert await generation_run(backend, "tail", 2) is None
        first, second = backend.dispatcher(), backend.dispatcher()
        try:
            go.touch()
            await asyncio.gather(first.tick(), second.tick())
        finally:
            await first.aclose()
            await second.aclose()
        await apoll(
            lambda: generation_run(backend, "tail", 1),
            lambda r: r is not None and r.settle_at is None,
            what="generation 1's end settled",
        )
        # Before the pause: a pause would cancel generation 2 if it came before its start.
        await apoll(
            lambda: generation_run(backend, "tail", 2),
            lambda r: r is not None and r.started_at is not None,
            what="generation 2 started",
        )
        # Generation 2 may have handed over already (its window is 1 s).
        await pause_and_stop(backend.store, "tail")
    runs = await backend.store.list_runs(schedule_id="tail")
    generations = sorted(r.generation or 0 for r in runs)
    assert generations == list(range(1, len(generations) + 1))  # each once, none skipped
    assert len(generations) >= 2
    successor = await generation_run(backend, "tail", 2)
    assert successor is not None
    assert successor.cause_run_id == ended.id
    assert [e.type.value for e in successor.events].count("run.handoff") == 1
    started = starts(log)
    assert started.count(2) == 1  # generation 2 was started once, whoever sent it
    assert sorted(started) == sorted(set(started))  # and no generation twice


async def test_a_crash_loop_backs_off_and_a_full_window_resets_it(
    backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    now = datetime.now(UTC)
    with serve_worker("generation", env=backend.env(), source=APP) as worker:
        fields = continuous(log, worker.url, continuous={"window": "1s"})
        fields["params"] = {**fields["params"], "crash_until": 2}
        await store_schedule(backend.store, now, id="tail", **fields)
        fifth = await ticking(
            backend,
            lambda: generation_run(backend, "tail", 5),
            lambda r: r is not None,
            what="generation 5 created",
        )
        assert fifth is not None
        await admin.pause(backend.store, "tail", datetime.now(UTC))
    runs = {r.generation: r for r in await backend.store.list_runs(schedule_id="tail")}
    assert runs[1].state is RunState.failed
    assert runs[2].state is RunState.failed
    # Generation 2 waited 1s after the first crash, generation 3 2s after the second
    # (1s x 2, the cap); generation 4 followed a full window at once.
    assert [runs[n].failures for n in (2, 3, 4)] == [1, 2, 0]
    for n, wait in ((2, 1), (3, 2)):
        created, started = runs[n].created_at, runs[n].started_at
        assert started is not None
        # Both stamped by the worker process (it settled the crash, then ran the
        # successor); the release was the dispatcher's, whose store-clock offset was
        # measured apart, hence the allowance for that measurement.
        assert started >= created + timedelta(seconds=wait) - CLOCK_ALLOWANCE
    assert runs[4].state is RunState.succeeded
    assert fifth.failures == 0
    assert starts(log)[:4] == [1, 2, 3, 4]
