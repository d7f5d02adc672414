"""Waits: the release latency of a write through ``firecron.State``, and the cost of waiting.

Per backend (SQLite in a temp dir, the Firestore emulator):

1. **Release latency.** An on-demand schedule gated by ``wait: {key:
   "bench/latency/{trial}"}`` whose target is the sink's plain ``/ack/0``. Each trial
   triggers one run (``Dispatcher.trigger``: it looks at its key at once, finds nothing
   and stays ``waiting``), then writes the key with ``firecron.State(...).set`` in this
   process, on its own connection, as an upstream system would. The latency is the
   target's start (the moment the sink received the POST, ``time.time()`` in the sink
   process) minus the moment ``set`` was called. ``set`` releases the key's waiters
   before it returns (one query, then each released run is fired), so the target has
   already started when ``set`` returns: the issue's "from ``set`` returning" would be
   negative, and the figure reported is the bound from the call, next to ``set``'s own
   duration and the count of targets started before it returned. The run's recorded
   ``dispatched_at`` (its POST answered and recorded) is reported beside it; it is
   stamped on the store's clock as the State's runtime measured it (this clock plus an
   offset from one read), so on the emulator it carries that measurement's error.
2. **Cost of waiting.** ``waiting`` runs of a gated schedule (``every: 1h``, so none is
   due for a look), each waiting on its own key (``bench/cost/{n}``), are created in the
   store directly (``planning.build_run`` and ``Store.create_run``). Ticks on that store
   are set beside ticks on an empty one of the same backend: wall time, store reads,
   writes and queries (the target: the same reads and queries, O(1) in the number of
   waiting runs). Then ONE key is written through ``firecron.State.set``: its store
   calls and queries are counted on the State's own store (the target: one query finds
   the key's waiters), and exactly one run must be released (its run is
   ``delivered``, the sink received exactly its POST, and every other run is still
   ``waiting``).

A trial whose run did not wait, was not delivered, or whose POST the sink did not
receive exactly once makes the benchmark crash rather than report a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from bench._common import (
    Backends,
    BenchResult,
    Check,
    SharedStore,
    SinkProcess,
    bench_settings,
    open_shared,
    print_table,
    receipt_check,
)
from bench.pipelines import CallCounter, quantile
from firecron import State
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.runs import Run, RunState, scheduled_run_id
from firecron.dispatch import Dispatcher, TickSummary
from firecron.store.base import Store, StoreStats

NAME = "waits"
SECRET = "whsec_YmVuY2gtd2FpdHMtc2VjcmV0"
"""The signing secret of the bench's dispatcher and of its ``firecron.State`` (the sink
does not verify it; it keeps the runtime's "unsigned" warning out of the output)."""
_CREATE_CONCURRENCY = 64
"""Runs created at once while seeding the waiting runs (the dispatcher's default)."""


@dataclass(frozen=True)
class WaitsConfig:
    trials: int = 100
    """Release-latency trials: one waiting run and one ``State.set`` each, in sequence."""
    waiting: int = 10_000
    """Runs waiting on as many different keys for the cost of waiting."""
    ticks: int = 5
    """Ticks measured on each store (after one warm-up tick)."""
    latency_p99_target_s: float = 1.0


# -- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _open_state(shared: SharedStore) -> State:
    """``firecron.State`` on ``shared``'s store, as an outside program opens it: its
    settings come from the environment, here the bench's (loopback targets allowed,
    because the sink is on 127.0.0.1). Blocks: call it in a thread."""
    env = {"FIRECRON_ALLOW_PRIVATE_TARGETS": "1", "FIRECRON_SIGNING_SECRET": SECRET}
    with _environ(env):
        return State(shared.url, namespace=shared.namespace)


def _gated_spec(schedule_id: str, key: str, url: str) -> ScheduleSpec:
    """An on-demand schedule gated on ``key`` (a template), firing a plain ``url``.

    ``every: 1h``: no run is due for the watchdog's look while the benchmark runs, so
    every release measured is the write's own.
    """
    return ScheduleSpec.model_validate(
        {
            "id": schedule_id,
            "target": {"url": url},
            "wait": {"key": key, "until": "value != null", "every": "1h", "timeout": "6h"},
        }
    )


