"""Pipelines: the hop latency of a chain of worker tasks, and a fan-out / fan-in of 200.

Per backend (SQLite in a temp dir, the Firestore emulator):

1. **Hop latency.** A pipeline of ``chain_tasks`` no-op worker tasks in a line (each
   ``after`` the previous one), every task ``bench/_noop_worker.py``'s ``noop`` served by
   ONE ``functions-framework`` process on the same store. One real tick starts each
   pipeline run (``chain_repeats`` schedules, one after another); from then on the
   worker records each task's end and settles it, which fires the next task: no tick
   is involved. A hop is the next task run's ``started_at`` minus the previous one's
   ``ended_at``, both written by the worker with its clock corrected to the store's.
2. **Fan-out and fan-in.** One pipeline of ``fan_tasks`` parallel no-op tasks and a
   ``join`` after all of them, on plain ``/ack/0`` targets of the sink process, so all
   store work happens in this process and one tick runs the whole pipeline. The wall
   time is the join's ``dispatched_at`` (its POST answered and recorded: a plain
   target's start) minus the pipeline run's ``started_at``. The store's counters
   (``Store.stats``) over that tick give the cost of one more task run (the same
   pipeline at half the size is measured too: the difference per task run; the rest is
   the pipeline run's own, paid once), set beside the cost
   of a scheduled plain run measured the same way in the same run (as many schedules
   due now as there are task runs, one tick, divided by the runs), and each store
   method's calls per run say which operations they are. The same pipeline on worker
   targets (the ``noop`` process, functions-framework's default threads) reports its
   wall time only (to the join's ``started_at``): the workers' store work is in their
   process.

Every run is read back from the store afterwards; a task that did not succeed, a
pipeline run that did not, or a plain target not received exactly once makes the
benchmark crash rather than report a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    schedules,
    seed,
    whole_second,
)
from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec
from firecron.core.runs import Run, RunState, scheduled_run_id, task_run_id
from firecron.dispatch import Dispatcher, TickSummary
from firecron.store.base import Store

NAME = "pipelines"
WORKER_SOURCE = Path(__file__).resolve().with_name("_noop_worker.py")
SECRET = "whsec_YmVuY2gtcGlwZWxpbmVz"
"""The signing secret the bench's dispatcher and its worker process share."""
_WAIT_S = 300.0
"""How long a pipeline run may take to end before the benchmark gives up (crashes)."""
_DONE = (RunState.succeeded, RunState.delivered)
"""The ends of a task run that did its work: a worker's, a plain target's."""
_CAS_METHODS = frozenset({"update_run", "claim", "spawn", "mark_upstream", "create_run"})
"""Store methods that return None when they wrote nothing."""


@dataclass(frozen=True)
class PipelinesConfig:
    chain_tasks: int = 20
    chain_repeats: int = 20
    """Pipeline runs of the chain, one after another: ``repeats * (tasks - 1)`` hops."""
    fan_tasks: int = 200
    fan_workers: bool = True
    """Also run the fan-out on worker targets (wall time only)."""
    hop_p50_target_ms: float = 100.0
    hop_p99_target_ms: float = 500.0
    fan_target_s: float = 5.0


# -- helpers ----------------------------------------------------------------------------


def _dispatcher(shared: SharedStore) -> Dispatcher:
    settings = bench_settings(
        store_url=shared.url, namespace=shared.namespace, signing_secrets=(SECRET,)
    )
    return Dispatcher(shared.store, settings)


@contextlib.contextmanager
def _noop_worker(shared: SharedStore, log_dir: Path) -> Iterator[str]:
    """Serve ``noop`` in one functions-framework process on ``shared``'s store; yield its URL."""
    from _workers import serve_worker, worker_env

    env = worker_env(shared.url, secrets=[SECRET], namespace=shared.namespace)
    with serve_worker("noop", env=env, source=WORKER_SOURCE, log_dir=log_dir) as worker:
        yield worker.url


async def _put_pipeline(store: Store, schedule_id: str, pipeline: dict[str, Any]) -> datetime:
    """Store an hourly schedule whose target is ``pipeline``, due now; returns its due time."""
    spec_pipeline = PipelineSpec.model_validate(pipeline)
    due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
    spec = ScheduleSpec.model_validate(
        {
            "id": schedule_id,
            "every": "1h",
            "start_at": due,
            "target": {"pipeline": spec_pipeline.id},
            "pipeline_spec": spec_pipeline,
        }
    )
    state = planning.initial_state(spec, due - timedelta(seconds=1))
    assert state.next_fire_at == due, (state.next_fire_at, due)
    await store.put_schedule(spec, state, expect_version=None)
    return due


