"""Second precision through Cloud Tasks: how late the runs of ``*/1 * * * * *`` start.

One schedule with the 6-field cron ``*/1 * * * * *`` (every second), ``delivery:
cloud_tasks`` and ``overlap: allow``, whose target is ``hello`` of ``functions/main.py``
in ONE real functions-framework worker process, reached through the Cloud Tasks
emulator (``tests/_tasks_emulator.py``, the tests' harness, started here). A real
:class:`~firecron.dispatch.Dispatcher` ticks once a minute, as Cloud Scheduler calls
dispatch: with a queue configured, a tick plans the coming minute's occurrences
(planning's lookahead, ``dispatch.TASKS_LOOKAHEAD``) and enqueues each with
``schedule_time`` at its second; the emulator holds each task until then and POSTs it to
the worker, which records the run's start in the store.

Ticks are at ``T``, ``T + 60 s``... (``T`` a whole second) and the occurrences run from
``T + 1 s`` to ``T + occurrences`` s (``start_at``, ``end_at``): the steady state of a
schedule that runs all day, where the occurrence at a tick's own second was handed over
by the tick before, and each tick must hand over the next second's before that second
(a tick slower than a second makes its first occurrences late: the ticks' wall times
are reported). Every occurrence is handed over ahead of its second.

**Lateness** of a run is ``started_at`` (the worker's record of its start, on its clock)
minus ``scheduled_for``; it is split into the emulator's part (``sent_at`` of the
emulator's delivery log minus ``scheduled_for``: when it began the POST) and the
worker's (its start minus that). Target: p99 <= 1 s. Every process is on this machine,
so the clocks are one clock.

What the emulator changes (see ``tests/_tasks_emulator.py``): it looks at its queue every
0.1 s (Cloud Tasks' own dispatch precision is not published) and sends one queue's
tasks one after the other, so a worker answer slower than a second would delay the
next occurrence (``hello`` answers in milliseconds, so it does not here).
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from _tasks_emulator import (
    QUEUE,
    Delivery,
    TasksEmulator,
    emulator_executable,
    start_tasks_emulator,
)
from _workers import serve_worker, worker_env
from bench._common import (
    Backends,
    BenchResult,
    Check,
    bench_settings,
    open_shared,
    print_table,
    wait_until,
)
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.render import rfc3339
from firecron.core.runs import Run
from firecron.dispatch import Dispatcher
from firecron.store.base import Store

NAME = "scale_seconds"
CRON = "*/1 * * * * *"
SECRET = "whsec_YmVuY2gtc2Vjb25kcy1wcmVjaXNpb24"
"""The signing secret the bench's dispatcher and its worker process share."""
TICK_INTERVAL = timedelta(minutes=1)
"""Cloud Scheduler's cadence: one tick a minute."""
_POLL_S = 0.25


@dataclass(frozen=True)
class SecondsConfig:
    occurrences: int = 120
    """Occurrences on SQLite, one a second: 120 spans two ticks, so the hand-over from
    one tick's minute to the next is measured too (about 2.5 minutes of wall time)."""
    firestore_occurrences: int = 60
    """Occurrences on the Firestore emulator (figures only)."""
    lead_s: float = 2.0
    """The first tick is this long (rounded up to a whole second) after the setup."""
    settle_s: float = 30.0
    """How long after the last occurrence its start may take before the bench gives up."""
    p99_target_s: float = 1.0

    @classmethod
    def quick(cls) -> SecondsConfig:
        """One tick's minute: 60 occurrences on each backend (about 1.5 minutes each)."""
        return cls(occurrences=60, firestore_occurrences=60)


# -- pure helpers -------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (``q=0.99`` of 120 values is the 119th smallest).

    Raises ValueError for no values.
    """
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q))
    return ordered[rank - 1]


def spread_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """``count`` and the p50, p99, min and max of ``seconds``, in milliseconds (None
    when there are none)."""
    if not seconds:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "min_ms": None, "max_ms": None}
    return {
        "count": len(seconds),
        "p50_ms": round(quantile(seconds, 0.50) * 1000, 1),
        "p99_ms": round(quantile(seconds, 0.99) * 1000, 1),
        "min_ms": round(min(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


def first_instant(now: datetime, lead_s: float) -> datetime:
    """The first whole second at least ``lead_s`` after ``now``."""
    later = now + timedelta(seconds=lead_s)
    whole = later.replace(microsecond=0)
    return whole if whole == later else whole + timedelta(seconds=1)


def tick_instants(start: datetime, occurrences: int) -> list[datetime]:
    """When the bench ticks: at ``start`` and every minute after, as long as some of the
    ``occurrences`` (seconds ``start + 1`` to ``start + occurrences``) are not yet
    planned. A tick that starts at or after ``t`` plans every occurrence before ``t + 1
    min``, so the tick at ``start + 60k`` covers seconds ``60k + 1`` to ``60k + 60``."""
    return [start + k * TICK_INTERVAL for k in range(math.ceil(occurrences / 60))]


def seconds_spec(schedule_id: str, url: str, start: datetime, occurrences: int) -> ScheduleSpec:
    """The measured schedule: every second after ``start``, ``occurrences`` of them,
    through Cloud Tasks to the worker at ``url``; overlapping runs allowed (each second's
    run is independent of the one before, whose worker may not have ended yet)."""
    return ScheduleSpec.model_validate(
        {
            "id": schedule_id,
            "cron": CRON,
            "start_at": rfc3339(start + timedelta(seconds=1)),
            "end_at": rfc3339(start + timedelta(seconds=occurrences)),
            "overlap": "allow",
            "timeout": "1m",
            "target": {"url": url, "worker": True, "delivery": "cloud_tasks"},
        }
    )


def lateness(runs: Sequence[Run]) -> list[float]:
    """Seconds from each started run's ``scheduled_for`` to its ``started_at``."""
    return [
        (r.started_at - r.scheduled_for).total_seconds() for r in runs if r.started_at is not None
    ]


