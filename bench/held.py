"""Held targets: N due runs whose target holds every request far beyond ``ack_timeout``.

The sink's ``/hold/60`` keeps each request open for 60 s. With the defaults
(concurrency 64, max_open 1,000, ack_timeout 5 s) one tick must send all N, wait at most
``ack_timeout`` for the acknowledgements that never come, record each run as
delivered-unacknowledged and return: its wall time should be about claim + send +
``ack_timeout``, not N / 64 * ``ack_timeout``. The sink process raises its own open-files
limit, so it can hold every connection.
"""

from __future__ import annotations

import asyncio
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
    print_table,
    receipt_check,
    schedules,
    seed,
    whole_second,
)
from firecron.dispatch import Dispatcher

NAME = "held"


@dataclass(frozen=True)
class HeldConfig:
    runs: int = 1_000
    hold_s: float = 60.0
    ack_timeout_s: float = 5.0
    concurrency: int = 64
    max_open: int = 1_000
    slack_s: float = 2.0
    """Target: tick wall time <= ack_timeout + slack."""


async def held_once(
    backends: Backends, backend: str, sink: SinkProcess, cfg: HeldConfig
) -> dict[str, Any]:
    store = backends.open(backend, "held")
    try:
        due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
        items = schedules("held", cfg.runs, f"{sink.url}/hold/{cfg.hold_s:g}", due)
        seed_s = await seed(store, items)
        dispatcher = Dispatcher(
            store,
            bench_settings(
                concurrency=cfg.concurrency,
                max_open=cfg.max_open,
                ack_timeout=timedelta(seconds=cfg.ack_timeout_s),
            ),
        )
        await asyncio.to_thread(sink.reset)
        meter = CpuMeter(sink.pid, backends.emulator_pids())
        meter.start()
        wall_start = time.time()
        started = time.perf_counter()
        try:
            summary = await dispatcher.tick()
            wall = time.perf_counter() - started
            cpu = meter.stop()
        finally:
            await dispatcher.aclose()
        stats = await asyncio.to_thread(sink.stats)
        runs = await store.list_runs(limit=cfg.runs + 10)
    finally:
        await store.close()
    last_sent = max((r[2] for r in stats["records"]), default=wall_start) - wall_start
    states: dict[str, int] = {}
    for run in runs:
        states[run.state.value] = states.get(run.state.value, 0) + 1
    return {
        "backend": backend,
        "runs": cfg.runs,
        "seed_s": round(seed_s, 2),
        "fired": summary.fired,
        "outcomes": dict(summary.outcomes),
        "errors": summary.errors[:5],
        "tick_wall_s": round(wall, 2),
        "target_s": cfg.ack_timeout_s + cfg.slack_s,
        "last_request_received_s": round(last_sent, 2),
        "after_last_ack_deadline_s": round(wall - last_sent - cfg.ack_timeout_s, 2),
        "sink_peak_open": stats["peak_open"],
        "run_states": states,
        **cpu,
        "receipts": receipt_check(stats["records"], dispatch_keys(items, due)),
    }


def run(
    backends: Backends, backend_names: list[str], sink: SinkProcess, cfg: HeldConfig
) -> BenchResult:
    print(
        f"\n[held] {cfg.runs:,} due runs, target holds {cfg.hold_s:g}s, "
        f"ack_timeout {cfg.ack_timeout_s:g}s"
    )
    per_backend: dict[str, dict[str, Any]] = {}
    for backend in backend_names:
        per_backend[backend] = r = asyncio.run(held_once(backends, backend, sink, cfg))
        print(f"  {backend}: tick {r['tick_wall_s']}s", flush=True)
        if not sink.wait_idle(cfg.hold_s + 10):
            print("  warning: the sink still holds requests", flush=True)
    rows: list[list[object]] = []
    checks: list[Check] = []
    for backend, r in per_backend.items():
        serial = cfg.runs / cfg.concurrency * cfg.ack_timeout_s
        rows.append(
            [
                backend,
                r["fired"],
                r["outcomes"].get("unacknowledged", 0),
                r["tick_wall_s"],
                r["target_s"],
                r["last_request_received_s"],
                r["after_last_ack_deadline_s"],
                f"{r['tick_wall_s'] / cfg.ack_timeout_s:.2f}x",
                f"{serial:,.0f}",
                r["sink_peak_open"],
                r["receipts"]["exactly_once"],
            ]
        )
        checks += [
            Check(
                NAME,
                backend,
                f"tick <= ack_timeout + {cfg.slack_s:g}s = {r['target_s']:g}s ({cfg.runs:,} held)",
                f"{r['tick_wall_s']} s",
                r["tick_wall_s"] <= r["target_s"],
            ),
            Check(
                NAME,
                backend,
                "every held run received exactly once",
                f"{r['receipts']['unique']:,}/{r['receipts']['expected']:,}, "
                f"{r['receipts']['duplicates']} duplicates",
                r["receipts"]["exactly_once"],
            ),
        ]
    print_table(
        f"Held targets: {cfg.runs:,} runs, holds {cfg.hold_s:g}s, ack_timeout "
        f"{cfg.ack_timeout_s:g}s, concurrency {cfg.concurrency}, max_open {cfg.max_open:,}",
        [
            "backend",
            "fired",
            "unacked",
            "tick s",
            "target s",
            "last sent at s",
            "after its ack deadline s",
            "tick/ack",
            "if serial by slot, s",
            "sink peak open",
            "once",
        ],
        rows,
    )
    print(
        "  (tick = claim and send all, then ack_timeout for the last one sent, then record"
        " the outcomes that all time out together)"
    )
    return BenchResult(NAME, {"config": cfg.__dict__, "backends": per_backend}, checks)