async def _put(store: Store, spec: ScheduleSpec) -> None:
    now = await store.clock()
    await store.put_schedule(spec, planning.initial_state(spec, now), expect_version=None)


def _timed_set(state: State, key: str) -> tuple[float, float]:
    """``state.set(key, {"rows": 1})``; the wall-clock instants it was called and returned."""
    called = time.time()
    state.set(key, {"rows": 1})
    return called, time.time()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- 1. release latency -----------------------------------------------------------------


async def release_latency(
    backends: Backends, backend: str, sink: SinkProcess, cfg: WaitsConfig
) -> dict[str, Any]:
    """``cfg.trials`` waiting runs, each released by a ``State.set`` of its own key."""
    shared = open_shared(backends, backend, "latency")
    spec = _gated_spec("gated", "bench/latency/{trial}", f"{sink.url}/ack/0")
    dispatcher = Dispatcher(shared.store, bench_settings(signing_secrets=(SECRET,)))
    state: State | None = None
    trials: list[tuple[str, float, float]] = []
    await asyncio.to_thread(sink.reset)
    try:
        await _put(shared.store, spec)
        state = await asyncio.to_thread(_open_state, shared)
        for i in range(cfg.trials):
            run = await dispatcher.trigger(spec.id, {"trial": i})
            key = f"bench/latency/{i}"
            if run.state is not RunState.waiting or run.wait_key != key:
                raise RuntimeError(f"trial {i}: run {run.id} is {run.state}, on {run.wait_key}")
            called, returned = await asyncio.to_thread(_timed_set, state, key)
            trials.append((run.id, called, returned))
        runs = {r.id: r for r in await shared.store.get_runs([t[0] for t in trials])}
    finally:
        if state is not None:
            await asyncio.to_thread(state.close)
        await dispatcher.aclose()
        await shared.store.close()
    await asyncio.to_thread(sink.wait_idle)
    stats = await asyncio.to_thread(sink.stats)
    receipts = receipt_check(stats["records"], [f"{run_id}/1" for run_id, _, _ in trials])
    if not receipts["exactly_once"]:
        raise RuntimeError(f"release latency: the sink did not receive every run once: {receipts}")
    received = {str(r[0]).removesuffix("/1"): float(r[2]) for r in stats["records"]}
    to_start: list[float] = []
    to_dispatched: list[float] = []
    set_s: list[float] = []
    before_return = 0
    for run_id, called, returned in trials:
        ended = runs.get(run_id)
        if ended is None or ended.state is not RunState.delivered or ended.dispatched_at is None:
            raise RuntimeError(f"run {run_id} was not delivered: {ended and ended.state}")
        to_start.append(received[run_id] - called)
        to_dispatched.append(ended.dispatched_at.timestamp() - called)
        set_s.append(returned - called)
        before_return += received[run_id] <= returned
    return {
        "backend": backend,
        "trials": len(trials),
        "to_target_start_p50_ms": _ms(quantile(to_start, 0.5)),
        "to_target_start_p99_ms": _ms(quantile(to_start, 0.99)),
        "to_target_start_max_ms": _ms(max(to_start)),
        "to_dispatched_at_p50_ms": _ms(quantile(to_dispatched, 0.5)),
        "to_dispatched_at_p99_ms": _ms(quantile(to_dispatched, 0.99)),
        "set_call_p50_ms": _ms(quantile(set_s, 0.5)),
        "set_call_p99_ms": _ms(quantile(set_s, 0.99)),
        "target_started_before_set_returned": before_return,
        "to_target_start_ms": [_ms(x) for x in to_start],
        "receipts": receipts,
    }


# -- 2. the cost of waiting -------------------------------------------------------------


async def _seed_waiting(store: Store, spec: ScheduleSpec, n: int) -> tuple[list[Run], float]:
    """Create ``n`` runs of ``spec`` waiting on ``bench/cost/{i}``; (runs, seconds)."""
    now = await store.clock()
    base = now.replace(microsecond=0) - timedelta(days=1)
    runs = []
    for i in range(n):
        at = base + timedelta(seconds=i)
        run = planning.build_run(
            spec, scheduled_run_id(spec.id, at), planning.Occurrence(at, at), now, params={"n": i}
        )
        if run.state is not RunState.waiting or run.wait_key != f"bench/cost/{i}":
            raise RuntimeError(f"build_run made {run.state} on {run.wait_key}: not a waiting run")
        runs.append(run)
    slots = asyncio.Semaphore(_CREATE_CONCURRENCY)

    async def create(run: Run) -> Run | None:
        async with slots:
            return await store.create_run(run)

    started = time.perf_counter()
    created = await asyncio.gather(*(create(r) for r in runs))
    seconds = time.perf_counter() - started
    missing = sum(1 for r in created if r is None)
    if missing:
        raise RuntimeError(f"seeding: {missing} of {n} waiting runs were not created")
    return [r for r in created if r is not None], seconds


