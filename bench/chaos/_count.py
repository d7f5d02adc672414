"""How the chaos suite counts: pure functions over what the sink, the workers and the
store recorded, so that the counting itself is tested on fixtures (tests/test_bench_smoke.py).

Definitions (the README's Reliability section repeats them):

- a **re-send** is one idempotency key received more than once by a plain target: an
  idempotent target absorbs it, so it is not a duplicate;
- a **duplicate** is one occurrence received under two or more *different* keys (each
  extra key counts once), or one worker attempt that started executing more than once;
- a **loss** is an occurrence that should have fired and was never received;
- a **stuck** run is one still non-terminal after the system was driven to quiescence;
- a **skew fault** is an occurrence fired more than a second before its instant, or a
  healthy, heartbeating run marked lost, by a dispatcher whose clock runs ahead;
- two attempts of one run **overlap** when the older one was still executing more than
  :data:`OVERLAP_TOLERANCE_S` after the newer one started.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HEARTBEAT_S = 0.3
"""The chaos worker's heartbeat interval (``bench/chaos/_worker_app.py``)."""
OVERLAP_TOLERANCE_S = HEARTBEAT_S + 0.05
"""An attempt that was frozen learns at its next heartbeat that it was superseded, so up
to one heartbeat interval (plus stamp noise) of overlap is the design's bound, not a fault."""

COLUMNS = (
    "tries",
    "duplicates",
    "resends",
    "losses",
    "stuck",
    "http_5xx",
    "bad_exits",
    "tracebacks",
    "overlaps",
    "stale_results",
    "partial_applies",
    "skew_faults",
)
"""The figures of every row, in table order; ``None`` means "not measured here"."""

_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)


@dataclass
class Row:
    """One experiment on one store: the table's figures, plus details for the JSON."""

    experiment: str
    backend: str
    tries: int = 0
    duplicates: int | None = None
    resends: int | None = None
    losses: int | None = None
    stuck: int | None = None
    http_5xx: int | None = None
    bad_exits: int | None = None
    """CLI exit codes other than 0 (ok) and 2 (invalid input)."""
    tracebacks: int | None = None
    overlaps: int | None = None
    stale_results: int | None = None
    partial_applies: int | None = None
    skew_faults: int | None = None
    """Skewed clock: occurrences fired early, or healthy runs marked lost."""
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, **figures: int) -> None:
        """Add to figures (a ``None`` figure starts at 0)."""
        for name, value in figures.items():
            setattr(self, name, (getattr(self, name) or 0) + value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def occurrence_of(key: str) -> str:
    """The occurrence a dispatch key names: ``{run_id}/{attempt}`` without the attempt."""
    head, sep, tail = key.rpartition("/")
    return head if sep and tail.isdigit() else key


@dataclass(frozen=True)
class Receipts:
    """What a plain target received, against the occurrences that should have arrived."""

    expected: int
    received: int
    duplicates: int
    resends: int
    losses: int
    unexpected: int
    examples: dict[str, list[str]]


def count_receipts(keys: Iterable[str], expected: Iterable[str]) -> Receipts:
    """Count ``keys`` (every ``webhook-id`` received, in order) against ``expected`` run ids."""
    per_key = Counter(keys)
    per_occurrence: defaultdict[str, set[str]] = defaultdict(set)
    for key in per_key:
        per_occurrence[occurrence_of(key)].add(key)
    wanted = set(expected)
    dup = {o: sorted(k) for o, k in per_occurrence.items() if len(k) > 1}
    resent = [k for k, n in per_key.items() if n > 1]
    lost = sorted(wanted - per_occurrence.keys())
    return Receipts(
        expected=len(wanted),
        received=sum(per_key.values()),
        duplicates=sum(len(k) - 1 for k in dup.values()),
        resends=sum(n - 1 for n in per_key.values() if n > 1),
        losses=len(lost),
        unexpected=len(per_occurrence.keys() - wanted),
        examples={
            "duplicate": [json.dumps(v) for v in list(dup.values())[:3]],
            "resent": resent[:3],
            "lost": lost[:3],
        },
    )


@dataclass(frozen=True)
class Attempts:
    """What the workers' attempt log says about executions."""

    executions: int
    duplicates: int
    """Attempts (run, attempt) that started more than once."""
    overlaps: int
    """Pairs of attempts of one run that overlapped (see the module docstring)."""
    max_overlap_s: float
    unfinished: int
    """Executions with no end line (their process died; they end at ``killed_at``)."""


def count_attempts(
    lines: Sequence[Mapping[str, Any]], killed_at: Mapping[str, float] | None = None
) -> Attempts:
    """Count the attempt log: ``{"event": "start"|"end", "run", "attempt", "at", "pid"}`` lines.

    An execution is a start line; its end is the first later end line of the same run,
    attempt and pid, else ``killed_at[str(pid)]`` (the process was killed), else it is
    taken to be still running at the last stamp of the log.
    """
    last = max((float(line["at"]) for line in lines), default=0.0)
    starts: list[tuple[str, int, int, float]] = []
    ends: defaultdict[tuple[str, int, int], list[float]] = defaultdict(list)
    for line in lines:
        ident = (str(line["run"]), int(line["attempt"]), int(line["pid"]))
        if line["event"] == "start":
            starts.append((*ident, float(line["at"])))
        elif line["event"] == "end":
            ends[ident].append(float(line["at"]))
    spans: defaultdict[str, list[tuple[int, float, float]]] = defaultdict(list)
    unfinished = 0
    for run, attempt, pid, began in starts:
        later = [t for t in ends[(run, attempt, pid)] if t >= began]
        if later:
            end = min(later)
        elif killed_at and str(pid) in killed_at:
            end, unfinished = killed_at[str(pid)], unfinished + 1
        else:
            end, unfinished = last, unfinished + 1
        spans[run].append((attempt, began, end))
    per_attempt = Counter((run, a) for run, items in spans.items() for a, _, _ in items)
    overlaps, worst = 0, 0.0
    for items in spans.values():
        for a1, s1, e1 in items:
            for a2, s2, _ in items:
                if a2 > a1 and s2 >= s1:
                    over = e1 - s2
                    worst = max(worst, over)
                    overlaps += over > OVERLAP_TOLERANCE_S
    return Attempts(
        executions=len(starts),
        duplicates=sum(n - 1 for n in per_attempt.values() if n > 1),
        overlaps=overlaps,
        max_overlap_s=round(worst, 3),
        unfinished=unfinished,
    )


def count_tracebacks(text: str) -> int:
    """Python tracebacks in a log."""
    return len(_TRACEBACK.findall(text))