def send_times(deliveries: Sequence[Delivery], keys: dict[str, str]) -> dict[str, float]:
    """Run id -> when the emulator began its POST, for the task ids in ``keys`` (task id
    -> run id); the first send of each."""
    out: dict[str, float] = {}
    for d in deliveries:
        run_id = keys.get(d.task)
        if run_id is not None and d.sent_at is not None and run_id not in out:
            out[run_id] = d.sent_at
    return out


# -- one backend --------------------------------------------------------------------------


async def _wait_started(store: Store, occurrences: int, deadline: float) -> list[Run]:
    """The schedule's runs, once all ``occurrences`` started or at ``deadline``
    (``time.monotonic()``)."""
    while True:
        runs: list[Run] = await store.list_runs(limit=occurrences + 10)
        started = [r for r in runs if r.started_at is not None]
        if len(started) >= occurrences or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(_POLL_S)


async def seconds_once(
    backends: Backends, backend: str, emulator: TasksEmulator, occurrences: int, cfg: SecondsConfig
) -> dict[str, Any]:
    shared = open_shared(backends, backend, "seconds")
    store = shared.store
    env = worker_env(shared.url, secrets=[SECRET], namespace=shared.namespace)
    log_dir = Path(tempfile.mkdtemp(prefix="firecron-bench-seconds-"))
    ticks: list[dict[str, Any]] = []
    try:
        with serve_worker("hello", env=env, log_dir=log_dir) as worker:
            start = first_instant(datetime.now(UTC), cfg.lead_s)
            spec = seconds_spec(f"seconds-{uuid4().hex[:6]}", worker.url, start, occurrences)
            state = planning.initial_state(spec, datetime.now(UTC))
            await store.put_schedule(spec, state, expect_version=None)
            settings = bench_settings(
                tasks_queue=QUEUE, tasks_emulator_host=emulator.host, signing_secrets=(SECRET,)
            )
            dispatcher = Dispatcher(store, settings)
            queue = dispatcher.task_queue
            assert queue is not None  # settings name a queue
            try:
                for at in tick_instants(start, occurrences):
                    while datetime.now(UTC) < at:  # a tick starts at or after its instant
                        await wait_until(at)
                    began = time.perf_counter()
                    behind = (datetime.now(UTC) - at).total_seconds()
                    summary = await dispatcher.tick()
                    ticks.append(
                        {
                            "late_ms": round(behind * 1000, 1),
                            "wall_ms": round((time.perf_counter() - began) * 1000, 1),
                            "enqueued": summary.outcomes.get("unacknowledged", 0),
                            "errors": summary.errors[:3],
                        }
                    )
            finally:
                await dispatcher.aclose()
            last = start + timedelta(seconds=occurrences)
            remaining = (last - datetime.now(UTC)).total_seconds() + cfg.settle_s
            runs = await _wait_started(store, occurrences, time.monotonic() + remaining)
    finally:
        await store.close()
    keys = {queue.task_id(f"{r.id}/{r.attempt}"): r.id for r in runs}
    deliveries = emulator.deliveries()
    sent = send_times(deliveries, keys)
    started = [r for r in runs if r.started_at is not None]
    late = lateness(started)
    queue_part = [sent[r.id] - r.scheduled_for.timestamp() for r in started if r.id in sent]
    worker_part = [
        r.started_at.timestamp() - sent[r.id]
        for r in started
        if r.id in sent and r.started_at is not None
    ]
    states: dict[str, int] = {}
    for r in runs:
        states[r.state.value] = states.get(r.state.value, 0) + 1
    return {
        "backend": backend,
        "occurrences": occurrences,
        "runs": len(runs),
        "started": len(started),
        "started_early": sum(1 for x in late if x < 0),
        "retried": sum(1 for r in runs if r.attempt > 1),
        "sends_per_task": max(
            (sum(1 for d in deliveries if d.task == t and not d.refused) for t in keys), default=0
        ),
        "run_states": states,
        "lateness": spread_ms(late),
        "lateness_by_second_ms": {
            str(round((r.scheduled_for - start).total_seconds())): round(x * 1000, 1)
            for r, x in zip(started, late, strict=True)
        },
        "emulator_send_after_scheduled": spread_ms(queue_part),
        "worker_start_after_send": spread_ms(worker_part),
        "ticks": ticks,
    }


