"""Fan-out: one tick fires N due schedules at a plain endpoint that answers after 50 ms.

Per backend (SQLite in a temp dir, the Firestore emulator):

1. seed N hourly schedules, all due (their first occurrence just passed), targeting
   ``/ack/50`` on the sink process;
2. run ONE real tick (``Dispatcher.tick``) with ``concurrency`` 64, the default
   ``max_open`` and a budget large enough to finish; the store's counters are reset just
   before it;
3. measure the store's raw bound in the same run: on a fresh namespace/file seeded the
   same way, the same N claim-shaped atomic writes (``Store.claim``: the schedule update
   plus one run create, planned beforehand) at the same concurrency without HTTP,
   then the N one-write outcome records (``update_run`` with ``current``), as the tick
   does after each send.

The HTTP bound is measured once, against the same sink: ``concurrency / latency`` with
the nominal 50 ms (64 / 0.05 = 1,280/s) and with the latency measured under load, plus
firecron's ``Sender`` alone (no store) at 64 in flight and with the production split
(64 sending, 1,000 open).

CPU shares (CPU seconds / wall seconds) of the dispatcher process, the sink and the
emulator show which of the machine's cores was busy doing what during the tick.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._common import (
    Backends,
    BenchResult,
    Check,
    CpuMeter,
    SinkProcess,
    bench_settings,
    dispatch_keys,
    pct,
    print_table,
    receipt_check,
    schedules,
    seed,
    whole_second,
)
from firecron.core import lifecycle, planning
from firecron.core.lifecycle import SendOutcome
from firecron.core.runs import Run
from firecron.dispatch import Dispatcher, timeouts_for
from firecron.store.base import Store
from firecron.transport.sender import Dispatch, Sender

NAME = "fanout"


@dataclass(frozen=True)
class FanoutConfig:
    schedules: int = 10_000
    concurrency: int = 64
    delay_ms: int = 50
    tick_budget_s: float = 120.0
    window_s: float = 60.0
    """The Cloud Scheduler cadence: the target is every run fired within this."""
    http_requests: int = 4_000
    """Requests per Sender-alone measurement."""
    latency_probes: int = 40
    """Sequential requests for the idle latency."""


# -- the HTTP bound ---------------------------------------------------------------------


async def _drive(
    sender: Sender, dispatch: Dispatch, n: int, workers: int
) -> tuple[float, list[float]]:
    """``n`` sends by ``workers`` loops; returns (requests/s, per-request latencies)."""
    left = n
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            result = await sender.send(dispatch)
            latencies.append(time.perf_counter() - t)
            assert result.status_code == 200, result

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return n / (time.perf_counter() - started), latencies


async def http_bound(sink: SinkProcess, cfg: FanoutConfig) -> dict[str, Any]:
    url = f"{sink.url}/ack/{cfg.delay_ms}"
    dispatch = Dispatch(
        url=url, body=b'{"run_id":"probe"}', headers={"content-type": "application/json"}, key="-"
    )
    c = cfg.concurrency
    nominal = c / (cfg.delay_ms / 1000)

    def sender(max_open: int) -> Sender:
        return Sender(concurrency=c, max_open=max_open, ack_timeout=5.0, allow_private_targets=True)

    one = Sender(concurrency=1, max_open=1, ack_timeout=5.0, allow_private_targets=True)
    _, idle = await _drive(one, dispatch, cfg.latency_probes, 1)
    s64 = sender(c)
    await _drive(s64, dispatch, min(200, cfg.http_requests), c)  # warm-up
    cpu = time.process_time()
    rate64, loaded = await _drive(s64, dispatch, cfg.http_requests, c)
    cpu64 = time.process_time() - cpu
    split = sender(1000)
    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(split.send(dispatch) for _ in range(cfg.http_requests)))
    rate_split = cfg.http_requests / (time.perf_counter() - started)
    cpu_split = time.process_time() - cpu
    loaded_median = statistics.median(loaded)
    sink.reset()
    return {
        "concurrency": c,
        "sink_delay_ms": cfg.delay_ms,
        "bound_nominal_per_s": round(nominal),
        "latency_idle_median_ms": round(1000 * statistics.median(idle), 1),
        "latency_loaded_median_ms": round(1000 * loaded_median, 1),
        "latency_loaded_p99_ms": round(1000 * _quantile(loaded, 0.99), 1),
        "bound_measured_latency_per_s": round(c / loaded_median),
        "sender_alone_64_in_flight_per_s": round(rate64),
        "sender_alone_64_cpu_ms_per_request": round(1000 * cpu64 / cfg.http_requests, 3),
        "sender_alone_64_send_1000_open_per_s": round(rate_split),
        "sender_alone_64_send_1000_open_cpu_ms_per_request": round(
            1000 * cpu_split / cfg.http_requests, 3
        ),
        "requests_per_probe": cfg.http_requests,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the store bound --------------------------------------------------------------------


async def store_bound(
    backends: Backends, backend: str, cfg: FanoutConfig, url: str
) -> dict[str, Any]:
    """Claims/s and outcome writes/s of the store alone, at the tick's concurrency."""
    store = backends.open(backend, "bound")
    try:
        due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
        await seed(store, schedules("bound", cfg.schedules, url, due))
        now = datetime.now(UTC)
        stored = await store.due_schedules(now, cfg.schedules)
        assert len(stored) == cfg.schedules, len(stored)
        timeouts = timeouts_for(bench_settings())
        plans = [
            (s, planning.plan(s, None, now, pending_grace=timeouts.pending_grace)) for s in stored
        ]
        slots = asyncio.Semaphore(cfg.concurrency)
        created: list[Run] = []

        async def claim(s: Any, plan: planning.Plan) -> None:
            async with slots:
                runs = await store.claim(s, plan.new_state, plan.runs)
            assert runs is not None
            created.extend(runs)

        store.stats.reset()
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(claim(s, p) for s, p in plans))
        claim_s, claim_cpu = time.perf_counter() - started, time.process_time() - cpu
        claim_writes = store.stats.writes

        async def record(run: Run) -> None:
            change = lifecycle.sent(
                run, datetime.now(UTC), SendOutcome.acknowledged, timeouts, status_code=200
            )
            async with slots:
                done = await store.update_run(run.id, change.expect, change.changes, current=run)
            assert done is not None

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(record(r) for r in created))
        update_s, update_cpu = time.perf_counter() - started, time.process_time() - cpu
        n = cfg.schedules
        return {
            "claims": n,
            "claim_s": round(claim_s, 2),
            "claims_per_s": round(n / claim_s),
            "writes_per_claim": round(claim_writes / n, 2),
            "claim_cpu_ms": round(1000 * claim_cpu / n, 3),
            "outcome_writes_per_s": round(n / update_s),
            "outcome_write_cpu_ms": round(1000 * update_cpu / n, 3),
            "claim_plus_outcome_per_s": round(n / (claim_s + update_s)),
        }
    finally:
        await store.close()