async def _tick(dispatcher: Dispatcher) -> TickSummary:
    """One real tick at the store's time (the dispatcher measures its clock offset)."""
    summary = await dispatcher.tick()
    if summary.errors:
        raise RuntimeError(f"tick errors: {summary.errors[:3]}")
    return summary


async def _ended(store: Store, run_id: str) -> Run:
    """Poll the store until the run has ended; crash after :data:`_WAIT_S`."""
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        run = await store.get_run(run_id)
        if run is not None and run.is_terminal:
            return run
        await asyncio.sleep(0.05)
    raise RuntimeError(f"pipeline run {run_id} did not end within {_WAIT_S:g} s")


async def _task_runs(store: Store, pipeline: Run) -> list[Run]:
    """The pipeline run's task runs in task order; crash unless the pipeline and every task
    succeeded (a figure from a broken run would mean nothing)."""
    if pipeline.state is not RunState.succeeded:
        raise RuntimeError(f"pipeline run {pipeline.id} ended {pipeline.state}: {pipeline.error}")
    assert pipeline.pipeline_spec is not None
    ids = [task_run_id(pipeline.id, t.id) for t in pipeline.pipeline_spec.tasks]
    runs = await store.get_runs(ids)
    bad = [f"{r.task}: {r.state}" for r in runs if r.state not in _DONE]
    if len(runs) != len(ids) or bad:
        raise RuntimeError(f"pipeline run {pipeline.id}: {len(runs)}/{len(ids)} tasks; {bad[:5]}")
    by_id = {r.id: r for r in runs}
    return [by_id[i] for i in ids]


def _stamp(run: Run, name: str) -> datetime:
    """The run's ``name`` timestamp; crash when the store has none (a broken run)."""
    value = getattr(run, name)
    if not isinstance(value, datetime):
        raise RuntimeError(f"run {run.id}: no {name} recorded")
    return value


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (``q=0.99`` of 190 values is the 189th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


class CallCounter:
    """Counts calls of each public coroutine method of a store (patched on the instance).

    ``Store.stats`` counts documents read and written, but not by whom; the calls say
    which operations those were (each ``update_run`` is one write, each
    ``mark_upstream`` one write that returns the run, a ``spawn`` 1 + N writes...).
    """

    def __init__(self, store: Store) -> None:
        self.calls: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        """Calls that wrote nothing: a compare-and-set another writer won first (None)."""
        for name in dir(type(store)):
            if name.startswith("_"):
                continue
            method = getattr(store, name)
            if inspect.iscoroutinefunction(method):
                setattr(store, name, self._counted(name, method))

    def _counted(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            result = await method(*args, **kwargs)
            if result is None and name in _CAS_METHODS:
                self.refused[name] += 1
            return result

        return counted


# -- 1. hop latency ---------------------------------------------------------------------


async def _chain_once(shared: SharedStore, worker_url: str, cfg: PipelinesConfig, rep: int) -> Run:
    target = {"url": worker_url, "worker": True}
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i:02d}", "target": target, **({"after": [f"t{i - 1:02d}"]} if i else {})}
        for i in range(cfg.chain_tasks)
    ]
    schedule_id = f"chain-{rep:02d}"
    due = await _put_pipeline(shared.store, schedule_id, {"id": "chain", "tasks": tasks})
    dispatcher = _dispatcher(shared)
    try:
        summary = await _tick(dispatcher)
    finally:
        await dispatcher.aclose()
    if summary.fired < 2:  # the pipeline run and its root
        raise RuntimeError(f"{schedule_id}: the tick fired {summary.fired} runs, expected 2")
    return await _ended(shared.store, scheduled_run_id(schedule_id, due))


