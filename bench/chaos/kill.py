"""The dispatcher SIGKILLed at random points of its tick, then healed by later ticks.

Per round: ``due`` hourly schedules, all due, aimed at the sink's plain ``/ack/0``; a
dispatcher subprocess (``_driver``) ticks and is SIGKILLed once the sink has received a
seeded-random number of requests (between none and all but one: before its claims, between
a claim and its POST, between a POST and its outcome write). Then in-process ticks at
explicit later instants (past ``pending_grace``) drive the store to quiescence. Every
occurrence should have been received once under one key.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import timedelta

from bench._common import schedules, seed, whole_second
from bench.chaos._count import Row, count_receipts, count_tracebacks
from bench.chaos._env import DriverProcess, Lab, StoreRef, now, settle, unfinished_runs, wait_for
from firecron.core.runs import scheduled_run_id

NAME = "dispatcher SIGKILL"


@dataclass(frozen=True)
class KillConfig:
    rounds: int = 20
    due: int = 1_000
    budget_s: float = 100.0
    """No round starts after this many seconds (the experiment stays under 2 minutes)."""


async def _seed(ref: StoreRef, prefix: str, n: int, url: str) -> tuple[list[str], object]:
    due = whole_second(now() - timedelta(seconds=1))
    items = schedules(prefix, n, url, due)
    store = ref.open()
    try:
        await seed(store, items)
    finally:
        await store.close()
    return [scheduled_run_id(spec.id, due) for spec, _ in items], due


def run(lab: Lab, backend: str, cfg: KillConfig) -> Row:
    row = Row(NAME, backend)
    rng = random.Random(f"{lab.seed}-kill-{backend}")
    ref = lab.store(backend, "kill")
    url = f"{lab.sink.url}/ack/0"
    keys: list[str] = []
    expected: list[str] = []
    killed = 0
    tracebacks = 0
    started = time.monotonic()
    rounds = 0
    for i in range(cfg.rounds):
        if time.monotonic() - started > cfg.budget_s:
            break
        rounds += 1
        ids, _ = asyncio.run(_seed(ref, f"k{i:02d}", cfg.due, url))
        expected += ids
        lab.sink.reset()
        target = rng.randrange(0, cfg.due)
        driver = DriverProcess(ref, lab.tmp / f"kill-{backend}-{i}.log")
        driver.wait_ticking()
        wait_for(
            lambda d=driver, k=target: (
                d.proc.poll() is not None or lab.sink.stats()["received"] >= k
            ),
            timeout=120,
            interval=0.005,
        )
        if driver.proc.poll() is None:
            killed += 1
            driver.kill()
        else:
            driver.finish(timeout=10)
        tracebacks += count_tracebacks(driver.log_path.read_text(errors="replace"))
        settled = asyncio.run(settle(ref, now() + timedelta(minutes=3)))
        tracebacks += sum(1 for s in settled for e in s.errors if "Traceback" in e)
        keys += [str(r[0]) for r in lab.sink.stats()["records"]]
    receipts = count_receipts(keys, expected)
    stuck = asyncio.run(unfinished_runs(ref))
    row.tries = len(expected)
    row.duplicates = receipts.duplicates
    row.resends = receipts.resends
    row.losses = receipts.losses
    row.stuck = len(stuck)
    row.tracebacks = tracebacks
    row.details = {
        "rounds": rounds,
        "due_per_round": cfg.due,
        "dispatchers_killed": killed,
        "received": receipts.received,
        "unexpected": receipts.unexpected,
        "examples": receipts.examples,
        "stuck_examples": [f"{r.id} {r.state.value}" for r in stuck[:3]],
    }
    return row