# -- the tick ---------------------------------------------------------------------------


async def tick_once(
    backends: Backends, backend: str, sink: SinkProcess, cfg: FanoutConfig
) -> dict[str, Any]:
    url = f"{sink.url}/ack/{cfg.delay_ms}"
    store: Store = backends.open(backend, "fanout")
    try:
        due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
        items = schedules("fan", cfg.schedules, url, due)
        seed_s = await seed(store, items)
        settings = bench_settings(
            concurrency=cfg.concurrency, tick_budget=timedelta(seconds=cfg.tick_budget_s)
        )
        dispatcher = Dispatcher(store, settings)
        meter = CpuMeter(sink.pid, backends.emulator_pids())
        await asyncio.to_thread(sink.reset)
        store.stats.reset()
        meter.start()
        wall_start = time.time()
        started = time.perf_counter()
        try:
            summary = await dispatcher.tick()
            wall = time.perf_counter() - started
            cpu = meter.stop()
        finally:
            await dispatcher.aclose()
        reads, writes, queries = store.stats.reads, store.stats.writes, store.stats.queries
        stats = await asyncio.to_thread(sink.stats)
    finally:
        await store.close()
    records = stats["records"]
    times = sorted(r[2] - wall_start for r in records)
    fired = summary.fired
    return {
        "backend": backend,
        "schedules": cfg.schedules,
        "seed_s": round(seed_s, 2),
        "fired": fired,
        "claimed": summary.claimed,
        "outcomes": dict(summary.outcomes),
        "errors": summary.errors[:5],
        "more_due": summary.more_due,
        "tick_wall_s": round(wall, 2),
        "fired_per_s": round(fired / wall, 1) if wall else 0.0,
        "last_receipt_s": round(times[-1], 2) if times else None,
        "received_within_window": sum(1 for t in times if t <= cfg.window_s),
        "window_s": cfg.window_s,
        "store_reads": reads,
        "store_writes": writes,
        "store_queries": queries,
        "reads_per_fired": round(reads / fired, 3) if fired else None,
        "writes_per_fired": round(writes / fired, 3) if fired else None,
        "dispatcher_cpu_ms_per_fired": round(1000 * cpu["dispatcher_cpu_s"] / fired, 3)
        if fired
        else None,
        **cpu,
        "receipts": receipt_check(records, dispatch_keys(items, due)),
    }