async def hop_latency(
    backends: Backends, backend: str, cfg: PipelinesConfig, log_dir: Path
) -> dict[str, Any]:
    """The chain's hops on ``backend`` (and, with ``cfg.fan_workers``, the fan-out on
    worker targets, under ``fan_workers``, with the same worker process)."""
    shared = open_shared(backends, backend, "chain")
    hops: list[float] = []
    first: list[float] = []
    whole: list[float] = []
    try:
        with _noop_worker(shared, log_dir) as url:
            for rep in range(cfg.chain_repeats):
                pipeline = await _chain_once(shared, url, cfg, rep)
                runs = await _task_runs(shared.store, pipeline)
                start = _stamp(pipeline, "started_at")
                first.append(_ms(_stamp(runs[0], "started_at") - start))
                whole.append(_ms(_stamp(pipeline, "ended_at") - start))
                for before, after in itertools.pairwise(runs):
                    hops.append(_ms(_stamp(after, "started_at") - _stamp(before, "ended_at")))
            fan = None
            if cfg.fan_workers:
                fan = await _fan_workers(shared, url, cfg)
    finally:
        await shared.store.close()
    return {
        "backend": backend,
        "tasks_per_pipeline": cfg.chain_tasks,
        "pipelines": cfg.chain_repeats,
        "hops": len(hops),
        "hop_p50_ms": round(quantile(hops, 0.5), 1),
        "hop_p90_ms": round(quantile(hops, 0.9), 1),
        "hop_p99_ms": round(quantile(hops, 0.99), 1),
        "hop_max_ms": round(max(hops), 1),
        "hop_min_ms": round(min(hops), 1),
        "start_to_first_task_p50_ms": round(quantile(first, 0.5), 1),
        "pipeline_wall_p50_s": round(quantile(whole, 0.5) / 1000, 2),
        "hops_ms": [round(h, 1) for h in hops],
        "fan_workers": fan,
    }


# -- 2. fan-out and fan-in --------------------------------------------------------------


def _fan_pipeline(n: int, target: dict[str, Any]) -> dict[str, Any]:
    names = [f"f{i:03d}" for i in range(n)]
    return {
        "id": "fan",
        "tasks": [
            *({"id": name, "target": target} for name in names),
            {"id": "join", "target": target, "after": names},
        ],
    }


async def _fan_workers(
    shared: SharedStore, worker_url: str, cfg: PipelinesConfig
) -> dict[str, Any]:
    """The fan-out on worker targets: wall time to the join's ``started_at`` only."""
    target = {"url": worker_url, "worker": True}
    due = await _put_pipeline(shared.store, "fan-workers", _fan_pipeline(cfg.fan_tasks, target))
    dispatcher = _dispatcher(shared)
    try:
        await _tick(dispatcher)
    finally:
        await dispatcher.aclose()
    pipeline = await _ended(shared.store, scheduled_run_id("fan-workers", due))
    runs = await _task_runs(shared.store, pipeline)
    wall = _stamp(runs[-1], "started_at") - _stamp(pipeline, "started_at")
    return {
        "tasks": cfg.fan_tasks,
        "start_to_join_start_s": round(_ms(wall) / 1000, 2),
    }


async def _scheduled_plain_cost(
    backends: Backends, backend: str, url: str, n: int
) -> dict[str, Any]:
    """Store work of a scheduled plain run: ``n`` schedules due now, one tick, per run.

    ``n`` is the fan-out's number of task runs, so the tick's fixed costs (the clock
    read, the due and watchdog queries) are shared by as many runs as in the pipeline's
    tick: the figures compare what one run costs, not what one tick costs.
    """
    store = backends.open(backend, "scheduled")
    try:
        due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
        await seed(store, schedules("one", n, url, due))
        counter = CallCounter(store)
        dispatcher = Dispatcher(store, bench_settings())
        store.stats.reset()
        try:
            summary = await _tick(dispatcher)
        finally:
            await dispatcher.aclose()
        if summary.fired != n:
            raise RuntimeError(f"scheduled plain runs: fired {summary.fired}, expected {n}")
        stats = store.stats
        return {
            "runs": n,
            "reads": stats.reads,
            "writes": stats.writes,
            "queries": stats.queries,
            "reads_per_run": round(stats.reads / n, 2),
            "writes_per_run": round(stats.writes / n, 2),
            "queries_per_run": round(stats.queries / n, 3),
            "calls": dict(sorted(counter.calls.items())),
            "calls_per_run": {k: round(v / n, 2) for k, v in sorted(counter.calls.items())},
        }
    finally:
        await store.close()


