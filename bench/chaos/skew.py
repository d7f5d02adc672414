"""A dispatcher whose clock runs 150 s ahead: does it fire occurrences early?

``due`` hourly schedules whose first occurrences fall 10 to 140 s in the future, aimed at
the sink's ``/ack/0``; one tick by a dispatcher whose clock (``Dispatcher(clock=...)``,
and so its planning instant) runs ``ahead_s`` ahead. An early fire is a request the sink
received more than a second before its occurrence's instant. (The clock-100 s row of
``workers.py`` covers the watchdog side.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from bench._common import seed, whole_second
from bench.chaos._count import Row, occurrence_of
from bench.chaos._env import Lab, StoreRef, now
from firecron.core import planning
from firecron.core.models import ScheduleSpec, ScheduleState
from firecron.core.runs import scheduled_run_id
from firecron.dispatch import Dispatcher

NAME = "clock +150 s (firing)"


@dataclass(frozen=True)
class SkewConfig:
    due: int = 300
    ahead_s: float = 150.0


async def _run(ref: StoreRef, lab: Lab, cfg: SkewConfig) -> tuple[int, float, int]:
    base = whole_second(now()) + timedelta(seconds=10)
    items: list[tuple[ScheduleSpec, ScheduleState]] = []
    instants: dict[str, datetime] = {}
    for i in range(cfg.due):
        at = base + timedelta(seconds=round(130 * i / max(1, cfg.due)))
        spec = ScheduleSpec.model_validate(
            {
                "id": f"skew-{i:05d}",
                "every": "1h",
                "start_at": at,
                "target": {"url": f"{lab.sink.url}/ack/0"},
            }
        )
        items.append((spec, planning.initial_state(spec, at - timedelta(seconds=1))))
        instants[scheduled_run_id(spec.id, at)] = at
    store = ref.open()
    offset = timedelta(seconds=cfg.ahead_s)
    dispatcher = Dispatcher(store, ref.settings(), clock=lambda: now() + offset)
    try:
        await seed(store, items)
        lab.sink.reset()
        await dispatcher.tick()
    finally:
        await dispatcher.aclose()
        await store.close()
    early, worst = 0, 0.0
    records = lab.sink.stats()["records"]
    for key, _path, received_at, _ in records:
        instant = instants.get(occurrence_of(str(key)))
        if instant is None:
            continue
        lead = instant.timestamp() - float(received_at)
        if lead > 1.0:
            early += 1
            worst = max(worst, lead)
    return early, round(worst, 1), len(records)


def run(lab: Lab, backend: str, cfg: SkewConfig) -> Row:
    ref = lab.store(backend, "skew")
    early, worst, received = asyncio.run(_run(ref, lab, cfg))
    return Row(
        NAME,
        backend,
        tries=cfg.due,
        skew_faults=early,
        details={"early_fires": early, "max_early_s": worst, "received": received},
    )