async def _backend_run(
    backends: Backends, backend: str, sink: SinkProcess, cfg: FanoutConfig
) -> dict[str, Any]:
    http = await http_bound(sink, cfg)
    tick = await tick_once(backends, backend, sink, cfg)
    tick["http"] = http
    print(
        f"  {backend}: fired {tick['fired']:,} in {tick['tick_wall_s']}s; measuring the store bound...",
        flush=True,
    )
    tick["store_bound"] = await store_bound(backends, backend, cfg, f"{sink.url}/ack/0")
    return tick


def run(
    backends: Backends, backend_names: list[str], sink: SinkProcess, cfg: FanoutConfig
) -> BenchResult:
    print(f"\n[fanout] {cfg.schedules:,} due schedules, one tick, concurrency {cfg.concurrency}")
    per_backend: dict[str, dict[str, Any]] = {}
    for backend in backend_names:
        per_backend[backend] = asyncio.run(_backend_run(backends, backend, sink, cfg))
        sink.wait_idle()

    checks: list[Check] = []
    for backend, r in per_backend.items():
        bound, http = r["store_bound"], r["http"]
        rate = r["fired_per_s"]
        r["percent_of_http_bound"] = pct(rate, http["bound_nominal_per_s"])
        r["percent_of_measured_latency_bound"] = pct(rate, http["bound_measured_latency_per_s"])
        r["percent_of_sender_alone_64"] = pct(rate, http["sender_alone_64_in_flight_per_s"])
        r["percent_of_store_claim_bound"] = pct(rate, bound["claims_per_s"])
        r["percent_of_store_cycle_bound"] = pct(rate, bound["claim_plus_outcome_per_s"])
        cpu_ms = r["dispatcher_cpu_ms_per_fired"]
        r["dispatcher_cpu_bound_per_s"] = round(1000 / cpu_ms) if cpu_ms else None
        r["percent_of_dispatcher_cpu_bound"] = pct(rate, r["dispatcher_cpu_bound_per_s"] or 0)
        limits = {
            "http (64 / loaded latency)": http["bound_measured_latency_per_s"],
            "store (claim + outcome write)": bound["claim_plus_outcome_per_s"],
            "dispatcher CPU (one core)": r["dispatcher_cpu_bound_per_s"] or float("inf"),
        }
        r["limiting_bound"] = min(limits, key=lambda k: limits[k])
        store_cpu = round(bound["claim_cpu_ms"] + bound["outcome_write_cpu_ms"], 3)
        rest_cpu = None
        if r["dispatcher_cpu_ms_per_fired"] is not None:
            rest_cpu = round(
                r["dispatcher_cpu_ms_per_fired"]
                - http["sender_alone_64_cpu_ms_per_request"]
                - store_cpu,
                3,
            )
        r["cpu_ms_breakdown"] = {
            "tick_per_fired": r["dispatcher_cpu_ms_per_fired"],
            "sender_alone_per_request": http["sender_alone_64_cpu_ms_per_request"],
            "store_claim_plus_outcome": store_cpu,
            "rest": rest_cpu,
        }
        if backend == "sqlite":
            checks.append(
                Check(
                    NAME,
                    backend,
                    ">= 70% of the HTTP bound (64 / 50 ms)",
                    f"{rate:,.0f}/s = {r['percent_of_http_bound']}% of {http['bound_nominal_per_s']:,}/s",
                    r["percent_of_http_bound"] >= 70,
                )
            )
        else:
            checks.append(
                Check(
                    NAME,
                    backend,
                    f"all {cfg.schedules:,} fired within {cfg.window_s:g} s",
                    f"{r['received_within_window']:,} in {cfg.window_s:g} s "
                    f"(last at {r['last_receipt_s']} s); limited by {r['limiting_bound']}",
                    r["received_within_window"] == cfg.schedules,
                )
            )
        checks += [
            Check(
                NAME,
                backend,
                "<= 1 read per fired run",
                f"{r['reads_per_fired']}",
                r["reads_per_fired"] is not None and r["reads_per_fired"] <= 1,
            ),
            Check(
                NAME,
                backend,
                "<= 3 writes per fired run",
                f"{r['writes_per_fired']}",
                r["writes_per_fired"] is not None and r["writes_per_fired"] <= 3,
            ),
            Check(
                NAME,
                backend,
                "every fired run received exactly once",
                _receipt_line(r["receipts"]),
                r["receipts"]["exactly_once"] and r["fired"] == cfg.schedules,
            ),
        ]
    _print(cfg, per_backend)
    return BenchResult(NAME, {"config": cfg.__dict__, "backends": per_backend}, checks)