async def _fan_work(
    backends: Backends, backend: str, url: str, tasks: int, name: str
) -> tuple[int, int, int]:
    """Store reads, writes and task runs of one fan-out pipeline of ``tasks`` plain tasks
    and a join, run by one tick on a fresh store (the marginal measurement's second size)."""
    store = backends.open(backend, name)
    try:
        await _put_pipeline(store, name, _fan_pipeline(tasks, {"url": url}))
        dispatcher = Dispatcher(store, bench_settings())
        store.stats.reset()
        try:
            await _tick(dispatcher)
        finally:
            await dispatcher.aclose()
        return store.stats.reads, store.stats.writes, tasks + 1
    finally:
        await store.close()


async def fan_plain(
    backends: Backends, backend: str, sink: SinkProcess, cfg: PipelinesConfig
) -> dict[str, Any]:
    """The fan-out on plain targets: wall time, store work per task run and its breakdown,
    beside a scheduled plain run's (:func:`_scheduled_plain_cost`)."""
    url = f"{sink.url}/ack/0"
    baseline = await _scheduled_plain_cost(backends, backend, url, cfg.fan_tasks + 1)
    await asyncio.to_thread(sink.wait_idle)
    await asyncio.to_thread(sink.reset)
    store = backends.open(backend, "fan")
    try:
        due = await _put_pipeline(store, "fan-plain", _fan_pipeline(cfg.fan_tasks, {"url": url}))
        counter = CallCounter(store)
        dispatcher = Dispatcher(store, bench_settings())
        store.stats.reset()
        started = time.perf_counter()
        try:
            summary = await _tick(dispatcher)
        finally:
            await dispatcher.aclose()
        tick_s = time.perf_counter() - started
        reads, writes, queries = store.stats.reads, store.stats.writes, store.stats.queries
        calls = dict(sorted(counter.calls.items()))
        refused = dict(sorted(counter.refused.items()))
        pipeline = await store.get_run(scheduled_run_id("fan-plain", due))
        if pipeline is None or not pipeline.is_terminal:
            raise RuntimeError(f"the fan-out pipeline run did not end within its tick: {pipeline}")
        runs = await _task_runs(store, pipeline)
    finally:
        await store.close()
    stats = await asyncio.to_thread(sink.stats)
    receipts = receipt_check(stats["records"], [f"{r.id}/1" for r in runs])
    if not receipts["exactly_once"]:
        raise RuntimeError(f"fan-out: the sink did not receive every task once: {receipts}")
    wall = _stamp(runs[-1], "dispatched_at") - _stamp(pipeline, "started_at")
    n = len(runs)
    # What one more task run costs: the same pipeline at half the size, and the
    # difference per task run. The rest is the pipeline run's own, once per pipeline.
    await asyncio.to_thread(sink.wait_idle)
    half_reads, half_writes, half_n = await _fan_work(
        backends, backend, url, max(1, cfg.fan_tasks // 2), "fan-half"
    )
    marginal_reads = (reads - half_reads) / (n - half_n)
    marginal_writes = (writes - half_writes) / (n - half_n)
    return {
        "backend": backend,
        "tasks": cfg.fan_tasks,
        "task_runs": n,
        "start_to_join_dispatched_s": round(_ms(wall) / 1000, 2),
        "tick_wall_s": round(tick_s, 2),
        "tick_fired": summary.fired,
        "store_reads": reads,
        "store_writes": writes,
        "store_queries": queries,
        "reads_per_task_run": round(reads / n, 2),
        "writes_per_task_run": round(writes / n, 2),
        "marginal_reads_per_task_run": round(marginal_reads, 2),
        "marginal_writes_per_task_run": round(marginal_writes, 2),
        "pipeline_fixed_reads": round(reads - marginal_reads * n, 1),
        "pipeline_fixed_writes": round(writes - marginal_writes * n, 1),
        "queries_per_task_run": round(queries / n, 3),
        "calls": calls,
        "calls_per_task_run": {k: round(v / n, 2) for k, v in calls.items()},
        "calls_refused": refused,
        "scheduled_plain_run": baseline,
        "receipts": receipts,
    }


# -- the benchmark ----------------------------------------------------------------------


def run(
    backends: Backends, backend_names: list[str], sink: SinkProcess, cfg: PipelinesConfig
) -> BenchResult:
    """Both measurements on each backend; the targets (hop p50/p99 and the fan-out's wall
    time on SQLite, store work per task run on both) go to the summary."""
    print(
        f"\n[pipelines] a chain of {cfg.chain_tasks} worker tasks x {cfg.chain_repeats}; "
        f"{cfg.fan_tasks} parallel tasks and a join"
    )
    chains: dict[str, dict[str, Any]] = {}
    fans: dict[str, dict[str, Any]] = {}
    for backend in backend_names:
        log_dir = backends.tmp / f"workers-{backend}"
        chains[backend] = asyncio.run(hop_latency(backends, backend, cfg, log_dir))
        c = chains[backend]
        print(
            f"  {backend}: {c['hops']} hops, p50 {c['hop_p50_ms']} ms, p99 {c['hop_p99_ms']} ms",
            flush=True,
        )
        fans[backend] = asyncio.run(fan_plain(backends, backend, sink, cfg))
        fans[backend]["breakdown"] = store_work_breakdown(fans[backend])
        fans[backend]["workers"] = chains[backend].pop("fan_workers")
        sink.wait_idle()
        f = fans[backend]
        print(
            f"  {backend}: fan-out of {cfg.fan_tasks}: join after "
            f"{f['start_to_join_dispatched_s']} s",
            flush=True,
        )
    checks = _checks(cfg, chains, fans)
    _print(cfg, chains, fans)
    figures = {"config": asdict(cfg), "chain": chains, "fan_out": fans}
    return BenchResult(NAME, figures, checks)


def _checks(
    cfg: PipelinesConfig, chains: dict[str, dict[str, Any]], fans: dict[str, dict[str, Any]]
) -> list[Check]:
    checks: list[Check] = []
    for backend in chains:
        c, f = chains[backend], fans[backend]
        base = f["scheduled_plain_run"]
        if backend == "sqlite":
            checks += [
                Check(
                    NAME,
                    backend,
                    f"hop p50 <= {cfg.hop_p50_target_ms:g} ms",
                    f"{c['hop_p50_ms']} ms over {c['hops']} hops",
                    c["hop_p50_ms"] <= cfg.hop_p50_target_ms,
                ),
                Check(
                    NAME,
                    backend,
                    f"hop p99 <= {cfg.hop_p99_target_ms:g} ms",
                    f"{c['hop_p99_ms']} ms (max {c['hop_max_ms']} ms)",
                    c["hop_p99_ms"] <= cfg.hop_p99_target_ms,
                ),
                Check(
                    NAME,
                    backend,
                    f"{cfg.fan_tasks} tasks + join: join starts <= {cfg.fan_target_s:g} s",
                    f"{f['start_to_join_dispatched_s']} s",
                    f["start_to_join_dispatched_s"] <= cfg.fan_target_s,
                ),
            ]
        checks.append(
            Check(
                NAME,
                backend,
                "store work per task run <= a scheduled plain run's",
                f"{f['marginal_reads_per_task_run']} reads, "
                f"{f['marginal_writes_per_task_run']} writes vs "
                f"{base['reads_per_run']} reads, {base['writes_per_run']} writes",
                f["marginal_reads_per_task_run"] <= base["reads_per_run"]
                and f["marginal_writes_per_task_run"] <= base["writes_per_run"],
            )
        )
    return checks


def store_work_breakdown(fan: dict[str, Any]) -> str:
    """One line saying which operations make up a task run's reads and writes.

    Per task run, from the calls counted in the fan-out tick: ``spawn`` creates every
    task run (1 write each, its pipeline run's update aside), ``update_run`` is one write
    per call that won its compare-and-set (the send's record, clearing ``settle_at``,
    the few pipeline-run updates), ``mark_upstream`` one write returning the marked run
    (one read), ``get_run`` one read.
    """
    n = int(fan["task_runs"])
    calls: dict[str, int] = fan["calls"]
    refused: dict[str, int] = fan["calls_refused"]

    def per(x: float) -> float:
        return round(x / n, 2)

    created = n if calls.get("spawn") else 0
    updates = calls.get("update_run", 0) - refused.get("update_run", 0)
    marks = calls.get("mark_upstream", 0)
    return (
        f"writes/task run: {per(created)} created by spawn + "
        f"{per(updates)} update_run (the ends, the pipeline run's start and end) + {per(marks)} "
        f"mark_upstream; reads/task run: {per(marks)} returned by mark_upstream + "
        f"{per(calls.get('get_run', 0))} get_run (the pipeline run, read to judge the join)"
    )


def _print(
    cfg: PipelinesConfig, chains: dict[str, dict[str, Any]], fans: dict[str, dict[str, Any]]
) -> None:
    names = list(chains)

    def workers_fan(r: dict[str, Any]) -> Any:
        fan = r["workers"]
        return fan["start_to_join_start_s"] if fan else None

    chain_rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("hops measured", lambda r: r["hops"]),
        ("hop p50 (ms)", lambda r: r["hop_p50_ms"]),
        ("hop p90 (ms)", lambda r: r["hop_p90_ms"]),
        ("hop p99 (ms)", lambda r: r["hop_p99_ms"]),
        ("hop max (ms)", lambda r: r["hop_max_ms"]),
        ("pipeline start to first task start, p50 (ms)", lambda r: r["start_to_first_task_p50_ms"]),
        (f"whole pipeline of {cfg.chain_tasks}, p50 (s)", lambda r: r["pipeline_wall_p50_s"]),
    ]
    print_table(
        f"Hop latency: a chain of {cfg.chain_tasks} no-op worker tasks (one functions-framework "
        f"process), {cfg.chain_repeats} pipeline runs; hop = next started_at - previous ended_at",
        ["figure", *names],
        [[label, *(fn(chains[b]) for b in names)] for label, fn in chain_rows],
        right=[False] + [True] * len(names),
    )
    fan_rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("pipeline start to join dispatched (s)", lambda r: r["start_to_join_dispatched_s"]),
        ("same on worker targets: to join start (s)", workers_fan),
        ("tick wall time (s)", lambda r: r["tick_wall_s"]),
        ("task runs", lambda r: r["task_runs"]),
        ("store reads / task run (one more task)", lambda r: r["marginal_reads_per_task_run"]),
        ("store writes / task run (one more task)", lambda r: r["marginal_writes_per_task_run"]),
        ("pipeline run's own reads (once)", lambda r: r["pipeline_fixed_reads"]),
        ("pipeline run's own writes (once)", lambda r: r["pipeline_fixed_writes"]),
        ("store reads / task run (all work / task runs)", lambda r: r["reads_per_task_run"]),
        ("store writes / task run (all work / task runs)", lambda r: r["writes_per_task_run"]),
        ("store queries / task run", lambda r: r["queries_per_task_run"]),
        ("scheduled plain run: reads / run", lambda r: r["scheduled_plain_run"]["reads_per_run"]),
        (
            "scheduled plain run: writes / run",
            lambda r: r["scheduled_plain_run"]["writes_per_run"],
        ),
        (
            "scheduled plain run: queries / run",
            lambda r: r["scheduled_plain_run"]["queries_per_run"],
        ),
        (
            "compare-and-sets lost (no write) / task run",
            lambda r: round(sum(r["calls_refused"].values()) / r["task_runs"], 2),
        ),
        ("received exactly once", lambda r: r["receipts"]["exactly_once"]),
    ]
    print_table(
        f"Fan-out and fan-in: {cfg.fan_tasks} parallel plain tasks (sink /ack/0) and a join, "
        "one tick; store work counted in this process",
        ["figure", *names],
        [[label, *(fn(fans[b]) for b in names)] for label, fn in fan_rows],
        right=[False] + [True] * len(names),
    )
    methods = sorted(
        {m for b in names for m in (*fans[b]["calls"], *fans[b]["scheduled_plain_run"]["calls"])}
    )
    print_table(
        "Store calls per run: per task run in the fan-out tick (the breakdown of the counts "
        "above), and per run in a tick of as many scheduled plain runs",
        ["store method", *(f"{b}: task" for b in names), *(f"{b}: scheduled" for b in names)],
        [
            [
                m,
                *(fans[b]["calls_per_task_run"].get(m, 0) for b in names),
                *(fans[b]["scheduled_plain_run"]["calls_per_run"].get(m, 0) for b in names),
            ]
            for m in methods
        ],
    )
    for b in names:
        print(f"{b}: {fans[b]['breakdown']}")
    sys.stdout.flush()
