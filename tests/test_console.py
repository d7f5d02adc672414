"""The web console, server side: every page renders from the store, on both stores, with
no JavaScript (the Flask test client runs none), and the SVG builders are right.

The pages are read as a browser without JavaScript would: the HTML as served. Elements
are found by their data attributes (``data-run``, ``data-state``, ``data-task``...),
which the templates put there so that states are readable without colours.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from _backend import Backend
from _factories import make_run
from firecron.console import register
from firecron.console.svg import Bar, dag_svg, timeline_svg
from firecron.console.views import EXTENSION, RECENT_RUNS, SCHEDULES_PAGE, next_fires
from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec, ScheduleState, StoredSchedule
from firecron.core.runs import Attempt, Run, RunState, Send, task_run_id
from firecron.notify import run_link
from firecron.settings import Settings
from firecron.store import Store

STATIC = Path(__file__).parent.parent / "functions" / "firecron" / "console" / "static"


# -- reading HTML -----------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append(Element(tag, {k: v or "" for k, v in attrs}))


def elements(html: str, tag: str | None = None, **attrs: str) -> list[Element]:
    """The ``tag`` elements (None: any) of ``html`` having every attribute in ``attrs``
    (``data_run`` means ``data-run``) with that value (``"*"``: any value)."""
    parser = _Elements()
    parser.feed(html)
    wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
    return [
        e
        for e in parser.found
        if (tag is None or e.tag == tag)
        and all(k in e.attrs and (v == "*" or e.attrs[k] == v) for k, v in wanted.items())
    ]


def text_of(html: str) -> str:
    """The page's text as a reader sees it: scripts, styles and tags dropped, entities
    decoded, whitespace made single spaces."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


# -- a seeded store ---------------------------------------------------------------------


@dataclass
class Seeded:
    """What :func:`seed` wrote, and the store's "now" it wrote it around."""

    now: datetime
    ok: Run
    failed: Run
    running: Run
    breached: Run
    old: Run
    """Ended 3 days ago: in the 7 d timeline, not in the 24 h one."""
    pipeline_run: Run
    waiting_ready: Run
    waiting_missing: Run


def _stored(spec: ScheduleSpec, now: datetime, **state: Any) -> tuple[ScheduleSpec, ScheduleState]:
    planned = planning.initial_state(spec, now)
    return spec, planned.model_copy(update=state)


BERLIN = ScheduleSpec.model_validate(
    {
        "id": "berlin-report",
        "description": "Weekday report",
        "cron": "30 9 * * 1-5",
        "timezone": "Europe/Berlin",
        "target": {"function": "report"},
    }
)

ETL = PipelineSpec.model_validate(
    {
        "id": "etl",
        "description": "Extract then load",
        "tasks": [
            {"id": "extract", "target": {"function": "extract"}},
            {
                "id": "load",
                "target": {"function": "load"},
                "after": ["extract"],
                "if": "tasks.extract.output.rows > 0",
            },
            {
                "id": "alert",
                "notify": {"sink": "ops", "text": "etl failed"},
                "after": ["load"],
                "when": "any_failed",
            },
        ],
    }
)


