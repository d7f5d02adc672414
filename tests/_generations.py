"""Helpers for the continuous-schedule tests."""

from __future__ import annotations

from datetime import UTC, datetime

from _poll import apoll
from firecron import admin
from firecron.core.runs import Run
from firecron.store.base import Store


async def pause_and_stop(store: Store, schedule_id: str) -> Run:
    """Pause a continuous schedule and wait until its live generation has ended.

    The live one is whichever the pause found: with short windows, the generation a
    test waited for may have handed over before the pause landed. Returns it, ended.
    """
    paused = await admin.pause(store, schedule_id, datetime.now(UTC))
    assert paused.state.paused
    live = paused.state.last_run_id
    assert live is not None
    ended = await apoll(
        lambda: store.get_run(live),
        lambda r: r is not None and r.is_terminal,
        what=f"{schedule_id}'s live generation stopped by the pause",
    )
    assert ended is not None
    return ended
