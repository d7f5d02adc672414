"""Workers killed, frozen and resumed, and timed out; and a dispatcher clock 100 s ahead.

Two functions-framework processes serve the chaos worker (``_worker_app.py``, which
logs each attempt's start and end): ``a`` takes first attempts, ``b`` stands for the
fresh instance that takes retries (the dispatcher resolves ``function`` targets at send
time, so ticks after the fault use ``b``'s base URL). Ticks run at explicit instants,
each just past the run's ``watch_at`` or ``retry_at``, and the harness waits (polling
the store) while an attempt makes real progress, so that no healthy attempt is judged
by a clock that was pushed ahead. Scenarios, each with one schedule:

- **killed**: ``a`` is SIGKILLed once attempt 1 started; the retry runs on ``b``;
- **frozen**: ``a`` is SIGSTOPped once attempt 1 started; once attempt 2 started on
  ``b``, ``a`` is SIGCONTed and resumes attempt 1;
- **timeout**: a 2 s ``timeout`` on an 8 s job that honours cancellation.

Counted from the attempt log: overlapping attempts, attempts executed twice; from the
store: results recorded by a stale attempt (the run's output names an older attempt
than its own), runs not terminal at the end; tracebacks in both workers' logs.

The **skew +100 s** row: 5 healthy runs of 8 s heartbeating on ``a``; a dispatcher
whose clock runs 100 s ahead ticks twice (at its own ``now``). Counted: runs it marked
lost and runs executed a second time.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.chaos._count import Row, count_attempts, count_tracebacks
from bench.chaos._env import (
    Lab,
    StoreRef,
    await_for,
    now,
    read_jsonl,
    signal_group,
    workers,
)
from firecron.core import planning
from firecron.core.models import ScheduleSpec
from firecron.core.runs import Run, RunState, scheduled_run_id
from firecron.dispatch import Dispatcher
from firecron.store import Store

NAME = "workers"
_LIVE = (RunState.dispatched, RunState.running)


def _started(log: Path, run_id: str, attempt: int) -> bool:
    return any(
        line["event"] == "start" and line["run"] == run_id and line["attempt"] == attempt
        for line in read_jsonl(log)
    )


async def _add(store: Store, schedule_id: str, at: datetime, **fields: Any) -> str:
    spec = ScheduleSpec.model_validate(
        {
            "id": schedule_id,
            "every": "1h",
            "start_at": at,
            "target": {"function": "chaos_sleepy"},
            "retry": {"max_attempts": 3, "backoff": "1s"},
            **fields,
        }
    )
    state = planning.initial_state(spec, at - timedelta(seconds=1))
    await store.put_schedule(spec, state, expect_version=None)
    return scheduled_run_id(schedule_id, at)


class _Scenario:
    def __init__(self, ref: StoreRef, store: Store, bases: dict[str, str]) -> None:
        self.ref, self.store, self.bases = ref, store, bases
        self.ticks = 0

    def dispatcher(self, base: str, clock_offset: timedelta = timedelta(0)) -> Dispatcher:
        settings = self.ref.settings(functions_base_url=self.bases[base])
        return Dispatcher(self.store, settings, clock=lambda: now() + clock_offset)

    async def tick(self, base: str, at: datetime) -> None:
        d = self.dispatcher(base)
        try:
            await d.tick(at)
        finally:
            await d.aclose()
        self.ticks += 1

    async def get(self, run_id: str) -> Run:
        run = await self.store.get_run(run_id)
        assert run is not None, run_id
        return run

    async def drive(self, run_id: str, base: str, *, patience: float, limit: int = 12) -> Run:
        """Tick just past the run's next deadline until it ends (at most ``limit`` ticks).

        A dispatched or running attempt is first given ``patience`` seconds of real time to
        move the run on by itself (a healthy attempt must not be judged at an instant the
        harness pushed ahead); 0 when the harness knows the attempt is dead or frozen.
        """
        for _ in range(limit):
            run = await self.get(run_id)
            if run.is_terminal:
                return run
            if patience and run.state in _LIVE:

                async def moved(r: Run = run) -> bool:
                    fresh = await self.get(run_id)
                    return fresh.state != r.state or fresh.attempt != r.attempt

                if await await_for(moved, within=patience):
                    continue
                run = await self.get(run_id)
            due = run.retry_at if run.state is RunState.retry_wait else run.watch_at
            await self.tick(base, max(now(), due or now()) + timedelta(seconds=1))
        return await self.get(run_id)


async def _scenarios(lab: Lab, ref: StoreRef, backend: str) -> tuple[Row, Row]:
    row = Row("workers killed/frozen/timed out", backend)
    skew_row = Row("clock +100 s (watchdog)", backend)
    log_dir = lab.tmp / f"workers-{backend}"
    attempt_log = log_dir / "attempts.jsonl"
    log_dir.mkdir(parents=True, exist_ok=True)
    store = ref.open()
    killed_at: dict[str, float] = {}
    details: dict[str, Any] = {}
    try:
        with workers(ref, ["a", "b"], log_dir, attempt_log) as served:
            a, b = served["a"], served["b"]
            bases = {k: f"http://127.0.0.1:{w.port}" for k, w in served.items()}
            sc = _Scenario(ref, store, bases)
            finals: list[Run] = []

            async def first_attempt(schedule_id: str, **fields: Any) -> str:
                start = now()
                run_id = await _add(store, schedule_id, start, **fields)
                await sc.tick("a", start)
                await await_for(lambda: _async(_started(attempt_log, run_id, 1)), within=30)
                return run_id

            # timeout: the watchdog asks attempt 1 to stop; the retry goes to b.
            run_id = await first_attempt(
                "w-timeout",
                params={"seconds": 8},
                timeout="2s",
                retry={"max_attempts": 2, "backoff": "1s"},
            )
            finals.append(await sc.drive(run_id, "b", patience=4))

            # frozen, then resumed once attempt 2 started on b.
            run_id = await first_attempt("w-frozen", params={"seconds": 6})
            pids = _group(a.process.pid)
            signal_group(pids, signal.SIGSTOP)
            try:
                for _ in range(8):
                    if _started(attempt_log, run_id, 2):
                        break
                    await sc.drive(run_id, "b", patience=0, limit=1)
                    await await_for(lambda: _async(_started(attempt_log, run_id, 2)), within=5)
            finally:
                signal_group(pids, signal.SIGCONT)
            finals.append(await sc.drive(run_id, "b", patience=30))
            # attempt 1 ends by itself once resumed: wait for its end line
            await await_for(
                lambda: _async(
                    any(
                        ln["event"] == "end" and ln["run"] == run_id and ln["attempt"] == 1
                        for ln in read_jsonl(attempt_log)
                    )
                ),
                within=30,
            )
            finals[-1] = await sc.get(run_id)

            # skew +100 s: healthy runs on a, judged by a dispatcher 100 s ahead.
            start = now()
            skew_ids = [
                await _add(store, f"w-skew-{i}", start, params={"seconds": 8}) for i in range(5)
            ]
            await sc.tick("a", start)
            for rid in skew_ids:
                await await_for(lambda r=rid: _async(_started(attempt_log, r, 1)), within=30)
            ahead = sc.dispatcher("a", timedelta(seconds=100))
            try:
                await ahead.tick()
                skewed = [await sc.get(r) for r in skew_ids]
                await asyncio.sleep(1.5)  # past the retries' 1 s backoff, as the next tick would be
                await ahead.tick()
            finally:
                await ahead.aclose()

            async def skew_done() -> bool:
                return all([(await sc.get(r)).is_terminal for r in skew_ids])

            await await_for(skew_done, within=60)
            marked_lost = sum(
                1
                for r in skewed
                if r.state is RunState.lost
                or any(att.outcome is RunState.lost for att in r.attempts)
                or r.attempt > 1
            )

            # killed: attempt 1 dies with its instance; the retry goes to b.
            run_id = await first_attempt("w-killed", params={"seconds": 3})
            for pid in _group(a.process.pid):
                killed_at[str(pid)] = now().timestamp()
            a.kill()
            for _ in range(6):
                if _started(attempt_log, run_id, 2) or (await sc.get(run_id)).is_terminal:
                    break
                await sc.drive(run_id, "b", patience=0, limit=1)
            finals.append(await sc.drive(run_id, "b", patience=30))
            logs = a.logs() + b.logs()
    finally:
        await store.close()
    lines = read_jsonl(attempt_log)
    scenario_lines = [ln for ln in lines if not str(ln["run"]).startswith("w-skew")]
    skew_lines = [ln for ln in lines if str(ln["run"]).startswith("w-skew")]
    attempts = count_attempts(scenario_lines, killed_at)
    skew_attempts = count_attempts(skew_lines, killed_at)
    stale = sum(
        1
        for r in finals
        if isinstance(r.output, dict)
        and isinstance(r.output.get("attempt"), int)
        and r.output["attempt"] != r.attempt
    )
    row.tries = len(finals)
    row.duplicates = attempts.duplicates
    row.overlaps = attempts.overlaps
    row.stale_results = stale
    row.stuck = sum(1 for r in finals if not r.is_terminal)
    row.tracebacks = count_tracebacks(logs)
    details.update(
        executions=attempts.executions,
        max_overlap_s=attempts.max_overlap_s,
        runs={
            r.schedule_id: {
                "state": r.state.value,
                "attempt": r.attempt,
                "output": r.output,
                "attempts": [a.outcome.value if a.outcome else None for a in r.attempts],
            }
            for r in finals
        },
        ticks=sc.ticks,
    )
    row.details = details
    executed_twice = len(
        {ln["run"] for ln in skew_lines if ln["event"] == "start" and ln["attempt"] > 1}
    )
    skew_row.tries = len(skew_ids)
    skew_row.duplicates = executed_twice
    skew_row.overlaps = skew_attempts.overlaps
    skew_row.skew_faults = marked_lost
    skew_row.details = {"healthy_runs_marked_lost": marked_lost, "executed_twice": executed_twice}
    return row, skew_row


async def _async(value: bool) -> bool:
    return value


def _group(pgid: int) -> list[int]:
    from _emulators import group_members

    members: list[int] = group_members(pgid)
    return members


def run(lab: Lab, backend: str) -> list[Row]:
    ref = lab.store(backend, "workers")
    return list(asyncio.run(_scenarios(lab, ref, backend)))