async def seed(store: Store) -> Seeded:
    """Schedules of every kind, runs in every interesting state, state entries and
    runs waiting on keys, all around the store's own clock (the timeline's now)."""
    now = await store.clock()
    specs = [
        _stored(BERLIN, now),
        _stored(
            ScheduleSpec.model_validate(
                {"id": "often", "every": "10m", "target": {"function": "hello"}}
            ),
            now,
        ),
        _stored(
            ScheduleSpec.model_validate(
                {"id": "held", "every": "1h", "target": {"function": "hello"}}
            ),
            now,
            paused=True,
            paused_at=now,
        ),
        _stored(
            ScheduleSpec.model_validate(
                {
                    "id": "nightly-etl",
                    "cron": "0 2 * * *",
                    "target": {"pipeline": "etl"},
                    "pipeline_spec": ETL.model_dump(by_alias=True),
                }
            ),
            now,
        ),
    ]
    for spec, state in specs:
        await store.put_schedule(spec, state, expect_version=None)

    def ran(run_id: str, begin: datetime, end: datetime | None, state: RunState, **f: Any) -> Run:
        return make_run(
            "often",
            begin,
            run_id=run_id,
            state=state,
            started_at=begin,
            ended_at=end,
            **f,
        )

    hour = timedelta(hours=1)
    ok = ran(
        "often@ok",
        now - 5 * hour,
        now - 5 * hour + timedelta(seconds=30),
        RunState.succeeded,
        params={"n": 7},
        output={"rows": 42},
    )
    failed = ran(
        "often@failed",
        now - 4 * hour,
        now - 4 * hour + timedelta(minutes=2),
        RunState.failed,
        error="ValueError: <bad> input",
        attempt=2,
        attempts=[
            Attempt(
                number=1,
                dispatched_at=now - 4 * hour,
                acknowledged=True,
                status_code=202,
                outcome=RunState.failed,
                error="first try failed",
                sends=[Send(at=now - 4 * hour, outcome="acknowledged", status_code=202)],
            ),
            Attempt(number=2, outcome=RunState.failed, error="ValueError: <bad> input"),
        ],
    )
    running = ran("often@running", now - timedelta(minutes=3), None, RunState.running)
    breached = ran(
        "often@breached",
        now - 2 * hour,
        now - hour,
        RunState.succeeded,
        sla_breached_at=now - 2 * hour + timedelta(minutes=30),
    )
    old = ran("often@old", now - 72 * hour, now - 71 * hour, RunState.succeeded)
    pipeline_run = make_run(
        "nightly-etl",
        now - hour,
        run_id="nightly-etl@p",
        state=RunState.running,
        started_at=now - hour,
        target={"pipeline": "etl"},
        pipeline="etl",
        pipeline_spec=ETL,
    )
    tasks = [
        make_run(
            "nightly-etl",
            now - hour,
            run_id=task_run_id(pipeline_run.id, "extract"),
            state=RunState.succeeded,
            parent_run_id=pipeline_run.id,
            task="extract",
            pipeline="etl",
            started_at=now - hour,
            ended_at=now - hour + timedelta(minutes=5),
        ),
        make_run(
            "nightly-etl",
            now - hour,
            run_id=task_run_id(pipeline_run.id, "load"),
            state=RunState.running,
            parent_run_id=pipeline_run.id,
            task="load",
            pipeline="etl",
            started_at=now - hour + timedelta(minutes=5),
        ),
    ]
    waiting_ready = make_run(
        "often", now, run_id="often@wait-ready", state=RunState.waiting, wait_key="data/ready"
    )
    waiting_missing = make_run(
        "often", now, run_id="often@wait-missing", state=RunState.waiting, wait_key="data/none"
    )
    for run in [
        ok,
        failed,
        running,
        breached,
        old,
        pipeline_run,
        *tasks,
        waiting_ready,
        waiting_missing,
    ]:
        assert await store.create_run(run) is not None
    await store.put_state("data/ready", {"rows": 3}, now=now)
    await store.put_state("data/ready", {"rows": 4}, now=now)
    await store.put_state("config/mode", "<full>", now=now)
    return Seeded(
        now, ok, failed, running, breached, old, pipeline_run, waiting_ready, waiting_missing
    )


@pytest.fixture
async def console(backend: Backend) -> AsyncIterator[tuple[FlaskClient, Seeded]]:
    """A bare Flask app with only the console registered, over ``backend``'s store, seeded."""
    seeded = await seed(backend.store)
    app = Flask(__name__)
    register(app, Settings(store_url=backend.url, namespace=backend.namespace))
    yield app.test_client(), seeded
    app.extensions[EXTENSION].close()