async def _ticks(store: Store, n: int) -> dict[str, Any]:
    """One warm-up tick, then ``n`` measured: wall time (median, max) and store work."""
    dispatcher = Dispatcher(store, bench_settings())
    walls: list[float] = []
    work: list[tuple[int, int, int]] = []
    last: TickSummary | None = None
    try:
        await dispatcher.tick()
        for _ in range(n):
            store.stats.reset()
            started = time.perf_counter()
            last = await dispatcher.tick()
            walls.append(time.perf_counter() - started)
            work.append((store.stats.reads, store.stats.writes, store.stats.queries))
            if last.errors:
                raise RuntimeError(f"tick errors: {last.errors[:3]}")
    finally:
        await dispatcher.aclose()
    assert last is not None
    if last.due or last.watched or last.fired or last.waits_looked:
        raise RuntimeError(f"a tick found work: {last.as_dict()}")
    return {
        "ticks": n,
        "wall_p50_ms": _ms(statistics.median(walls)),
        "wall_max_ms": _ms(max(walls)),
        "reads": max(w[0] for w in work),
        "writes": max(w[1] for w in work),
        "queries": max(w[2] for w in work),
        "reads_each": [w[0] for w in work],
        "queries_each": [w[2] for w in work],
    }


async def _query_ms(store: Store, n: int) -> dict[str, float]:
    """Median milliseconds of the tick's watch query and of a write's waiters query (on a
    key nobody waits on), each alone: what the store itself takes for them. The
    emulator scans a collection for every query (Firestore answers from its index), so
    its tick grows with the runs stored while its reads do not."""
    now = await store.clock()
    watches: list[float] = []
    waiters: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        await store.due_watches(now, 1000)
        watches.append(time.perf_counter() - started)
        started = time.perf_counter()
        await store.waiting_on("bench/nobody", 1000)
        waiters.append(time.perf_counter() - started)
    return {
        "due_watches_ms": _ms(statistics.median(watches)),
        "waiting_on_ms": _ms(statistics.median(waiters)),
    }


def _counted_set(state: State, key: str) -> tuple[float, StoreStats, dict[str, int]]:
    """``state.set(key, ...)`` with the State's own store counted: (seconds, stats, calls).

    The State's runtime is private API: the benchmark reaches in to count what ONE
    write costs on the connection that makes it, release included."""
    store = state._runtime.store
    counter = CallCounter(store)
    store.stats.reset()
    started = time.perf_counter()
    state.set(key, {"rows": 1})
    seconds = time.perf_counter() - started
    stats = StoreStats(store.stats.reads, store.stats.writes, store.stats.queries)
    return seconds, stats, dict(sorted(counter.calls.items()))


async def _count_waiting(store: Store, limit: int) -> int:
    """How many runs are ``waiting`` (one listing query, at most ``limit``)."""
    return len(await store.list_runs(states=[RunState.waiting], limit=limit))


