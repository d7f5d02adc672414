"""The decoupling case (docs/design.md, "Why it exists"): N jobs of W seconds of work, all due at once.

- Baseline: a thread-holding scheduler with 4 slots. Four threads take the due jobs in
  order; each job is a blocking POST to the sink's ``/sync/W``, which starts the job
  when the request arrives and answers only when its W seconds of work are done, so a
  slot is held for the whole job, as such schedulers do.
- firecron: N schedules due at the same instant in a real store, and ONE real tick at
  that instant against ``/work/W``, a sink path that models a worker: the job starts
  when the request arrives, ``202`` and its headers are streamed at once, and the body
  stays open for the W seconds of work.

Both report when each job started (as the sink saw it) relative to the due time, and
when all work was done; firecron also reports the tick's wall time.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._common import (
    Backends,
    BenchResult,
    Check,
    SinkProcess,
    bench_settings,
    dispatch_keys,
    print_table,
    receipt_check,
    schedules,
    seed,
    wait_until,
    whole_second,
)
from firecron.dispatch import Dispatcher

NAME = "decoupling"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class DecouplingConfig:
    jobs: tuple[int, ...] = (9, 50)
    work_s: float = 5.0
    slots: int = 4
    """The baseline scheduler's threads."""
    tick_target_s: float = 1.0
    start_target_s: float = 2.0


def _timings(records: list[list[Any]], due: float) -> dict[str, Any]:
    starts = sorted(r[2] - due for r in records)
    ends = [r[3] - due for r in records if r[3] is not None]
    return {
        "first_start_s": round(starts[0], 3) if starts else None,
        "latest_start_s": round(starts[-1], 3) if starts else None,
        "all_work_done_s": round(max(ends), 3) if len(ends) == len(records) and ends else None,
    }


def _wait_for_work(sink: SinkProcess, n: int, timeout: float) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records: list[list[Any]] = sink.stats()["records"]
        done = len(records) >= n and all(r[3] is not None for r in records)
        if done or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def baseline(sink: SinkProcess, n: int, cfg: DecouplingConfig) -> dict[str, Any]:
    """A 4-thread scheduler: each slot runs a job to its end before taking the next."""
    sink.reset()
    url = f"{sink.url}/sync/{cfg.work_s:g}"
    keys = [f"job-{i:03d}" for i in range(n)]
    client_starts: dict[str, float] = {}

    def job(key: str) -> None:
        client_starts[key] = time.time()
        request = urllib.request.Request(
            url, data=b"{}", headers={"webhook-id": key, "content-type": "application/json"}
        )
        with _OPENER.open(request, timeout=cfg.work_s + 60) as response:
            response.read()

    due = time.time() + 0.3
    time.sleep(max(0.0, due - time.time()))
    with ThreadPoolExecutor(max_workers=cfg.slots) as pool:
        list(pool.map(job, keys))
    wall = time.time() - due
    records = _wait_for_work(sink, n, 5)
    return {
        "scheduler": f"{cfg.slots} blocking slots",
        "jobs": n,
        "scheduler_busy_s": round(wall, 2),
        "expected_latest_start_s": (math.ceil(n / cfg.slots) - 1) * cfg.work_s,
        **_timings(records, due),
        "receipts": receipt_check(records, keys),
    }


async def _firecron(
    backends: Backends, backend: str, sink: SinkProcess, n: int, cfg: DecouplingConfig
) -> dict[str, Any]:
    store = backends.open(backend, "decoupling")
    try:
        due = whole_second(datetime.now(UTC)) + timedelta(seconds=2)
        items = schedules("job", n, f"{sink.url}/work/{cfg.work_s:g}", due)
        await seed(store, items)
        dispatcher = Dispatcher(store, bench_settings())
        dispatcher.sender  # noqa: B018  (created before the due time, as in a warm function)
        await asyncio.to_thread(sink.reset)
        await wait_until(due)
        started = time.perf_counter()
        try:
            summary = await dispatcher.tick()
            wall = time.perf_counter() - started
        finally:
            await dispatcher.aclose()
    finally:
        await store.close()
    records = await asyncio.to_thread(_wait_for_work, sink, n, cfg.work_s + 10)
    return {
        "scheduler": f"firecron tick ({backend})",
        "jobs": n,
        "fired": summary.fired,
        "outcomes": dict(summary.outcomes),
        "tick_wall_s": round(wall, 3),
        "scheduler_busy_s": round(wall, 3),
        **_timings(records, due.timestamp()),
        "receipts": receipt_check(records, dispatch_keys(items, due)),
    }


def run(
    backends: Backends, backend_names: list[str], sink: SinkProcess, cfg: DecouplingConfig
) -> BenchResult:
    print(
        f"\n[decoupling] {', '.join(map(str, cfg.jobs))} jobs of {cfg.work_s:g}s, all due at once"
    )
    cases: list[dict[str, Any]] = []
    rows: list[list[object]] = []
    checks: list[Check] = []
    for n in cfg.jobs:
        base = baseline(sink, n, cfg)
        print(f"  {n} jobs: baseline busy {base['scheduler_busy_s']}s", flush=True)
        case: dict[str, Any] = {"jobs": n, "baseline": base, "firecron": {}}
        rows.append(
            [
                n,
                base["scheduler"],
                base["scheduler_busy_s"],
                base["latest_start_s"],
                base["expected_latest_start_s"],
                base["all_work_done_s"],
                "",
            ]
        )
        for backend in backend_names:
            fc = asyncio.run(_firecron(backends, backend, sink, n, cfg))
            case["firecron"][backend] = fc
            ok_tick = fc["tick_wall_s"] < cfg.tick_target_s
            ok_start = (
                fc["latest_start_s"] is not None and fc["latest_start_s"] < cfg.start_target_s
            )
            rows.append(
                [
                    n,
                    fc["scheduler"],
                    fc["tick_wall_s"],
                    fc["latest_start_s"],
                    None,
                    fc["all_work_done_s"],
                    f"tick {'PASS' if ok_tick else 'FAIL'}, start {'PASS' if ok_start else 'FAIL'}",
                ]
            )
            checks += [
                Check(
                    NAME,
                    backend,
                    f"{n} jobs: tick < {cfg.tick_target_s:g} s",
                    f"{fc['tick_wall_s']} s (baseline busy {base['scheduler_busy_s']} s)",
                    ok_tick,
                ),
                Check(
                    NAME,
                    backend,
                    f"{n} jobs: latest start < {cfg.start_target_s:g} s after due",
                    f"{fc['latest_start_s']} s (baseline {base['latest_start_s']} s)",
                    ok_start,
                ),
                Check(
                    NAME,
                    backend,
                    f"{n} jobs: each started exactly once",
                    f"{fc['receipts']['unique']}/{fc['receipts']['expected']}, "
                    f"{fc['receipts']['duplicates']} duplicates",
                    fc["receipts"]["exactly_once"],
                ),
            ]
        cases.append(case)
    print_table(
        f"Decoupling: jobs of {cfg.work_s:g}s, all due at once (times in s after the due time)",
        [
            "jobs",
            "scheduler",
            "busy (tick) s",
            "latest start",
            "expected",
            "all work done",
            "targets",
        ],
        rows,
    )
    return BenchResult(NAME, {"config": cfg.__dict__, "cases": cases}, checks)