def page(client: FlaskClient, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:2000])
    assert response.mimetype == "text/html"
    return response.text


# -- the pages --------------------------------------------------------------------------


async def test_schedules_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, seeded = console
    html = page(client, "/")
    rows = elements(html, tag="tr", data_schedule="*")
    assert [r.attrs["data-schedule"] for r in rows] == [
        "berlin-report",
        "held",
        "nightly-etl",
        "often",
    ]
    text = text_of(html)
    # In words, with the zone; the description beside the id.
    assert "At 09:30, Monday through Friday" in text
    assert "Europe/Berlin" in text
    assert "Weekday report" in text
    # The next 3 fire times, in the schedule's zone (CET or CEST, whichever applies).
    spec = BERLIN
    stored = StoredSchedule(spec=spec, state=planning.initial_state(spec, seeded.now), version="1")
    upcoming = next_fires(stored)
    assert len(upcoming) == 3
    for instant in upcoming:
        assert instant.strftime("%Y-%m-%dT%H:%M:%SZ") in html
    # The runs as cells, newest first, each linking to its run and naming its state;
    # task runs are not the schedule's own runs.
    cells = elements(html, tag="a", data_run="*")
    often = [c.attrs["data-run"] for c in cells if c.attrs["data-run"].startswith("often@")]
    assert set(often) >= {"often@ok", "often@failed", "often@running", "often@breached"}
    assert {c.attrs["data-state"] for c in cells if c.attrs["data-run"] == "often@failed"} == {
        "failed"
    }
    assert not [c for c in cells if "." in c.attrs["data-run"]]
    breached = [c for c in cells if "sla-breached" in c.attrs["class"].split()]
    assert [c.attrs["data-run"] for c in breached] == ["often@breached"]
    # The pause switch: on for an active schedule, off for a paused one, each posting
    # to the API with the header the API requires.
    switches = elements(html, role="switch")
    by_target = {s.attrs["hx-post"]: s for s in switches}
    assert by_target["/api/v1/schedules/held:resume"].attrs["aria-checked"] == "false"
    assert by_target["/api/v1/schedules/often:pause"].attrs["aria-checked"] == "true"
    assert all('"X-Requested-By": "firecron"' in s.attrs["hx-headers"] for s in switches)
    # A trigger form per schedule, with a params field.
    forms = elements(html, tag="form", hx_post="/api/v1/schedules/often:trigger")
    assert len(forms) == 1
    assert forms[0].attrs["hx-ext"] == "firecron-json"
    # The live part polls every 2 s.
    live = elements(html, id="live")
    assert live
    assert "every 2s" in live[0].attrs["hx-trigger"]


async def test_schedules_page_shows_at_most_20_runs_per_schedule(backend: Backend) -> None:
    now = await backend.store.clock()
    spec, state = _stored(
        ScheduleSpec.model_validate({"id": "busy", "every": "1m", "target": {"function": "x"}}),
        now,
    )
    await backend.store.put_schedule(spec, state, expect_version=None)
    for i in range(RECENT_RUNS + 5):
        at = now - timedelta(minutes=i + 1)
        await backend.store.create_run(make_run("busy", at, state=RunState.succeeded))
    app = Flask(__name__)
    register(app, Settings(store_url=backend.url, namespace=backend.namespace))
    try:
        html = page(app.test_client(), "/")
    finally:
        app.extensions[EXTENSION].close()
    cells = [c.attrs["data-run"] for c in elements(html, tag="a", data_run="*")]
    assert len(cells) == RECENT_RUNS
    # Newest first: the run one minute ago leads.
    assert cells[0] == make_run("busy", now - timedelta(minutes=1)).id


