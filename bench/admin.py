"""Admin: how fast the console's pages and the runs API answer over a big store.

Per backend (SQLite in a temp dir, the Firestore emulator):

1. **Seed** ``schedules`` schedules and ``runs`` runs through the store API: the
   schedules in one :meth:`Store.write_schedules` (as ``firecron apply`` writes them),
   the runs with :meth:`Store.create_run`, ``_CREATE_CONCURRENCY`` at once (the SQLite
   store commits concurrent writes together). The runs are spread evenly over the
   schedules and over the last 7 days (each schedule's runs ``7 d / per-schedule``
   apart, offset per schedule), so about a seventh of them fall in the 24 h timeline.
   Their states are what a store holds after a week: mostly ``succeeded``, some
   ``failed``, ``timed_out``, ``lost``, ``cancelled``, ``skipped``, and the newest run
   of some schedules ``running`` (heartbeating), ``retry_wait`` or ``waiting``. One
   schedule in ``PIPELINE_EVERY`` targets a 3-task pipeline: its runs are pipeline runs,
   each with its 3 task runs (stored besides the ``runs`` top-level runs, and counted
   apart).
2. **Serve** :func:`firecron.api.make_app` (the API and the console, as ``firecron dev``
   and the deployed ``admin`` function serve it) with werkzeug's threaded server on
   127.0.0.1, in its own process (``python -m bench.admin serve``), so the client's
   work is not on the server's CPU budget and the server runs as it runs in ``dev``.
3. **Time real HTTP GETs** with ``httpx`` (one client, keep-alive): the schedules page
   ``/`` (the console lists :data:`~firecron.console.views.SCHEDULES_PAGE` schedules a
   page; its last page ``/?after=...`` too, as a cursor page must cost the same),
   ``/api/v1/runs?limit=50`` and the timeline ``/timeline?window=24h`` (its first page
   of schedules). After ``warmups`` requests each, ``requests`` timed requests, in
   sequence, each checked (status 200, and what the page must show). An endpoint stops
   early when its requests pass ``budget_s`` (so a slow page cannot hold the benchmark
   for minutes); the figures say how many requests were timed.
4. **Where the time goes**: the store reads each first page makes, and the console's
   data step of each page, timed in this process on its own client of the store
   (:func:`breakdown`), so a slow page can be told apart from a slow store.

Targets (the issue: "answer within"): the p95 of the timed requests, 200 ms for the
schedules page and for ``runs?limit=50``, 500 ms for the 24 h timeline. On the emulator
the figures are reported with the same verdicts; its sizes may be smaller (``--quick``
and the config), and the figures say which were used.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from bench._common import ROOT, Backends, BenchResult, Check, open_shared, print_table
from bench.pipelines import quantile
from firecron.core import planning
from firecron.core.models import PipelineSpec, ScheduleSpec, ScheduleState
from firecron.core.pipelines import build_task_runs
from firecron.core.runs import Run, RunState, scheduled_run_id
from firecron.store.base import ScheduleWrite, Store

NAME = "admin"
PIPELINE_EVERY = 100
"""One schedule in this many targets a pipeline (its runs are pipeline runs with tasks)."""
_CREATE_CONCURRENCY = 64
"""Runs created at once while seeding."""
_WEEK = timedelta(days=7)
_SECRET = "whsec_YmVuY2gtYWRtaW4tc2VjcmV0"
"""The server's signing secret (it sends nothing; set, it keeps the "unsigned" warning out)."""
_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")


@dataclass(frozen=True)
class AdminConfig:
    schedules: int = 10_000
    runs: int = 100_000
    """Top-level runs (pipeline runs' task runs come on top)."""
    firestore_schedules: int = 10_000
    firestore_runs: int = 20_000
    """The emulator's sizes. Fewer runs: the emulator answers a filtered query by scanning
    the collection (about 95 ms per run query at 20,000 runs, 19 ms at 5,000), so a
    page's 100 run queries take 10 s at 20,000 runs and would take about 50 s at
    100,000, and seeding (about 1,000 runs/s) would take minutes."""
    requests: int = 20
    warmups: int = 2
    budget_s: float = 60.0
    """An endpoint's requests stop once they have taken this long in all (warm-ups
    included; at least one is timed): a page of 15 s is timed 3 times, not 20."""
    page_target_ms: float = 200.0
    timeline_target_ms: float = 500.0


