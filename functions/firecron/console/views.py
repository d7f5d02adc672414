"""The console's pages: a Flask blueprint whose views read the store and render templates.

Every view gathers what its page shows in one coroutine run on the
:class:`~firecron.console._bridge.StoreBridge`, then renders a Jinja2 template. Nothing
here writes: the buttons POST to the admin API (:data:`API`) from the browser.

Pages: ``/`` schedules, ``/timeline?window=24h|7d``, ``/runs/<id>``, ``/pipelines``,
``/state``. An unknown run is a 404 page; a bad query value a 400 naming it.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, current_app, render_template, request
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from firecron.admin import stored_pipelines
from firecron.console._bridge import StoreBridge
from firecron.console.svg import Bar, dag_svg, timeline_svg
from firecron.core import planning
from firecron.core.logs import LogLine
from firecron.core.models import PipelineSpec, StoredSchedule
from firecron.core.render import rfc3339
from firecron.core.runs import Run, RunState, task_run_id
from firecron.core.state import StateEntry
from firecron.errors import StoreError
from firecron.store import Store

__all__ = [
    "API",
    "EXTENSION",
    "NEXT_FIRES",
    "RECENT_RUNS",
    "SCHEDULES_PAGE",
    "TIMELINE_RUNS",
    "WINDOWS",
    "make_blueprint",
    "next_fires",
]

EXTENSION = "firecron_console"
"""The key of the console's :class:`StoreBridge` in ``app.extensions``."""

API = "/api/v1"
"""Where the admin API is served, in the same app: the buttons POST there."""

RECENT_RUNS = 20
"""How many of a schedule's newest runs the schedules page shows as cells."""

NEXT_FIRES = 3
"""How many upcoming fire times the schedules page shows."""

TIMELINE_RUNS = 500
"""The most runs per schedule the timeline reads (newest first); it says when it stops."""

WINDOWS: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
"""The timeline's windows, by their ``?window=`` value."""

SCHEDULES_PAGE = 100
"""Schedules per page of the schedules page and the timeline (``?after=`` the last id)."""

STATE_KEYS = 200
"""State entries per page of the state page (``?after=`` the last key for the next)."""

WAITING_RUNS = 500
"""The most waiting runs the state page reads (newest first)."""


@dataclass(frozen=True)
class ScheduleRow:
    """One line of the schedules page."""

    stored: StoredSchedule
    trigger: str
    """The trigger in words, with its zone (``At 09:30 (Europe/Berlin)``)."""
    next_fires: list[tuple[str, str]]
    """Up to :data:`NEXT_FIRES` upcoming times as (local text, RFC 3339 UTC)."""
    runs: list[Run]
    """Newest first, at most :data:`RECENT_RUNS`."""


def next_fires(stored: StoredSchedule, count: int = NEXT_FIRES) -> list[datetime]:
    """The schedule's next ``count`` nominal times (aware UTC), from its stored state.

    Empty for a paused, exhausted, on-demand or continuous schedule (a continuous one
    has no fire times, only a live generation). Stops where ``datetime`` ends.
    """
    first = stored.state.next_occurrence
    if first is None or stored.state.paused or stored.spec.continuous is not None:
        return []
    times = [first]
    trigger = planning.trigger_of(stored.spec)
    while len(times) < count:
        try:
            following = trigger.next_after(times[-1])
        except OverflowError:
            break
        if following is None:
            break
        times.append(following)
    if stored.spec.max_runs is not None:
        times = times[: max(stored.spec.max_runs - stored.state.run_count, 0)]
    return times


def local_text(instant: datetime, zone: str) -> str:
    """``instant`` as ``2027-01-01 09:30:00 CET`` in ``zone``."""
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclass(frozen=True)
class SchedulePage:
    """One page of schedules, in id order."""

    schedules: list[StoredSchedule]
    next_after: str | None
    """The ``?after=`` of the next page (None: this is the last)."""


async def _schedule_page(store: Store, after: str | None) -> SchedulePage:
    """At most :data:`SCHEDULES_PAGE` schedules after ``after``: the schedules page and
    the timeline read each one's runs, so a page bounds their queries."""
    found = await store.list_schedules(after=after, limit=SCHEDULES_PAGE + 1)
    more = len(found) > SCHEDULES_PAGE
    found = found[:SCHEDULES_PAGE]
    return SchedulePage(found, found[-1].id if more else None)


_I = TypeVar("_I")
_O = TypeVar("_O")

_QUERIES_AT_ONCE = 16
"""Per-schedule run queries of one page in flight at once: on Firestore each is a round
trip, and a page of 100 one after another is 100 round trips long."""


async def _for_each(items: Sequence[_I], fn: Callable[[_I], Awaitable[_O]]) -> list[_O]:
    """``fn`` of each item, :data:`_QUERIES_AT_ONCE` at a time, results in ``items``' order."""
    gate = asyncio.Semaphore(_QUERIES_AT_ONCE)

    async def one(item: _I) -> _O:
        async with gate:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