async def test_schedules_come_a_page_at_a_time(backend: Backend) -> None:
    now = await backend.store.clock()
    ids = [f"s{i:03}" for i in range(SCHEDULES_PAGE + 3)]
    for schedule_id in ids:
        spec, state = _stored(
            ScheduleSpec.model_validate(
                {"id": schedule_id, "every": "1h", "target": {"function": "x"}}
            ),
            now,
        )
        await backend.store.put_schedule(spec, state, expect_version=None)
    app = Flask(__name__)
    register(app, Settings(store_url=backend.url, namespace=backend.namespace))
    client = app.test_client()
    try:
        for path in ["/", "/timeline"]:
            first = page(client, path)
            shown = [r.attrs["data-schedule"] for r in elements(first, data_schedule="*")]
            assert shown == ids[:SCHEDULES_PAGE], path
            following = elements(first, tag="a", id="next-page")[0].attrs["href"]
            second = page(client, unescape(following))
            shown = [r.attrs["data-schedule"] for r in elements(second, data_schedule="*")]
            assert shown == ids[SCHEDULES_PAGE:], path
            assert not elements(second, tag="a", id="next-page")
    finally:
        app.extensions[EXTENSION].close()


async def test_timeline_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    html = page(client, "/timeline")
    bars = {b.attrs["data-run"]: b.attrs["data-state"] for b in elements(html, data_run="*")}
    assert bars["often@ok"] == "succeeded"
    assert bars["often@failed"] == "failed"
    assert bars["often@running"] == "running"
    assert bars["nightly-etl@p"] == "running"
    # 24 h: the run of three days ago is not drawn, nor are pipeline tasks (their
    # pipeline run is).
    assert "often@old" not in bars
    assert not [b for b in bars if "." in b]
    assert len(elements(html, tag="line", **{"class": "now"})) == 1
    assert len(elements(html, tag="text", **{"class": "sla-mark"})) == 1
    assert "1 SLA breach;" in text_of(html) or "1 SLA breach." in text_of(html)
    rows = [g.attrs["data-schedule"] for g in elements(html, tag="g", **{"class": "row"})]
    assert rows == ["berlin-report", "held", "nightly-etl", "often"]

    week = page(client, "/timeline?window=7d")
    assert "often@old" in {b.attrs["data-run"] for b in elements(week, data_run="*")}

    bad = page(client, "/timeline?window=1y", status=400)
    assert "window '1y' is not one of 24h, 7d" in text_of(bad)


async def test_run_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    html = page(client, "/runs/often@failed")
    text = text_of(html)
    assert elements(html, id="run-state")[0].attrs["data-state"] == "failed"
    # The error is escaped, not markup.
    assert "ValueError: &lt;bad&gt; input" in html
    assert "first try failed" in text
    assert "acknowledged 202" in text
    assert "attempt 2 of 3" in text
    # An ended run can be re-run, not cancelled.
    assert elements(html, id="rerun", hx_post="/api/v1/runs/often@failed:rerun")
    assert not elements(html, id="cancel")

    ok = text_of(page(client, "/runs/often@ok"))
    assert '"n": 7' in ok
    assert '"rows": 42' in ok

    running = page(client, "/runs/often@running")
    cancel = elements(running, id="cancel")
    assert cancel[0].attrs["hx-post"] == "/api/v1/runs/often@running:cancel"
    assert '"X-Requested-By": "firecron"' in cancel[0].attrs["hx-headers"]
    assert "every 2s" in elements(running, id="live")[0].attrs["hx-trigger"]

    missing = page(client, "/runs/nope@1", status=404)
    assert "no run 'nope@1'" in text_of(missing)


async def test_the_links_notifications_carry_open_the_run_page(
    console: tuple[FlaskClient, Seeded], backend: Backend
) -> None:
    # PagerDuty's links and the email's "Open the run" line are run_link's: each must
    # land on the run's own page, whatever its id holds (@, :, a task's dot).
    client, _ = console
    origin = "https://console.example.com"
    ids = [run.id for run in await backend.store.list_runs(limit=100)]
    assert any("." in i for i in ids), ids
    assert any("@" in i for i in ids), ids
    for run_id in ids:
        link = run_link(origin, run_id)
        assert link is not None
        assert link.startswith(f"{origin}/runs/")
        html = page(client, link.removeprefix(origin))
        assert elements(html, id="run-state"), run_id
        assert run_id in unescape(html), run_id


