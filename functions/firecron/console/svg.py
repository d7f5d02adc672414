"""SVG drawings for the console: a timeline Gantt of runs and a pipeline's task graph. Pure.

Both functions take plain values (no store, no clock: "now" is passed in) and return
one ``<svg>`` element as text, with every piece of user text escaped, so a page can
embed it as it is. Each run bar and each task box is a link (``href``) with a
``<title>`` tooltip, and carries ``data-state`` so tests (and people) can read states
without colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from firecron.core.models import PipelineSpec, TaskRule
from firecron.core.pipeline_graph import depths, task_kind, topological_order

__all__ = [
    "STATE_COLOURS",
    "Bar",
    "dag_svg",
    "timeline_svg",
]

STATE_COLOURS: Mapping[str, str] = {
    "succeeded": "#2e7d32",
    "delivered": "#2e7d32",
    "failed": "#c62828",
    "timed_out": "#c62828",
    "lost": "#c62828",
    "running": "#1565c0",
    "dispatched": "#1565c0",
    "pending": "#1565c0",
    "retry_wait": "#ef6c00",
    "queued": "#ef6c00",
    "waiting": "#8e24aa",
    "cancelled": "#9e9e9e",
    "skipped": "#9e9e9e",
    "missed": "#9e9e9e",
}
"""Fill per run state (the same palette as the pages' state badges)."""

_UNKNOWN = "#e0e0e0"
"""Fill of a task with no run yet (not started in this pipeline run, or no run shown)."""


def _fill(state: str | None) -> str:
    return STATE_COLOURS.get(state or "", _UNKNOWN)


def _attr(text: str) -> str:
    return escape(text, quote=True)


@dataclass(frozen=True)
class Bar:
    """One run on the timeline: from ``start`` to ``end`` (None: still going, drawn to now)."""

    run_id: str
    start: datetime
    end: datetime | None
    state: str
    href: str
    sla_breached_at: datetime | None = None


_LABEL_W = 170
_PLOT_W = 820
_ROW_H = 22
_AXIS_H = 22
_MIN_BAR_W = 2.0


_HOURLY_UP_TO = timedelta(days=2)
"""Windows up to this long get hour ticks (a day's window, plus the margin past now)."""


def _ticks(start: datetime, end: datetime) -> list[datetime]:
    """Axis ticks: every 3 hours over a window up to 2 days, every day over longer (UTC)."""
    step = timedelta(hours=3) if end - start <= _HOURLY_UP_TO else timedelta(days=1)
    unit = step.total_seconds()
    first_s = -(-start.timestamp() // unit) * unit  # the first multiple of step at or after start
    tick = datetime.fromtimestamp(first_s, UTC)
    found = []
    while tick <= end:
        found.append(tick)
        tick += step
    return found


def timeline_svg(
    rows: Sequence[tuple[str, Sequence[Bar]]],
    start: datetime,
    end: datetime,
    now: datetime,
) -> str:
    """A Gantt chart: one row per ``(label, bars)``, time from ``start`` to ``end`` (aware).

    Bars are clipped to the window; a bar with no ``end`` runs to ``now``; a bar shorter
    than 2 px is drawn 2 px wide so that a one-second run is still visible. A breached
    SLA (``sla_breached_at``) is marked by a red ``!`` above the bar at the instant it
    was breached. A dashed line marks ``now`` when it lies in the window. Raises
    ``ValueError`` when ``end`` is not after ``start``.
    """
    if end <= start:
        raise ValueError(f"timeline end {end.isoformat()} is not after start {start.isoformat()}")
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        clipped = min(max(at, start), end)
        return _LABEL_W + (clipped - start).total_seconds() / span * _PLOT_W

    height = _AXIS_H + _ROW_H * max(len(rows), 1) + 4
    width = _LABEL_W + _PLOT_W + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="runs from {_attr(start.isoformat())} to {_attr(end.isoformat())}">'
    ]
    daily = end - start > _HOURLY_UP_TO
    for tick in _ticks(start, end):
        tx = x(tick)
        label = tick.strftime("%a %d %b" if daily else "%H:%M")
        out.append(
            f'<line x1="{tx:.1f}" y1="{_AXIS_H - 4}" x2="{tx:.1f}" y2="{height}" stroke="#eceff1"/>'
            f'<text x="{tx + 2:.1f}" y="{_AXIS_H - 8}" fill="#78909c">{_attr(label)}</text>'
        )
    for index, (label, bars) in enumerate(rows):
        top = _AXIS_H + index * _ROW_H
        out.append(
            f'<g class="row" data-schedule="{_attr(label)}">'
            f'<text x="4" y="{top + 15}">{_attr(label)}</text>'
        )
        for bar in bars:
            bar_end = bar.end or now
            if bar_end < start or bar.start > end:
                continue
            left = x(bar.start)
            bar_w = max(x(bar_end) - left, _MIN_BAR_W)
            tip = f"{bar.run_id}: {bar.state}, {bar.start.isoformat()}"
            if bar.sla_breached_at is not None:
                tip += f" (SLA breached at {bar.sla_breached_at.isoformat()})"
            out.append(
                f'<a href="{_attr(bar.href)}" class="bar" data-run="{_attr(bar.run_id)}" '
                f'data-state="{_attr(bar.state)}"><title>{_attr(tip)}</title>'
                f'<rect x="{left:.1f}" y="{top + 4}" width="{bar_w:.1f}" height="{_ROW_H - 8}" '
                f'rx="2" fill="{_fill(bar.state)}"/></a>'
            )
            if bar.sla_breached_at is not None and start <= bar.sla_breached_at <= end:
                sx = x(bar.sla_breached_at)
                out.append(
                    f'<text class="sla-mark" x="{sx - 2:.1f}" y="{top + 10}" fill="#c62828" '
                    f'font-weight="700">!</text>'
                )
        out.append("</g>")
    if start <= now <= end:
        nx = x(now)
        out.append(
            f'<line class="now" x1="{nx:.1f}" y1="{_AXIS_H - 6}" x2="{nx:.1f}" y2="{height}" '
            f'stroke="#d81b60" stroke-dasharray="4 3"/>'
            f'<text x="{nx - 26:.1f}" y="{_AXIS_H - 8}" fill="#d81b60">now</text>'
        )
    out.append("</svg>")
    return "".join(out)


_BOX_W = 150
_BOX_H = 40
_COL_GAP = 60
_ROW_GAP = 16
_PAD = 10


def dag_svg(
    spec: PipelineSpec,
    states: Mapping[str, str] | None = None,
    links: Mapping[str, str] | None = None,
) -> str:
    """The pipeline's task graph, left to right: a column per depth, an arrow per ``after``.

    ``states`` maps task ids to run states (the box is filled by state; a task missing
    from it is light grey and reads ``not started``; ``None``: the bare graph, each
    box showing what the task runs). ``links`` maps task ids to hrefs (the box becomes
    a link). An edge whose task has a rule other than ``all_succeeded`` or an ``if:``
    is dashed and titled with them. An ``after`` naming no task is left out, as in
    :mod:`firecron.core.pipeline_graph`.
    """
    depth = depths(spec)
    order = topological_order(spec)
    columns: dict[int, list[str]] = {}
    for task_id in order:
        columns.setdefault(depth[task_id], []).append(task_id)
    place: dict[str, tuple[float, float]] = {}
    for column, ids in columns.items():
        for row, task_id in enumerate(ids):
            place[task_id] = (
                _PAD + column * (_BOX_W + _COL_GAP),
                _PAD + row * (_BOX_H + _ROW_GAP),
            )
    width = _PAD * 2 + (max(columns) + 1) * (_BOX_W + _COL_GAP) - _COL_GAP
    height = _PAD * 2 + max(len(ids) for ids in columns.values()) * (_BOX_H + _ROW_GAP) - _ROW_GAP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="pipeline {_attr(spec.id)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#607d8b"/></marker></defs>',
    ]
    by_id = {task.id: task for task in spec.tasks}
    for task_id in order:
        task = by_id[task_id]
        notes = []
        if task.when is not TaskRule.all_succeeded:
            notes.append(f"when: {task.when.value}")
        if task.if_ is not None:
            notes.append(f"if: {' '.join(task.if_.split())}")
        for upstream in task.after:
            if upstream not in place:
                continue
            (ux, uy), (dx, dy) = place[upstream], place[task_id]
            x1, y1 = ux + _BOX_W, uy + _BOX_H / 2
            x2, y2 = dx, dy + _BOX_H / 2
            mid = (x1 + x2) / 2
            dash = ' stroke-dasharray="5 3"' if notes else ""
            title = f"<title>{_attr('; '.join(notes))}</title>" if notes else ""
            out.append(
                f'<path class="edge" data-from="{_attr(upstream)}" data-to="{_attr(task_id)}" '
                f'd="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
                f'fill="none" stroke="#607d8b" stroke-width="1.5"{dash} '
                f'marker-end="url(#arrow)">{title}</path>'
            )
    for task_id in order:
        x, y = place[task_id]
        state = None if states is None else states.get(task_id)
        shown = task_kind(by_id[task_id]) if states is None else (state or "not started")
        fill = "#eceff1" if states is None else _fill(state)
        ink = "#212121" if states is None or state is None else "#ffffff"
        box = (
            f'<g class="task" data-task="{_attr(task_id)}" data-state="{_attr(state or "")}">'
            f"<title>{_attr(task_id)}: {_attr(shown)}</title>"
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="5" fill="{fill}" '
            f'stroke="#607d8b"/>'
            f'<text x="{x + 8}" y="{y + 16}" fill="{ink}" font-weight="600">{_attr(_cut(task_id))}</text>'
            f'<text x="{x + 8}" y="{y + 31}" fill="{ink}">{_attr(_cut(shown))}</text></g>'
        )
        href = None if links is None else links.get(task_id)
        out.append(f'<a href="{_attr(href)}">{box}</a>' if href else box)
    out.append("</svg>")
    return "".join(out)


def _cut(text: str, limit: int = 22) -> str:
    """``text`` cut to fit a box (the full text is in the box's title)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