async def _schedule_rows(store: Store, after: str | None) -> tuple[list[ScheduleRow], str | None]:
    rows = []
    listed = await _schedule_page(store, after)
    # One query per schedule: the store has no "newest N runs of each schedule" query,
    # and a page lists what one screen shows.
    recent = await _for_each(
        listed.schedules, lambda s: store.list_runs(schedule_id=s.id, limit=RECENT_RUNS)
    )
    for stored, runs in zip(listed.schedules, recent, strict=True):
        zone = stored.spec.timezone
        rows.append(
            ScheduleRow(
                stored=stored,
                trigger=planning.trigger_words(stored.spec),
                next_fires=[(local_text(t, zone), rfc3339(t)) for t in next_fires(stored)],
                runs=[r for r in runs if r.task is None],
            )
        )
    return rows, listed.next_after


def _svg(text: str) -> Markup:
    """A drawing of :mod:`firecron.console.svg` as markup the templates embed unescaped.

    Safe because those functions escape every piece of text they put in (ids, labels,
    conditions, hrefs); nothing else may be passed here.
    """
    return Markup(text)  # noqa: S704


# -- timeline ------------------------------------------------------------------------


def run_span(run: Run) -> tuple[datetime, datetime | None]:
    """Where a run's bar starts and ends: from its start (else its send, else its fire
    time) to its end (None while it is not over)."""
    begin = run.started_at or run.dispatched_at or run.fire_at
    return begin, run.ended_at


@dataclass(frozen=True)
class Timeline:
    """What the timeline page draws."""

    svg: Markup
    start: datetime
    end: datetime
    capped: list[str]
    """Schedules with more runs in the window than :data:`TIMELINE_RUNS` (older ones not drawn)."""
    breaches: int
    """Runs drawn whose SLA was breached."""
    next_after: str | None
    """The ``?after=`` of the next page of schedules (None: this is the last)."""


async def _runs_since(store: Store, schedule_id: str, start: datetime) -> tuple[list[Run], bool]:
    """The schedule's runs created since ``start`` (and older ones still going), newest
    first, at most :data:`TIMELINE_RUNS`; and whether it stopped at that bound."""
    found: list[Run] = []
    before: datetime | None = None
    while len(found) < TIMELINE_RUNS:
        page = await store.list_runs(schedule_id=schedule_id, limit=100, before=before)
        for run in page:
            # A run created before the window is drawn when it ended in it or goes on.
            if run.created_at < start and run.ended_at is not None and run.ended_at < start:
                return found, False
            if run.task is None:
                found.append(run)
        if len(page) < 100:
            return found, False
        before = page[-1].created_at
    return found, True


async def _timeline(store: Store, window: timedelta, after: str | None) -> Timeline:
    now = await store.clock()
    start = now - window
    rows: list[tuple[str, list[Bar]]] = []
    capped: list[str] = []
    breaches = 0
    listed = await _schedule_page(store, after)
    found = await _for_each(listed.schedules, lambda s: _runs_since(store, s.id, start))
    for stored, (runs, cut) in zip(listed.schedules, found, strict=True):
        if cut:
            capped.append(stored.id)
        bars = []
        for run in runs:
            begin, end = run_span(run)
            bars.append(
                Bar(
                    run_id=run.id,
                    start=begin,
                    end=end,
                    state=run.state.value,
                    href=_run_href(run.id),
                    sla_breached_at=run.sla_breached_at,
                )
            )
            breaches += run.sla_breached_at is not None
        rows.append((stored.id, bars))
    # An end a little past now leaves room for the "now" label.
    end = now + window / 48
    svg = _svg(timeline_svg(rows, start, end, now))
    return Timeline(svg, start, end, capped, breaches, listed.next_after)


# -- run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPage:
    """What the run page shows."""

    run: Run
    logs: list[LogLine]
    dag: Markup | None = None
    """The pipeline run's task graph, filled by its tasks' states (None: not a pipeline run)."""
    tasks: list[Run] = field(default_factory=list)
    parent: Run | None = None
    """The pipeline run of a task run."""


async def _run_page(store: Store, run_id: str) -> RunPage | None:
    run = await store.get_run(run_id)
    if run is None:
        return None
    logs = await store.get_logs(run_id)
    parent = None if run.parent_run_id is None else await store.get_run(run.parent_run_id)
    if run.pipeline_spec is None or run.task is not None:
        return RunPage(run, logs, parent=parent)
    spec = run.pipeline_spec
    tasks = await store.get_runs([task_run_id(run.id, t.id) for t in spec.tasks])
    by_task = {t.task: t for t in tasks if t.task is not None}
    dag = dag_svg(
        spec,
        states={task: t.state.value for task, t in by_task.items()},
        links={task: _run_href(t.id) for task, t in by_task.items()},
    )
    order = {t.id: i for i, t in enumerate(spec.tasks)}
    tasks.sort(key=lambda t: order.get(t.task or "", len(order)))
    return RunPage(run, logs, _svg(dag), tasks, parent)


