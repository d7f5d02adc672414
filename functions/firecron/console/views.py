"""The console's pages: a Flask blueprint whose views read the store and render templates.

Every view gathers what its page shows with one coroutine run on the
:class:`~firecron.console._bridge.StoreBridge`, then renders a Jinja2 template. Nothing
here writes: the buttons POST to the admin API from the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, render_template

from firecron.console._bridge import StoreBridge
from firecron.core import planning
from firecron.core.models import StoredSchedule
from firecron.core.render import rfc3339
from firecron.core.runs import Run
from firecron.store import Store

__all__ = ["EXTENSION", "RECENT_RUNS", "make_blueprint"]

EXTENSION = "firecron_console"
"""The key of the console's :class:`StoreBridge` in ``app.extensions``."""

RECENT_RUNS = 20
"""How many of a schedule's newest runs the schedules page shows as cells."""

NEXT_FIRES = 3
"""How many upcoming fire times the schedules page shows."""


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

    None for a paused, exhausted, on-demand or continuous schedule (a continuous one
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
    return times


def trigger_text(stored: StoredSchedule) -> str:
    """The schedule's trigger in words, naming its zone when the words do not."""
    text = planning.trigger_of(stored.spec).describe()
    zone = stored.spec.timezone
    return text if zone in text else f"{text} ({zone})"


def local_text(instant: datetime, zone: str) -> str:
    """``instant`` as ``2027-01-01 09:30:00 CET`` in ``zone``."""
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


async def _schedule_rows(store: Store) -> list[ScheduleRow]:
    schedules = await store.list_schedules()
    rows = []
    for stored in schedules:
        # One query per schedule: the console lists what one page can show, and the
        # store has no "newest N runs of each schedule" query.
        runs = await store.list_runs(schedule_id=stored.id, limit=RECENT_RUNS)
        zone = stored.spec.timezone
        rows.append(
            ScheduleRow(
                stored=stored,
                trigger=trigger_text(stored),
                next_fires=[(local_text(t, zone), rfc3339(t)) for t in next_fires(stored)],
                runs=runs,
            )
        )
    return rows


API = "/api/v1"
"""Where the admin API is served, in the same app: the buttons POST there."""


def _template_globals() -> dict[str, Any]:
    from flask import current_app

    # The nav shows the pages this console serves (all of them, once they exist).
    nav = {rule.endpoint for rule in current_app.url_map.iter_rules()}
    return {"rfc3339": rfc3339, "api": API, "nav": nav}


def make_blueprint(bridge: StoreBridge) -> Blueprint:
    """The ``console`` blueprint over ``bridge``'s store (static files at ``/static``)."""
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
        rows = bridge.call(_schedule_rows)
        return render_template(
            "console/schedules.html", rows=rows, page="schedules", recent=RECENT_RUNS
        )

    @bp.get("/runs/<run_id>")
    def run(run_id: str) -> str:
        found = bridge.call(lambda store: store.get_run(run_id))
        if found is None:
            abort(404, f"no run {run_id!r}")
        return render_template("console/run.html", run=found, page="run")

    return bp