# -- the benchmark ------------------------------------------------------------------------


def run(backends: Backends, names: list[str], cfg: SecondsConfig) -> BenchResult:
    """Measure each backend of ``names`` in turn with one emulator (see the module
    docstring); raises RuntimeError when the emulator is not installed."""
    executable = emulator_executable()
    if executable is None:
        raise RuntimeError("gcloud-tasks-emulator not found: run make tasks-emulator")
    print(f"\n[{NAME}] {CRON} through the Cloud Tasks emulator to one worker, ticks each minute")
    emulator = start_tasks_emulator(executable)
    per_backend: dict[str, dict[str, Any]] = {}
    try:
        for backend in names:
            n = cfg.occurrences if backend == "sqlite" else cfg.firestore_occurrences
            if n <= 0:
                continue
            print(f"  {backend}: {n} occurrences (about {n / 60 + 0.5:.1f} min)...", flush=True)
            per_backend[backend] = r = asyncio.run(
                seconds_once(backends, backend, emulator, n, cfg)
            )
            print(
                f"  {backend}: started {r['started']}/{n}, "
                f"p99 {r['lateness']['p99_ms']} ms, max {r['lateness']['max_ms']} ms",
                flush=True,
            )
    finally:
        emulator.stop()
    rows: list[list[object]] = []
    tick_rows: list[list[object]] = []
    checks: list[Check] = []
    for backend, r in per_backend.items():
        late, queue_part, worker_part = (
            r["lateness"],
            r["emulator_send_after_scheduled"],
            r["worker_start_after_send"],
        )
        rows.append(
            [
                backend,
                r["occurrences"],
                r["started"],
                r["started_early"],
                late["p50_ms"],
                late["p99_ms"],
                late["max_ms"],
                queue_part["p50_ms"],
                queue_part["p99_ms"],
                worker_part["p50_ms"],
                worker_part["p99_ms"],
            ]
        )
        for i, tick in enumerate(r["ticks"]):
            tick_rows.append([backend, i, tick["late_ms"], tick["wall_ms"], tick["enqueued"]])
        p99 = late["p99_ms"]
        complete = r["started"] == r["occurrences"] and r["sends_per_task"] == 1
        checks.append(
            Check(
                NAME,
                backend,
                f"lateness p99 <= {cfg.p99_target_s:g} s, every occurrence started once",
                f"p99 {p99} ms, started {r['started']}/{r['occurrences']}, "
                f"early {r['started_early']}",
                p99 is not None
                and p99 <= cfg.p99_target_s * 1000
                and complete
                and r["started_early"] == 0,
            )
        )
    print_table(
        f"Second precision: {CRON} via Cloud Tasks (emulator) to one worker, lateness in ms "
        "(scheduled_for -> the worker's start; queue: -> the emulator's POST)",
        [
            "backend",
            "occurrences",
            "started",
            "early",
            "p50",
            "p99",
            "max",
            "queue p50",
            "queue p99",
            "worker p50",
            "worker p99",
        ],
        rows,
    )
    print_table(
        "Ticks (late: after their minute's instant; enqueued: tasks handed over)",
        ["backend", "tick", "late ms", "wall ms", "enqueued"],
        tick_rows,
    )
    return BenchResult(NAME, {"config": _config(cfg), "backends": per_backend}, checks)


def _config(cfg: SecondsConfig) -> dict[str, Any]:
    return {
        "cron": CRON,
        "occurrences": cfg.occurrences,
        "firestore_occurrences": cfg.firestore_occurrences,
        "p99_target_s": cfg.p99_target_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.scale_seconds [--quick] [--backends sqlite,firestore]``: this
    benchmark alone (``bench/__main__.py`` runs it as part of ``scale``)."""
    import argparse

    from bench._common import RESULTS_DIR, backend_names, machine_info, write_json

    parser = argparse.ArgumentParser(prog="python -m bench.scale_seconds")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--occurrences", type=int)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    names = backend_names(args.backends)
    if names is None:
        return 2
    cfg = SecondsConfig.quick() if args.quick else SecondsConfig()
    if args.occurrences is not None:
        cfg = replace(cfg, occurrences=args.occurrences, firestore_occurrences=args.occurrences)
    with tempfile.TemporaryDirectory(prefix="firecron-bench-") as tmp:
        backends = Backends(Path(tmp))
        try:
            result = run(backends, names, cfg)
        finally:
            backends.close()
    path = write_json(args.results_dir, NAME, {**result.as_dict(), "machine": machine_info()})
    print(f"wrote {path}")
    return 0 if all(c.passed for c in result.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