# -- seeding ----------------------------------------------------------------------------


def _pipeline() -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "id": "etl",
            "tasks": [
                {"id": "extract", "target": {"url": "https://jobs.example.com/extract"}},
                {
                    "id": "transform",
                    "after": ["extract"],
                    "target": {"url": "https://jobs.example.com/transform"},
                },
                {
                    "id": "load",
                    "after": ["transform"],
                    "target": {"url": "https://jobs.example.com/load"},
                },
            ],
        }
    )


def build_schedules(n: int, now: datetime) -> list[tuple[ScheduleSpec, ScheduleState]]:
    """``n`` schedules: cron and interval triggers in a few zones, descriptions, one
    in :data:`PIPELINE_EVERY` targeting a pipeline; with their initial states."""
    pipeline = _pipeline()
    out = []
    for i in range(n):
        doc: dict[str, Any] = {
            "id": f"job-{i:05d}",
            "description": f"nightly export {i} of the reporting tables",
            "timezone": _ZONES[i % len(_ZONES)],
            "params": {"shard": i % 16},
            "target": {"url": f"https://jobs.example.com/export/{i}"},
        }
        if i % 3 == 0:
            doc["cron"] = f"{i % 60} {i % 24} * * *"
        elif i % 3 == 1:
            doc["cron"] = f"*/{5 + i % 25} * * * 1-5"
        else:
            doc["every"] = f"{1 + i % 12}h"
        if i % PIPELINE_EVERY == 0:
            doc["target"] = {"pipeline": pipeline.id}
            doc["pipeline_spec"] = pipeline
        spec = ScheduleSpec.model_validate(doc)
        out.append((spec, planning.initial_state(spec, now - _WEEK)))
    return out


_ENDED = (
    # (state, share per 100 of the older runs): a week's mix
    (RunState.succeeded, 86),
    (RunState.failed, 6),
    (RunState.timed_out, 2),
    (RunState.lost, 1),
    (RunState.cancelled, 2),
    (RunState.skipped, 3),
)
_ENDED_CYCLE = [state for state, share in _ENDED for _ in range(share)]


def _ended(run: Run, state: RunState, now: datetime, k: int) -> Run:
    start = run.fire_at + timedelta(seconds=1 + k % 5)
    end = start + timedelta(seconds=20 + (k * 37) % 600)
    fields: dict[str, Any] = {
        "state": state,
        "dispatched_at": start - timedelta(milliseconds=300),
        "started_at": start,
        "heartbeat_at": end,
        "ended_at": end,
        "updated_at": end,
        "deadline_at": None,
        "watch_at": None,
    }
    if state is RunState.skipped:
        fields.update(dispatched_at=None, started_at=None, heartbeat_at=None, ended_at=run.fire_at)
        fields["error"] = "skipped: the previous run was still active"
    elif state is not RunState.succeeded:
        fields["error"] = f"{state.value}: exit status 1"
    if state is RunState.failed and k % 7 == 0:
        fields["sla_breached_at"] = start + timedelta(seconds=15)
    if state is RunState.succeeded:
        fields["output"] = {"rows": k % 5000}
    if end > now:  # cannot have ended in the future: it is still running
        return _open(run, RunState.running, now)
    return run.model_copy(update=fields)


