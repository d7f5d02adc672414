"""A continuous schedule's generations as ``firecron show`` and the dev view tell them.

Pure: the runs are read by the caller, and the instant that bounds the history is passed
in. A *handoff* is generation N+1 caused by the end of generation N (its
``cause_run_id``); a generation started by ``apply`` or ``resume`` has no cause and is
no handoff. Its *gap* is ``N+1.started_at - N.ended_at``, the time during which no
generation ran; a successor that has not started yet has no gap (it is waiting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from firecron.core.runs import Run

__all__ = ["Handoff", "History", "handoffs", "history", "live_generation"]


@dataclass(frozen=True)
class Handoff:
    """Generation ``previous`` ended and caused ``successor``."""

    previous: Run
    """Generation N, ended."""
    successor: Run
    """Generation N+1, in whatever state it is now."""

    @property
    def at(self) -> datetime:
        """When the handoff happened: the end of N (the write that records it creates N+1)."""
        return self.previous.ended_at or self.successor.created_at

    @property
    def gap(self) -> timedelta | None:
        """``successor.started_at - previous.ended_at``; None while the successor has not
        started (it is waiting: queued behind a backoff, or not yet sent)."""
        if self.successor.started_at is None or self.previous.ended_at is None:
            return None
        return self.successor.started_at - self.previous.ended_at

    @property
    def crashed(self) -> bool:
        """Whether N counted as a crash (failed, lost, timed out, or ended within
        ``QUICK_END`` of its start): the verdict the handoff itself recorded, as the
        successor's ``failures``."""
        return self.successor.failures > 0


@dataclass(frozen=True)
class History:
    """What :func:`history` found among the runs it was given."""

    live: Run | None
    """The newest generation (alive unless the chain stopped: paused, disabled, deleted)."""
    handoffs: list[Handoff]
    """Handoffs at or after ``since``, newest first."""
    truncated: bool
    """The runs given were a full page that did not reach back to ``since``: older
    handoffs within the period exist but were not read, so the counts are lower bounds."""

    @property
    def gaps(self) -> list[timedelta]:
        """The gaps of the handoffs whose successor started, newest first."""
        return [h.gap for h in self.handoffs if h.gap is not None]

    @property
    def gap_p50_max(self) -> tuple[timedelta, timedelta] | None:
        """The median and the largest of :attr:`gaps` (nearest rank); None when no
        successor has started."""
        gaps = sorted(self.gaps)
        if not gaps:
            return None
        return gaps[math.ceil(0.5 * len(gaps)) - 1], gaps[-1]


def live_generation(runs: Sequence[Run]) -> Run | None:
    """The run with the highest generation among ``runs`` (None: no generation at all)."""
    generations = [r for r in runs if r.generation is not None]
    return max(generations, key=lambda r: r.generation or 0, default=None)


def handoffs(runs: Sequence[Run], since: datetime) -> list[Handoff]:
    """The handoffs among ``runs`` (any order) that happened at or after ``since``, newest
    first. A successor whose predecessor is not among ``runs`` is left out: its gap
    cannot be told."""
    by_id = {r.id: r for r in runs if r.generation is not None}
    found = [
        Handoff(by_id[r.cause_run_id], r)
        for r in by_id.values()
        if r.cause_run_id is not None and r.cause_run_id in by_id
    ]
    found = [h for h in found if h.at >= since]
    return sorted(found, key=lambda h: h.successor.generation or 0, reverse=True)


def history(runs: Sequence[Run], since: datetime, *, limit: int | None = None) -> History:
    """The live generation and the handoffs since ``since`` among ``runs``, which are the
    schedule's newest runs; ``limit`` is the size of the page they were read with (None:
    all of them), which tells whether the page may have stopped short of ``since``."""
    full = limit is not None and len(runs) >= limit
    truncated = full and all(r.created_at >= since for r in runs)
    return History(live=live_generation(runs), handoffs=handoffs(runs, since), truncated=truncated)