async def test_run_page_shows_the_logs(
    console: tuple[FlaskClient, Seeded], backend: Backend
) -> None:
    from firecron.core.logs import LogLine

    client, seeded = console
    at = seeded.now
    await backend.store.append_logs(
        "often@ok",
        1,
        [
            LogLine(attempt=1, seq=1, at=at, level="INFO", logger="app", message="loading <rows>"),
            LogLine(attempt=1, seq=2, at=at, level="WARNING", logger="app", message="slow"),
        ],
    )
    html = page(client, "/runs/often@ok")
    assert "1#1" in html
    assert "INFO app: loading &lt;rows&gt;" in html
    assert "WARNING app: slow" in html


async def test_pipeline_run_page_draws_its_tasks(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    html = page(client, "/runs/nightly-etl@p")
    tasks = {
        t.attrs["data-task"]: t.attrs["data-state"] for t in elements(html, "g", data_task="*")
    }
    # alert has no run yet: drawn, with no state.
    assert tasks == {"extract": "succeeded", "load": "running", "alert": ""}
    links = {a.attrs["href"] for a in elements(html, tag="a", href="*")}
    assert "/runs/nightly-etl@p.extract" in links
    # And as a table, in the pipeline's order: the runs that exist.
    assert [r.attrs["data-task"] for r in elements(html, tag="tr", data_task="*")] == [
        "extract",
        "load",
    ]

    task = page(client, "/runs/nightly-etl@p.load")
    assert "pipeline run nightly-etl@p" in text_of(task)
    # A task's run offers to re-run its pipeline from that task.
    again = elements(task, tag="button", id="rerun-from")
    assert again[0].attrs["hx-post"] == "/api/v1/runs/nightly-etl@p:rerun"
    assert json.loads(again[0].attrs["hx-vals"]) == {"from_task": "load"}
    assert not elements(html, tag="button", id="rerun-from")


async def test_pipelines_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    html = page(client, "/pipelines")
    assert elements(html, tag="section", id="pipeline-etl")
    assert "Extract then load" in text_of(html)
    assert {t.attrs["data-task"] for t in elements(html, data_task="*")} == {
        "extract",
        "load",
        "alert",
    }
    edges = {
        (e.attrs["data-from"], e.attrs["data-to"])
        for e in elements(html, tag="path", data_from="*")
    }
    assert edges == {("extract", "load"), ("load", "alert")}
    assert "run by nightly-etl" in text_of(html)


async def test_state_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    html = page(client, "/state")
    rows = elements(html, tag="tr", data_key="*")
    assert [r.attrs["data-key"] for r in rows] == ["config/mode", "data/ready", "data/none"]
    text = text_of(html)
    assert '{"rows": 4}' in text
    assert '"<full>"' in text
    # Version 2 after two writes; its waiting run beside it; a run waiting on a key
    # nobody wrote yet is listed too.
    assert 'data/ready {"rows": 4} 2 ' in text
    assert "often@wait-ready" in text
    assert "often@wait-missing" in text


async def test_every_page_links_every_page(console: tuple[FlaskClient, Seeded]) -> None:
    client, _ = console
    for path in ["/", "/timeline", "/pipelines", "/state", "/runs/often@ok"]:
        html = page(client, path)
        hrefs = {a.attrs["href"] for a in elements(html, tag="a", href="*")}
        assert {"/", "/timeline", "/pipelines", "/state"} <= hrefs, path
        scripts = [s.attrs["src"] for s in elements(html, tag="script", src="*")]
        assert scripts == ["/console-static/htmx.min.js"]
    assert client.get("/console-static/htmx.min.js").status_code == 200


# -- no store yet, no schedules -------------------------------------------------------


def test_an_empty_store_renders_every_page(tmp_path: Path) -> None:
    app = Flask(__name__)
    register(app, Settings(store_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    client = app.test_client()
    try:
        assert "No schedules yet" in page(client, "/")
        assert elements(page(client, "/timeline"), tag="svg")
        assert "No stored schedule runs a pipeline" in page(client, "/pipelines")
        assert "No state entries" in page(client, "/state")
    finally:
        app.extensions[EXTENSION].close()


def test_a_failing_store_is_a_503_page_naming_it(tmp_path: Path) -> None:
    # A regular file where the database's folder should be: the store cannot open.
    (tmp_path / "taken").write_text("not a folder")
    app = Flask(__name__)
    register(app, Settings(store_url=f"sqlite:///{tmp_path / 'taken' / 'x.db'}"))
    try:
        response = app.test_client().get("/state")
    finally:
        app.extensions[EXTENSION].close()
    assert response.status_code == 503
    assert "the store did not answer: cannot open store sqlite:///" in text_of(response.text)


# -- the vendored htmx ---------------------------------------------------------------


def test_htmx_is_the_pinned_release_unchanged() -> None:
    header, _, body = (STATIC / "htmx.min.js").read_bytes().partition(b"\n")
    pinned = re.search(rb"sha256 of the original file: ([0-9a-f]{64})", header)
    assert pinned is not None
    assert b"htmx.org 2.0.4" in header
    assert hashlib.sha256(body).hexdigest() == pinned.group(1).decode()


# -- the SVG builders (pure) ------------------------------------------------------------

T = datetime(2027, 1, 1, 12, tzinfo=UTC)


def _bars(svg: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    current: str | None = None
    for e in _all(svg):
        if e.tag == "a" and "data-run" in e.attrs:
            current = e.attrs["data-run"]
        elif e.tag == "rect" and current is not None:
            found[current] = e.attrs
            current = None
    return found


def _all(svg: str) -> Iterator[Element]:
    parser = _Elements()
    parser.feed(svg)
    yield from parser.found


def test_timeline_svg_places_clips_and_marks() -> None:
    start, end = T - timedelta(hours=24), T
    svg = timeline_svg(
        [
            (
                "a",
                [
                    Bar(
                        "a@half",
                        T - timedelta(hours=12),
                        T - timedelta(hours=6),
                        "succeeded",
                        "/r/1",
                    ),
                    # Began before the window: clipped to its left edge.
                    Bar(
                        "a@early",
                        T - timedelta(hours=30),
                        T - timedelta(hours=18),
                        "failed",
                        "/r/2",
                    ),
                    # Over before the window: not drawn.
                    Bar(
                        "a@gone", T - timedelta(hours=30), T - timedelta(hours=25), "failed", "/r/3"
                    ),
                    # Still going: drawn to now.
                    Bar("a@live", T - timedelta(hours=1), None, "running", "/r/4"),
                    # One second long: still visible.
                    Bar(
                        "a@blink",
                        T - timedelta(hours=3),
                        T - timedelta(hours=3) + timedelta(seconds=1),
                        "succeeded",
                        "/r/5",
                    ),
                ],
            )
        ],
        start,
        end,
        now=T,
    )
    bars = _bars(svg)
    assert set(bars) == {"a@half", "a@early", "a@live", "a@blink"}
    x0, plot = 170.0, 820.0
    assert float(bars["a@half"]["x"]) == pytest.approx(x0 + plot / 2)
    assert float(bars["a@half"]["width"]) == pytest.approx(plot / 4)
    assert float(bars["a@early"]["x"]) == pytest.approx(x0)
    assert float(bars["a@early"]["width"]) == pytest.approx(plot / 4)
    assert float(bars["a@live"]["x"]) + float(bars["a@live"]["width"]) == pytest.approx(x0 + plot)
    assert float(bars["a@blink"]["width"]) == pytest.approx(2.0)
    assert bars["a@half"]["fill"] == "#2e7d32"
    assert bars["a@early"]["fill"] == "#c62828"
    assert len([e for e in _all(svg) if e.attrs.get("class") == "now"]) == 1


def test_timeline_svg_marks_sla_breaches_and_escapes_text() -> None:
    start, end = T - timedelta(hours=24), T + timedelta(hours=1)
    svg = timeline_svg(
        [
            (
                "<b>&",
                [
                    Bar(
                        'r"1',
                        T - timedelta(hours=2),
                        T - timedelta(hours=1),
                        "succeeded",
                        "/runs/r?x=1&y=2",
                        sla_breached_at=T - timedelta(hours=1, minutes=30),
                    )
                ],
            )
        ],
        start,
        end,
        now=T - timedelta(days=2),  # outside the window: no now line
    )
    assert "<b>" not in svg
    assert "&lt;b&gt;&amp;" in svg
    assert 'data-run="r&quot;1"' in svg
    assert 'href="/runs/r?x=1&amp;y=2"' in svg
    assert svg.count('class="sla-mark"') == 1
    assert 'class="now"' not in svg
    with pytest.raises(ValueError, match="is not after start"):
        timeline_svg([], T, T, T)


def test_timeline_svg_ticks_hours_over_a_day_and_days_over_a_week() -> None:
    # The page's 24 h window ends a little past now: still hours.
    day = timeline_svg([], T - timedelta(hours=24), T + timedelta(minutes=30), T)
    assert "03:00" in day
    assert "Thu 31 Dec" not in day
    week = timeline_svg([], T - timedelta(days=7), T, T)
    assert "Thu 31 Dec" in week
    assert "03:00" not in week


def test_dag_svg_lays_out_by_depth() -> None:
    svg = dag_svg(ETL)
    boxes: dict[str, tuple[float, float]] = {}
    current: str | None = None
    for e in _all(svg):
        if e.tag == "g" and "data-task" in e.attrs:
            current = e.attrs["data-task"]
        elif e.tag == "rect" and current is not None:
            boxes[current] = (float(e.attrs["x"]), float(e.attrs["y"]))
            current = None
    # One column per depth, left to right.
    assert boxes["extract"][0] < boxes["load"][0] < boxes["alert"][0]
    # Both edges carry a condition or a rule: dashed, titled with it.
    assert svg.count('stroke-dasharray="5 3"') == 2
    assert "if: tasks.extract.output.rows &gt; 0" in svg
    assert "when: any_failed" in svg
    # The bare graph shows what each task runs; no links.
    assert "function:extract" in svg
    assert "<a " not in svg


def test_dag_svg_with_states_and_links() -> None:
    svg = dag_svg(ETL, states={"extract": "failed"}, links={"extract": "/runs/x.extract"})
    tasks = {
        e.attrs["data-task"]: e.attrs["data-state"] for e in _all(svg) if "data-task" in e.attrs
    }
    assert tasks == {"extract": "failed", "load": "", "alert": ""}
    assert "not started" in svg
    assert svg.count("<a ") == 1
    assert 'href="/runs/x.extract"' in svg


def test_dag_svg_parallel_tasks_share_a_column() -> None:
    spec = PipelineSpec.model_validate(
        {
            "id": "fan",
            "tasks": [
                {"id": "a", "target": {"function": "a"}},
                {"id": "b", "target": {"function": "b"}},
                {"id": "c", "target": {"function": "c"}, "after": ["a", "b", "ghost"]},
            ],
        }
    )
    svg = dag_svg(spec)
    rects = [e for e in _all(svg) if e.tag == "rect"]
    assert rects[0].attrs["x"] == rects[1].attrs["x"]
    assert rects[0].attrs["y"] != rects[1].attrs["y"]
    # An after naming no task draws no edge (validate refuses it on its own).
    assert svg.count('class="edge"') == 2