def _open(run: Run, state: RunState, now: datetime) -> Run:
    start = min(run.fire_at + timedelta(seconds=1), now)
    fields: dict[str, Any] = {"state": state, "updated_at": now}
    if state is RunState.running:
        fields.update(
            dispatched_at=start,
            started_at=start,
            heartbeat_at=now,
            deadline_at=now + timedelta(minutes=1),
            watch_at=now + timedelta(minutes=1),
        )
    elif state is RunState.retry_wait:
        fields.update(
            attempt=2,
            retry_at=now + timedelta(minutes=5),
            deadline_at=now + timedelta(minutes=5),
            watch_at=now + timedelta(minutes=5),
            error="failed: exit status 1",
        )
    elif state is RunState.waiting:
        fields.update(
            wait_key=f"exports/{run.schedule_id}/ready",
            deadline_at=now + timedelta(hours=1),
            watch_at=now + timedelta(hours=1),
        )
    return run.model_copy(update=fields)


def build_runs(
    items: Sequence[tuple[ScheduleSpec, ScheduleState]], n: int, now: datetime
) -> tuple[list[Run], Counter[str]]:
    """``n`` top-level runs over ``items`` and the last 7 days (see the module
    docstring), plus the task runs of the pipeline runs; and the count by state."""
    runs: list[Run] = []
    per = max(1, -(-n // len(items)))
    step = _WEEK / per
    made = 0
    for k in range(per):
        for s, (spec, _) in enumerate(items):
            if made == n:
                break
            made += 1
            # Evenly over the week, offset per schedule so creations interleave.
            at = (now - _WEEK + step * k + step * (s / len(items))).replace(microsecond=0)
            occurrence = planning.Occurrence(at, at)
            run = planning.build_run(spec, scheduled_run_id(spec.id, at), occurrence, at)
            newest = k == per - 1
            if newest and s % 50 == 1:
                run = _open(run, RunState.running, now)
            elif newest and s % 100 == 3:
                run = _open(run, RunState.retry_wait, now)
            elif newest and s % 100 == 5:
                run = _open(run, RunState.waiting, now)
            else:
                run = _ended(run, _ENDED_CYCLE[(s * 7 + k) % len(_ENDED_CYCLE)], now, s + k)
            runs.append(run)
            if run.pipeline_spec is not None:
                runs.extend(_tasks(run, now))
    states = Counter(r.state.value for r in runs)
    return runs, states


def _tasks(pipeline_run: Run, now: datetime) -> list[Run]:
    """The pipeline run's task runs, in states that agree with its own."""
    tasks, _, _ = build_task_runs(
        pipeline_run, pipeline_run.created_at, pending_grace=timedelta(minutes=5)
    )
    out = []
    for i, task in enumerate(tasks):
        task = task.model_copy(update={"created_at": pipeline_run.created_at})
        if pipeline_run.state is RunState.running:
            # The first task done, the second running, the third waiting for it.
            if i == 0:
                task = _ended(task, RunState.succeeded, now, i)
            elif i == 1:
                task = _open(task, RunState.running, now)
        elif pipeline_run.state in (RunState.succeeded, RunState.failed):
            last_failed = pipeline_run.state is RunState.failed and i == len(tasks) - 1
            task = _ended(task, RunState.failed if last_failed else RunState.succeeded, now, i)
        else:
            task = task.model_copy(
                update={
                    "state": RunState.cancelled,
                    "ended_at": pipeline_run.ended_at or now,
                    "deadline_at": None,
                    "watch_at": None,
                }
            )
        out.append(task)
    return out


async def _create_runs(store: Store, runs: Sequence[Run]) -> float:
    slots = asyncio.Semaphore(_CREATE_CONCURRENCY)

    async def create(run: Run) -> Run | None:
        async with slots:
            return await store.create_run(run)

    started = time.perf_counter()
    created = await asyncio.gather(*(create(r) for r in runs))
    missing = sum(1 for r in created if r is None)
    if missing:
        raise RuntimeError(f"seeding: {missing} of {len(runs)} runs were not created")
    return time.perf_counter() - started


async def seed(store: Store, schedules: int, runs: int) -> dict[str, Any]:
    """Seed the store; returns the sizes, the states and the seconds each part took."""
    now = (await store.clock()).replace(microsecond=0)
    items = build_schedules(schedules, now)
    started = time.perf_counter()
    written = await store.write_schedules([ScheduleWrite(sp, st, None) for sp, st in items])
    if any(w is None for w in written):
        raise RuntimeError("seeding: some schedules were not created")
    schedules_s = time.perf_counter() - started
    built, states = build_runs(items, runs, now)
    runs_s = await _create_runs(store, built)
    tasks = sum(1 for r in built if r.task is not None)
    return {
        "schedules": schedules,
        "pipeline_schedules": sum(1 for sp, _ in items if sp.pipeline_spec is not None),
        "runs": len(built) - tasks,
        "task_runs": tasks,
        "runs_last_24h": sum(
            1 for r in built if r.task is None and r.created_at >= now - timedelta(hours=24)
        ),
        "states": dict(sorted(states.items())),
        "seed_schedules_s": round(schedules_s, 1),
        "seed_runs_s": round(runs_s, 1),
        "seed_runs_per_s": round(len(built) / runs_s) if runs_s else None,
    }


# -- the server process -----------------------------------------------------------------


def serve(store_url: str, namespace: str) -> None:
    """Serve ``make_app`` on 127.0.0.1 (a free port, printed on stdout) until stdin closes."""
    import logging
    import threading

    from werkzeug.serving import make_server

    from firecron.api import close, make_app
    from firecron.settings import Settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # From the environment, as `firecron dev` and the deployed function make it.
    env = {**os.environ, "FIRECRON_STORE": store_url, "FIRECRON_NAMESPACE": namespace}
    app = make_app(Settings.from_env(env))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(server.server_port, flush=True)
    sys.stdin.read()  # the parent closes it to stop us
    server.shutdown()
    close(app)


@contextmanager
def server_process(store_url: str, namespace: str) -> Iterator[tuple[str, int]]:
    """``serve`` in its own process; yields its base URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.admin", "serve", store_url, namespace],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FIRECRON_EVENT_LOG": "0", "FIRECRON_SIGNING_SECRET": _SECRET},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the admin server did not start")
        yield f"http://127.0.0.1:{int(line)}", proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- timing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    target_ms: float
    check: Callable[[httpx.Response], str | None]
    """What is wrong with a response (None: it is right)."""


def _endpoints(cfg: AdminConfig, schedules: int) -> list[Endpoint]:
    """The GETs timed: the schedules page (its first page, and its last when there are
    several: a cursor page must cost the same), the runs API and the 24 h timeline."""
    from firecron.console.views import SCHEDULES_PAGE

    first, last = "job-00000", f"job-{schedules - 1:05d}"
    several = schedules > SCHEDULES_PAGE

    def status(resp: httpx.Response) -> str | None:
        return None if resp.status_code == 200 else f"status {resp.status_code}"

    def first_page(resp: httpx.Response) -> str | None:
        if (wrong := status(resp)) is not None:
            return wrong
        if first not in resp.text:
            return f"{first} is not on the page"
        return None if ('id="next-page"' in resp.text) == several else "wrong next-page link"

    def last_page(resp: httpx.Response) -> str | None:
        if (wrong := status(resp)) is not None:
            return wrong
        if last not in resp.text or 'id="next-page"' in resp.text:
            return f"{last} is not on the last page, or it links a next one"
        return None

    def runs(resp: httpx.Response) -> str | None:
        if (wrong := status(resp)) is not None:
            return wrong
        got = len(resp.json()["runs"])
        return None if got == 50 else f"{got} runs, not 50"

    def timeline(resp: httpx.Response) -> str | None:
        if (wrong := status(resp)) is not None:
            return wrong
        return None if "<svg" in resp.text and first in resp.text else f"no chart with {first}"

    out = [Endpoint("schedules page", "/", cfg.page_target_ms, first_page)]
    if several:
        # The id just before the last page's first: ``?after=`` is exclusive.
        after = f"job-{(schedules - 1) // SCHEDULES_PAGE * SCHEDULES_PAGE - 1:05d}"
        out.append(
            Endpoint("schedules page, last", f"/?after={after}", cfg.page_target_ms, last_page)
        )
    out += [
        Endpoint("runs?limit=50", "/api/v1/runs?limit=50", cfg.page_target_ms, runs),
        Endpoint("timeline 24h", "/timeline?window=24h", cfg.timeline_target_ms, timeline),
    ]
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def time_endpoint(client: httpx.Client, endpoint: Endpoint, cfg: AdminConfig) -> dict[str, Any]:
    """Warm-ups, then timed GETs until ``cfg.requests``, or until the endpoint's
    requests (warm-ups included) have taken ``cfg.budget_s`` and one was timed."""
    times: list[float] = []
    size = 0
    spent = 0.0
    for i in range(cfg.warmups + cfg.requests):
        started = time.perf_counter()
        resp = client.get(endpoint.path)
        elapsed = time.perf_counter() - started
        wrong = endpoint.check(resp)
        if wrong is not None:
            raise RuntimeError(f"GET {endpoint.path}: {wrong}: {resp.text[:300]}")
        size = len(resp.content)
        spent += elapsed
        if i >= cfg.warmups:
            times.append(elapsed)
            if spent > cfg.budget_s:
                break
    return {
        "path": endpoint.path,
        "requests": len(times),
        "p50_ms": _ms(quantile(times, 0.5)),
        "p95_ms": _ms(quantile(times, 0.95)),
        "max_ms": _ms(max(times)),
        "min_ms": _ms(min(times)),
        "bytes": size,
        "target_ms": endpoint.target_ms,
        "times_ms": [_ms(t) for t in times],
    }


async def breakdown(store: Store) -> dict[str, Any]:
    """What the first page of each view reads, timed on this process's client (step 4).

    ``*_store_ms`` are the store calls alone (the page's schedules, then one run query
    per schedule, as the views make them); ``schedules_page_rows_ms`` is the console's
    own data step (:func:`firecron.console.views._schedule_rows`: those reads plus the
    rows built from them) and ``timeline_data_ms`` the timeline's
    (``views._timeline``, its SVG drawn, in a request context for its links). What a GET
    takes beyond them is the template, Flask and HTTP.
    """
    from firecron.api import make_app
    from firecron.console import views
    from firecron.settings import Settings

    out: dict[str, Any] = {}
    started = time.perf_counter()
    listed = await store.list_schedules(limit=views.SCHEDULES_PAGE + 1)
    out["list_schedules_page_ms"] = _ms(time.perf_counter() - started)
    page = listed[: views.SCHEDULES_PAGE]
    started = time.perf_counter()
    for stored in page:
        await store.list_runs(schedule_id=stored.id, limit=views.RECENT_RUNS)
    spent = time.perf_counter() - started
    out["schedules_page_run_queries"] = len(page)
    out["schedules_page_run_queries_ms"] = _ms(spent)
    out["per_run_query_ms"] = round(1000 * spent / max(len(page), 1), 3)
    started = time.perf_counter()
    await views._schedule_rows(store, None)
    out["schedules_page_rows_ms"] = _ms(time.perf_counter() - started)
    now = await store.clock()
    started = time.perf_counter()
    for stored in page:
        await views._runs_since(store, stored.id, now - timedelta(hours=24))
    out["timeline_run_reads_ms"] = _ms(time.perf_counter() - started)
    # url_for (the bars' links) needs a request context of an app with the console.
    app = make_app(Settings(), console=True)
    with app.test_request_context("/timeline"):
        started = time.perf_counter()
        await views._timeline(store, timedelta(hours=24), None)
        out["timeline_data_ms"] = _ms(time.perf_counter() - started)
    started = time.perf_counter()
    await store.list_runs(limit=51)
    out["list_runs_51_ms"] = _ms(time.perf_counter() - started)
    return out


# -- the benchmark ----------------------------------------------------------------------


def run_backend(backends: Backends, backend: str, cfg: AdminConfig) -> dict[str, Any]:
    schedules = cfg.schedules if backend == "sqlite" else cfg.firestore_schedules
    runs = cfg.runs if backend == "sqlite" else cfg.firestore_runs
    shared = open_shared(backends, backend, "admin")
    print(f"  {backend}: seeding {schedules:,} schedules and {runs:,} runs...", flush=True)
    try:
        seeded = asyncio.run(_seed_and_close(shared.store, schedules, runs))
    except BaseException:
        asyncio.run(shared.store.close())
        raise
    print(
        f"  {backend}: seeded in {seeded['seed_schedules_s']}s + {seeded['seed_runs_s']}s",
        flush=True,
    )
    result: dict[str, Any] = {"backend": backend, **seeded, "endpoints": {}}
    with (
        server_process(shared.url, shared.namespace) as (url, _pid),
        httpx.Client(base_url=url, timeout=120, trust_env=False) as client,
    ):
        for endpoint in _endpoints(cfg, schedules):
            r = time_endpoint(client, endpoint, cfg)
            result["endpoints"][endpoint.name] = r
            print(
                f"  {backend}: {endpoint.name}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms "
                f"({r['requests']} requests)",
                flush=True,
            )
    result["store_reads"] = asyncio.run(_breakdown(backends, backend, shared.url, shared.namespace))
    return result


async def _seed_and_close(store: Store, schedules: int, runs: int) -> dict[str, Any]:
    try:
        return await seed(store, schedules, runs)
    finally:
        await store.close()


async def _breakdown(backends: Backends, backend: str, url: str, namespace: str) -> dict[str, Any]:
    from firecron.store import open_store

    store = open_store(url, namespace)
    try:
        return await breakdown(store)
    finally:
        await store.close()


def _row(backend: str, name: str, e: dict[str, Any]) -> list[Any]:
    """One endpoint's line of the printed table."""
    return [
        backend,
        name,
        e["requests"],
        e["p50_ms"],
        e["p95_ms"],
        e["max_ms"],
        round(e["bytes"] / 1024),
        e["target_ms"] if backend == "sqlite" else "-",
    ]


def run(backends: Backends, names: list[str], cfg: AdminConfig | None = None) -> BenchResult:
    cfg = cfg or AdminConfig()
    per: dict[str, Any] = {}
    for backend in names:
        per[backend] = run_backend(backends, backend, cfg)
    figures: dict[str, Any] = {"config": asdict(cfg), "backends": per}
    checks = []
    rows = []
    for backend, r in per.items():
        for name, e in r["endpoints"].items():
            ok = e["p95_ms"] <= e["target_ms"]
            # The targets are SQLite's; the emulator's figures are reported only:
            # it scans the whole runs collection for every query (about 0.1 s each at
            # 20,000 runs), which Firestore answers from its index.
            if backend != "sqlite":
                rows.append(_row(backend, name, e))
                continue
            checks.append(
                Check(
                    NAME,
                    backend,
                    f"{name} p95 <= {e['target_ms']:.0f} ms "
                    f"({r['schedules']:,} schedules, {r['runs']:,} runs)",
                    f"{e['p95_ms']} ms (p50 {e['p50_ms']}, {e['requests']} requests)",
                    ok,
                )
            )
            rows.append(_row(backend, name, e))
    print_table(
        "Admin: HTTP GETs on a seeded store (ms)",
        ["backend", "endpoint", "requests", "p50", "p95", "max", "KiB", "target p95"],
        rows,
    )
    print_table(
        "Admin: seeded store and the store reads behind the pages (ms, this process)",
        ["figure", *per],
        [
            [key, *(per[b][key] for b in per)]
            for key in ("schedules", "runs", "task_runs", "runs_last_24h", "seed_runs_s")
        ]
        + [
            [key, *(per[b]["store_reads"][key] for b in per)]
            for key in (
                "list_schedules_page_ms",
                "schedules_page_run_queries",
                "schedules_page_run_queries_ms",
                "per_run_query_ms",
                "schedules_page_rows_ms",
                "timeline_run_reads_ms",
                "timeline_data_ms",
                "list_runs_51_ms",
            )
        ],
    )
    return BenchResult(NAME, figures, checks)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps({"usage": "python -m bench.admin serve STORE_URL NAMESPACE"}))
        sys.exit(2)