def _print(cfg: FanoutConfig, per_backend: dict[str, dict[str, Any]]) -> None:
    def share(r: dict[str, Any]) -> str:
        emulator = r.get("emulator_cpu_share")
        parts = [
            r["dispatcher_cpu_share"],
            r["sink_cpu_share"],
            "-" if emulator is None else emulator,
        ]
        return " / ".join(map(str, parts))

    figures: list[tuple[str, Any]] = [
        ("fired", lambda r: r["fired"]),
        ("tick wall time (s)", lambda r: r["tick_wall_s"]),
        ("fired/s", lambda r: r["fired_per_s"]),
        (
            f"all fired within {cfg.window_s:g} s",
            lambda r: r["received_within_window"] == cfg.schedules,
        ),
        ("last dispatch received at (s)", lambda r: r["last_receipt_s"]),
        ("store reads / fired run", lambda r: r["reads_per_fired"]),
        ("store writes / fired run", lambda r: r["writes_per_fired"]),
        ("HTTP bound 64 / 50 ms (/s)", lambda r: r["http"]["bound_nominal_per_s"]),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_http_bound']}%"),
        (
            "sink latency idle / loaded (ms)",
            lambda r: (
                f"{r['http']['latency_idle_median_ms']} / {r['http']['latency_loaded_median_ms']}"
            ),
        ),
        (
            "HTTP bound 64 / loaded latency (/s)",
            lambda r: r["http"]["bound_measured_latency_per_s"],
        ),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_measured_latency_bound']}%"),
        ("Sender alone, 64 in flight (/s)", lambda r: r["http"]["sender_alone_64_in_flight_per_s"]),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_sender_alone_64']}%"),
        (
            "Sender alone, 64 send / 1000 open (/s)",
            lambda r: r["http"]["sender_alone_64_send_1000_open_per_s"],
        ),
        ("store bound: claims/s (64 at once)", lambda r: r["store_bound"]["claims_per_s"]),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_store_claim_bound']}%"),
        ("store bound: outcome writes/s", lambda r: r["store_bound"]["outcome_writes_per_s"]),
        (
            "store bound: claim + outcome (/s)",
            lambda r: r["store_bound"]["claim_plus_outcome_per_s"],
        ),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_store_cycle_bound']}%"),
        (
            "dispatcher CPU bound: 1000 / CPU ms per run",
            lambda r: r["dispatcher_cpu_bound_per_s"],
        ),
        ("  fired/s as % of it", lambda r: f"{r['percent_of_dispatcher_cpu_bound']}%"),
        ("lowest bound", lambda r: r["limiting_bound"]),
        ("CPU share: dispatcher / sink / emulator", share),
        (
            "CPU share: whole machine (of 2.0) / steal",
            lambda r: f"{r['machine_busy_share']} / {r['machine_steal_share']}",
        ),
        ("dispatcher CPU ms / fired run", lambda r: r["cpu_ms_breakdown"]["tick_per_fired"]),
        (
            "  Sender alone, CPU ms / request",
            lambda r: r["cpu_ms_breakdown"]["sender_alone_per_request"],
        ),
        (
            "  store alone, CPU ms / claim + outcome",
            lambda r: r["cpu_ms_breakdown"]["store_claim_plus_outcome"],
        ),
        ("  rest (planning, tasks, contention)", lambda r: r["cpu_ms_breakdown"]["rest"]),
        ("received exactly once", lambda r: r["receipts"]["exactly_once"]),
    ]
    names = list(per_backend)
    print_table(
        f"Fan-out: {cfg.schedules:,} due schedules, one tick, concurrency {cfg.concurrency}, "
        f"sink answers after {cfg.delay_ms} ms",
        ["figure", *names],
        [[label, *(fn(per_backend[b]) for b in names)] for label, fn in figures],
        right=[False] + [True] * len(names),
    )


def _receipt_line(r: dict[str, Any]) -> str:
    return (
        f"{r['unique']:,}/{r['expected']:,} received, {r['duplicates']} duplicates, "
        f"{r['missing']} missing, {r['unexpected']} unexpected"
    )