async def cost_of_waiting(
    backends: Backends, backend: str, sink: SinkProcess, cfg: WaitsConfig
) -> dict[str, Any]:
    """Ticks beside ``cfg.waiting`` waiting runs and on an empty store; one write's cost."""
    idle_store = backends.open(backend, "idle")
    try:
        idle = await _ticks(idle_store, cfg.ticks)
        idle["queries_alone"] = await _query_ms(idle_store, cfg.ticks)
    finally:
        await idle_store.close()
    shared = open_shared(backends, backend, "cost")
    spec = _gated_spec("cost", "bench/cost/{n}", f"{sink.url}/ack/0")
    state: State | None = None
    await asyncio.to_thread(sink.reset)
    try:
        await _put(shared.store, spec)
        runs, seed_s = await _seed_waiting(shared.store, spec, cfg.waiting)
        loaded = await _ticks(shared.store, cfg.ticks)
        loaded["queries_alone"] = await _query_ms(shared.store, cfg.ticks)
        state = await asyncio.to_thread(_open_state, shared)
        chosen = runs[len(runs) // 2]
        assert chosen.wait_key is not None
        write_s, write, calls = await asyncio.to_thread(_counted_set, state, chosen.wait_key)
        released = await shared.store.get_run(chosen.id)
        still_waiting = await _count_waiting(shared.store, cfg.waiting + 1)
    finally:
        if state is not None:
            await asyncio.to_thread(state.close)
        await shared.store.close()
    await asyncio.to_thread(sink.wait_idle)
    stats = await asyncio.to_thread(sink.stats)
    receipts = receipt_check(stats["records"], [f"{chosen.id}/1"])
    released_one = (
        receipts["exactly_once"]
        and released is not None
        and released.state is RunState.delivered
        and still_waiting == cfg.waiting - 1
    )
    return {
        "backend": backend,
        "waiting_runs": cfg.waiting,
        "seed_s": round(seed_s, 2),
        "idle_tick": idle,
        "tick": loaded,
        "write_ms": _ms(write_s),
        "write_reads": write.reads,
        "write_writes": write.writes,
        "write_queries": write.queries,
        "write_calls": calls,
        "released_run_state": released.state.value if released else None,
        "still_waiting": still_waiting,
        "released_exactly_one": released_one,
        "receipts": receipts,
    }


# -- the benchmark ----------------------------------------------------------------------


def run(
    backends: Backends, backend_names: list[str], sink: SinkProcess, cfg: WaitsConfig
) -> BenchResult:
    """Both measurements on each backend; the targets (latency p99 on SQLite; O(1) ticks,
    one query per write and exactly one run released on both) go to the summary."""
    print(
        f"\n[waits] {cfg.trials} releases by firecron.State.set; "
        f"{cfg.waiting:,} runs waiting on as many keys"
    )
    latency: dict[str, dict[str, Any]] = {}
    cost: dict[str, dict[str, Any]] = {}
    for backend in backend_names:
        latency[backend] = asyncio.run(release_latency(backends, backend, sink, cfg))
        r = latency[backend]
        print(
            f"  {backend}: release p50 {r['to_target_start_p50_ms']} ms, "
            f"p99 {r['to_target_start_p99_ms']} ms",
            flush=True,
        )
        cost[backend] = asyncio.run(cost_of_waiting(backends, backend, sink, cfg))
        c = cost[backend]
        print(
            f"  {backend}: tick beside {cfg.waiting:,} waiting runs: {c['tick']['reads']} reads "
            f"(idle {c['idle_tick']['reads']}); one write: {c['write_queries']} query",
            flush=True,
        )
    checks = _checks(cfg, latency, cost)
    _print(cfg, latency, cost)
    figures = {"config": asdict(cfg), "latency": latency, "cost": cost}
    return BenchResult(NAME, figures, checks)


def _checks(
    cfg: WaitsConfig, latency: dict[str, dict[str, Any]], cost: dict[str, dict[str, Any]]
) -> list[Check]:
    checks: list[Check] = []
    target_ms = cfg.latency_p99_target_s * 1000
    for backend in latency:
        r, c = latency[backend], cost[backend]
        if backend == "sqlite":
            checks.append(
                Check(
                    NAME,
                    backend,
                    f"release p99 <= {cfg.latency_p99_target_s:g} s (State.set to target start)",
                    f"{r['to_target_start_p99_ms']} ms (p50 {r['to_target_start_p50_ms']} ms) "
                    f"over {r['trials']} trials",
                    r["to_target_start_p99_ms"] <= target_ms,
                )
            )
        idle, tick = c["idle_tick"], c["tick"]
        checks += [
            Check(
                NAME,
                backend,
                f"tick beside {cfg.waiting:,} waiting runs: reads and queries of an idle tick",
                f"{tick['reads']} reads, {tick['queries']} queries vs "
                f"{idle['reads']}, {idle['queries']}",
                tick["reads"] <= idle["reads"] and tick["queries"] <= idle["queries"],
            ),
            Check(
                NAME,
                backend,
                "a write finds its waiters with one query",
                f"{c['write_queries']} queries, {c['write_calls'].get('waiting_on', 0)} waiting_on",
                c["write_queries"] == 1 and c["write_calls"].get("waiting_on") == 1,
            ),
            Check(
                NAME,
                backend,
                f"a write releases exactly one of {cfg.waiting:,} waiting runs",
                f"{c['released_run_state']}, {c['receipts']['received']} POST, "
                f"{c['still_waiting']:,} still waiting",
                c["released_exactly_one"],
            ),
        ]
    return checks


def _print(
    cfg: WaitsConfig, latency: dict[str, dict[str, Any]], cost: dict[str, dict[str, Any]]
) -> None:
    names = list(latency)
    latency_rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("trials", lambda r: r["trials"]),
        ("set called to target start, p50 (ms)", lambda r: r["to_target_start_p50_ms"]),
        ("set called to target start, p99 (ms)", lambda r: r["to_target_start_p99_ms"]),
        ("set called to target start, max (ms)", lambda r: r["to_target_start_max_ms"]),
        (
            "set called to dispatched_at (store clock), p50 (ms)",
            lambda r: r["to_dispatched_at_p50_ms"],
        ),
        (
            "set called to dispatched_at (store clock), p99 (ms)",
            lambda r: r["to_dispatched_at_p99_ms"],
        ),
        ("set call (write + release), p50 (ms)", lambda r: r["set_call_p50_ms"]),
        ("set call (write + release), p99 (ms)", lambda r: r["set_call_p99_ms"]),
        ("targets started before set returned", lambda r: r["target_started_before_set_returned"]),
        ("received exactly once", lambda r: r["receipts"]["exactly_once"]),
    ]
    print_table(
        f"Release latency: {cfg.trials} gated runs, each released by firecron.State.set of its "
        "key (plain target: sink /ack/0); target start = the sink's receipt",
        ["figure", *names],
        [[label, *(fn(latency[b]) for b in names)] for label, fn in latency_rows],
        right=[False] + [True] * len(names),
    )
    cost_rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("waiting runs (different keys)", lambda c: c["waiting_runs"]),
        ("seeding them (s)", lambda c: c["seed_s"]),
        ("tick wall time, p50 (ms)", lambda c: c["tick"]["wall_p50_ms"]),
        ("tick wall time, max (ms)", lambda c: c["tick"]["wall_max_ms"]),
        ("tick store reads", lambda c: c["tick"]["reads"]),
        ("tick store writes", lambda c: c["tick"]["writes"]),
        ("tick store queries", lambda c: c["tick"]["queries"]),
        ("  its watch query alone (ms)", lambda c: c["tick"]["queries_alone"]["due_watches_ms"]),
        (
            "  a waiters query alone, any key (ms)",
            lambda c: c["tick"]["queries_alone"]["waiting_on_ms"],
        ),
        ("idle tick (empty store) wall time, p50 (ms)", lambda c: c["idle_tick"]["wall_p50_ms"]),
        ("idle tick store reads", lambda c: c["idle_tick"]["reads"]),
        ("idle tick store writes", lambda c: c["idle_tick"]["writes"]),
        ("idle tick store queries", lambda c: c["idle_tick"]["queries"]),
        (
            "  its watch query alone (ms)",
            lambda c: c["idle_tick"]["queries_alone"]["due_watches_ms"],
        ),
        ("one State.set (ms)", lambda c: c["write_ms"]),
        ("one State.set: store queries", lambda c: c["write_queries"]),
        ("one State.set: store reads", lambda c: c["write_reads"]),
        ("one State.set: store writes", lambda c: c["write_writes"]),
        ("released run's state", lambda c: c["released_run_state"]),
        ("runs still waiting", lambda c: c["still_waiting"]),
        ("released exactly one", lambda c: c["released_exactly_one"]),
    ]
    print_table(
        f"Cost of waiting: {cfg.waiting:,} runs waiting on different keys (every 1h: none due "
        f"for a look); median of {cfg.ticks} ticks, then one write through firecron.State",
        ["figure", *names],
        [[label, *(fn(cost[b]) for b in names)] for label, fn in cost_rows],
        right=[False] + [True] * len(names),
    )
    for b in names:
        calls = ", ".join(f"{k} {v}" for k, v in cost[b]["write_calls"].items())
        print(f"{b}: one State.set's store calls: {calls}")
    sys.stdout.flush()
