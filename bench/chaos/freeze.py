"""The store frozen mid-tick, then healed by later ticks.

``due`` schedules aimed at the sink's ``/ack/0``; a dispatcher subprocess ticks, and once
the sink has received a third of them the store is frozen for ``freeze_s`` seconds:
SQLite by an exclusive lock held on another connection (longer than the store's 30 s
busy timeout), the emulator by SIGSTOP on its process group (gcloud's launcher and its
Java process), then SIGCONT. The tick may end with errors, but never with a traceback,
and in-process ticks at later explicit instants must heal everything: no loss, nothing
stuck, no occurrence under two keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from bench.chaos._count import Row, count_receipts, count_tracebacks
from bench.chaos._env import (
    DriverProcess,
    Lab,
    StoreRef,
    now,
    settle,
    signal_group,
    unfinished_runs,
    wait_for,
)
from bench.chaos.kill import _seed

NAME = "store frozen mid-tick"


@dataclass(frozen=True)
class FreezeConfig:
    due: int = 300
    freeze_s: float = 40.0
    tick_timeout_s: float = 60.0
    """How long after the thaw the tick may take before it counts as hung (and is killed)."""


@contextlib.contextmanager
def frozen(lab: Lab, ref: StoreRef) -> Iterator[None]:
    """The store unusable while inside: an exclusive SQLite lock, or a stopped emulator."""
    if ref.backend == "sqlite":
        conn = sqlite3.connect(ref.url.removeprefix("sqlite:///"), timeout=60)
        conn.isolation_level = None
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        pids = lab.emulator_pids()
        signal_group(pids, signal.SIGSTOP)
        try:
            yield
        finally:
            signal_group(pids, signal.SIGCONT)


def run(lab: Lab, backend: str, cfg: FreezeConfig) -> Row:
    row = Row(NAME, backend)
    ref = lab.store(backend, "freeze")
    ids, _ = asyncio.run(_seed(ref, "fz", cfg.due, f"{lab.sink.url}/ack/0"))
    lab.sink.reset()
    driver = DriverProcess(ref, lab.tmp / f"freeze-{backend}.log")
    driver.wait_ticking()
    wait_for(
        lambda: driver.proc.poll() is not None or lab.sink.stats()["received"] >= cfg.due // 3,
        timeout=60,
        interval=0.005,
    )
    received_before = lab.sink.stats()["received"]
    with frozen(lab, ref):
        time.sleep(cfg.freeze_s)  # the outage itself: nothing to poll for
    code, summary = driver.finish(timeout=cfg.tick_timeout_s)
    log = driver.log_path.read_text(errors="replace")
    settled = asyncio.run(settle(ref, now() + timedelta(minutes=3)))
    receipts = count_receipts((str(r[0]) for r in lab.sink.stats()["records"]), ids)
    stuck = asyncio.run(unfinished_runs(ref))
    row.tries = cfg.due
    row.duplicates = receipts.duplicates
    row.resends = receipts.resends
    row.losses = receipts.losses
    row.stuck = len(stuck)
    row.tracebacks = count_tracebacks(log)
    row.details = {
        "freeze_s": cfg.freeze_s,
        "received_before_freeze": received_before,
        "tick_exit_code": code,
        "tick_hung": code is None,
        "tick_errors": (summary or {}).get("errors", [])[:3],
        "tick_error_lines": [ln for ln in log.splitlines() if "ERROR" in ln][:3],
        "healing_ticks": len(settled),
        "examples": receipts.examples,
    }
    return row