def _run_href(run_id: str) -> str:
    # url_for needs a request context; the SVG builders run inside one (the view's).
    from flask import url_for

    return url_for("console.run", run_id=run_id)


# -- pipelines and state ------------------------------------------------------------


@dataclass(frozen=True)
class PipelineView:
    """A pipeline as the pipelines page shows it."""

    spec: PipelineSpec
    schedules: list[str]
    svg: Markup
    latest: Run | None
    """The newest run of the first schedule that targets it."""


async def _pipelines(store: Store) -> list[PipelineView]:
    found = await stored_pipelines(store)
    views = []
    for pipeline_id in sorted(found):
        spec, schedules = found[pipeline_id]
        newest = await store.list_runs(schedule_id=schedules[0], limit=20)
        latest = next((r for r in newest if r.task is None), None)
        views.append(PipelineView(spec, schedules, _svg(dag_svg(spec)), latest))
    return views


@dataclass(frozen=True)
class StatePage:
    """The state page: a page of entries, and the runs waiting on keys."""

    entries: list[StateEntry]
    waiting: dict[str, list[Run]]
    """Waiting runs by key, keys with no entry included (runs wait on keys not yet written)."""
    next_after: str | None
    """The ``?after=`` of the next page (None: this is the last)."""
    waiting_capped: bool


async def _state_page(store: Store, after: str | None) -> StatePage:
    entries = await store.list_state(after=after, limit=STATE_KEYS + 1)
    more = len(entries) > STATE_KEYS
    entries = entries[:STATE_KEYS]
    # One query for every waiting run, grouped here, rather than one per key shown.
    waiting_runs = await store.list_runs(states=[RunState.waiting], limit=WAITING_RUNS)
    waiting: dict[str, list[Run]] = defaultdict(list)
    for run in waiting_runs:
        if run.wait_key is not None:
            waiting[run.wait_key].append(run)
    return StatePage(
        entries,
        dict(sorted(waiting.items())),
        entries[-1].key if more and entries else None,
        len(waiting_runs) >= WAITING_RUNS,
    )


# -- the blueprint ------------------------------------------------------------------


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON for people to read: a plain ``str``, which Jinja then escapes.

    Not Flask's ``tojson``: that one is for ``<script>``, and writes ``<`` as ``\\u003c``.
    """
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=True)


def _template_globals() -> dict[str, Any]:
    return {"rfc3339": rfc3339, "api": API, "json_text": json_text}


def make_blueprint(bridge: StoreBridge) -> Blueprint:
    """The ``console`` blueprint over ``bridge``'s store (its static files at
    ``/console-static``, so they do not clash with the app's own ``/static``)."""
    bp = Blueprint(
        "console",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/console-static",
    )
    bp.app_context_processor(_template_globals)

    @bp.get("/")
    def schedules() -> str:
        after = request.args.get("after") or None
        rows, next_after = bridge.call(lambda store: _schedule_rows(store, after))
        return render_template(
            "console/schedules.html",
            rows=rows,
            next_after=next_after,
            page="schedules",
            recent=RECENT_RUNS,
        )

    @bp.get("/timeline")
    def timeline() -> str:
        name = request.args.get("window", "24h")
        window = WINDOWS.get(name)
        if window is None:
            abort(400, f"window {name!r} is not one of {', '.join(WINDOWS)}")
        after = request.args.get("after") or None
        data = bridge.call(lambda store: _timeline(store, window, after))
        return render_template(
            "console/timeline.html", t=data, window=name, windows=WINDOWS, page="timeline"
        )

    @bp.get("/runs/<run_id>")
    def run(run_id: str) -> str:
        data = bridge.call(lambda store: _run_page(store, run_id))
        if data is None:
            abort(404, f"no run {run_id!r}")
        return render_template("console/run.html", p=data, run=data.run, page="run")

    @bp.get("/pipelines")
    def pipelines() -> str:
        views = bridge.call(_pipelines)
        return render_template("console/pipelines.html", pipelines=views, page="pipelines")

    @bp.get("/state")
    def state() -> str:
        after = request.args.get("after") or None
        data = bridge.call(lambda store: _state_page(store, after))
        return render_template("console/state.html", s=data, after=after, page="state")

    @bp.errorhandler(400)
    @bp.errorhandler(404)
    def problem(error: HTTPException) -> tuple[str, int]:
        return render_template("console/error.html", error=error, page="error"), error.code or 500

    @bp.errorhandler(StoreError)
    def store_failed(error: StoreError) -> tuple[str, int]:
        # The store is down or slow: say so in a page (503), not a bare 500; the live
        # parts keep polling and recover by themselves when it answers again.
        current_app.logger.warning("console: the store failed: %s", error)
        unavailable = ServiceUnavailable(f"the store did not answer: {error}")
        return render_template("console/error.html", error=unavailable, page="error"), 503

    return bp
