"""Cost per run, end to end: every store read and write one worker run costs.

ONE run at a time goes through the real code, on a fresh store per run:

1. a schedule (``every: 1d``, a ``function`` target) is seeded, due at ``T0``;
2. a real :meth:`Dispatcher.tick` at ``T0`` claims it and sends it, signed, over HTTP to
   a worker served in this process by werkzeug: the SDK's own request handler
   (``firecron.worker._http._handle``) on a real :class:`~firecron.worker._Runtime`
   that opened its own client of the store by URL (as a deployed worker does);
3. the worker starts the run, streams its 202, and calls the benchmark's function,
   which *simulates* the run's minutes instead of waiting them: the runtime's clock is
   injected (:class:`SimClock`, shared with the dispatcher), the SDK's check-in thread
   is off (``_Execution._start_check_ins`` is replaced for the run), and the function calls the execution's
   check-in at each instant the thread would have (every ``interval`` of simulated
   time) and runs the dispatcher's watchdog tick of every simulated minute;
4. the function returns at ``T0 + duration``; the SDK records the end, settles it and
   emits its events; one more tick runs at the next whole minute.

Every store call of the dispatcher's and of the worker's clients is counted from the
store's own ``stats`` (reads, writes and queries as Firestore bills them) and put in a
phase by the code that made it (the nearest known function on the caller's stack, see
:data:`_PHASES`): claim, send, start, check-ins (renewals / reads), end, settle,
events, logs, the watchdog's writes to this run, and the ticks' queries. A query that
returns nothing still costs one read on Firestore: those reads are the ticks' own,
shared by every schedule of the deployment, and are reported apart from the run's.

Two cadences are measured: ``lease`` (the SDK as it is: a check-in reads the run and
renews the lease only near its end; the default ``heartbeat_timeout`` of
:class:`RunTimeouts`) and ``legacy`` (what the SDK did before leases, through the same
code: a renewal, ``_Execution.beat``, every 15 s with a 90 s ``heartbeat_timeout``).

Then: the detection latency and the writes/reads of 5-minute and 1-hour runs for
several ``heartbeat_timeout`` settings, and the monthly Firestore bill of 1,000
schedules every 15 minutes beside Cloud Scheduler's price for 1,000 jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import sys
import threading
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from bench._common import (
    Backends,
    BenchResult,
    Check,
    SharedStore,
    bench_settings,
    open_shared,
    print_table,
)
from firecron.core import planning
from firecron.core.lifecycle import RunTimeouts
from firecron.core.models import ScheduleSpec
from firecron.core.runs import RunState
from firecron.store.base import ScheduleWrite, Store

NAME = "scale_cost"
SECRET = "whsec_YmVuY2gtc2NhbGUtY29zdC0x"
"""The signing secret the bench's dispatcher and its in-process worker share."""
FUNCTION = "cost_worker"

# -- published prices (https://cloud.google.com/firestore/pricing, read 2026-11) ---------

FIRESTORE_PRICING_URL: Final = "https://cloud.google.com/firestore/pricing"
SCHEDULER_PRICING_URL: Final = "https://cloud.google.com/scheduler/pricing"
PRICES_READ_ON: Final = "2026-11"


@dataclass(frozen=True)
class FirestorePrices:
    """US dollars per 100,000 operations of one Firestore location."""

    location: str
    reads: float
    writes: float
    deletes: float


NAM5: Final = FirestorePrices("nam5 (multi-region)", reads=0.06, writes=0.18, deletes=0.02)
US_CENTRAL1: Final = FirestorePrices(
    "us-central1 (regional)", reads=0.03, writes=0.09, deletes=0.01
)
SCHEDULER_JOB_MONTH_USD: Final = 0.10
"""Cloud Scheduler: $0.10 per job per month (beyond the 3 free jobs per billing account)."""

LEGACY_INTERVAL: Final = timedelta(seconds=15)
LEGACY_HEARTBEAT_TIMEOUT: Final = timedelta(seconds=90)
"""What the SDK did before leases: a heartbeat write every 15 s, lost after 90 s."""
LEASE_DEFAULT_S: Final = RunTimeouts().heartbeat_timeout.total_seconds()
"""The default lease in seconds (the settings table marks it)."""
TICK: Final = timedelta(minutes=1)
"""Cloud Scheduler's cadence of the root tick: the watchdog looks once a minute."""


@dataclass(frozen=True)
class CostConfig:
    durations_s: tuple[int, ...] = (10, 300, 3600)
    """The run lengths measured at default settings, on each backend."""
    lease_settings_s: tuple[int, ...] = (30, 90, 300, 900)
    """The ``heartbeat_timeout`` values of the settings table."""
    settings_durations_s: tuple[int, ...] = (300, 3600)
    """The run lengths of the settings table."""
    schedules: int = 1_000
    every_minutes: int = 15
    run_minutes: int = 5
    max_writes_5min: int = 6
    """The target: a 5-minute run at default settings writes at most this many times."""
    cloud_tasks: bool = True
    """Also measure a 5-minute run delivered through the Cloud Tasks emulator (when
    ``make tasks-emulator`` installed it)."""

    @classmethod
    def quick(cls) -> CostConfig:
        return cls(durations_s=(10, 300), lease_settings_s=(90, 300), settings_durations_s=(300,))

    @property
    def runs_per_month(self) -> int:
        """Runs a month of ``schedules`` schedules every ``every_minutes`` (365/12 days)."""
        return runs_per_month(self.schedules, self.every_minutes)


# -- pure helpers -------------------------------------------------------------------------


def runs_per_month(schedules: int, every_minutes: int) -> int:
    """Runs a month (365 / 12 days) of ``schedules`` schedules firing every ``every_minutes``:
    1,000 every 15 minutes is 2,920,000."""
    per_day = 24 * 60 // every_minutes
    return round(schedules * per_day * 365 / 12)


def monthly_usd(
    runs: int, writes_per_run: float, reads_per_run: float, p: FirestorePrices
) -> float:
    """The Firestore bill of ``runs`` runs a month at these per-run operations (deletes
    aside: a run's document is deleted once, by its TTL, which Firestore bills as a delete)."""
    return runs * (writes_per_run * p.writes + reads_per_run * p.reads) / 100_000


def scheduler_usd(jobs: int) -> float:
    """Cloud Scheduler's monthly price of ``jobs`` jobs."""
    return jobs * SCHEDULER_JOB_MONTH_USD


def check_in_interval(
    heartbeat_timeout: timedelta, heartbeat_interval: timedelta | None = None
) -> timedelta:
    """The SDK's check-in cadence: the decorator's ``heartbeat_interval`` or a fifth of
    the lease, at most a third of it (mirrors ``_Execution.interval``)."""
    interval = heartbeat_timeout / 5 if heartbeat_interval is None else heartbeat_interval
    return min(interval, heartbeat_timeout / 3)


def detection_latency(heartbeat_timeout: timedelta, tick: timedelta = TICK) -> timedelta:
    """The longest a dead attempt can go unnoticed: its lease (``heartbeat_timeout``
    after its last renewal) plus one tick of the watchdog."""
    return heartbeat_timeout + tick


def timeline(duration: timedelta, interval: timedelta) -> list[tuple[timedelta, str]]:
    """The simulated instants of a run of ``duration`` after its start: a check-in every
    ``interval`` and a watchdog tick every minute, while the run is still going (a
    check-in first at an instant both fall on)."""
    steps: list[tuple[timedelta, str]] = []
    k = 1
    while interval * k < duration:
        steps.append((interval * k, "check-in"))
        k += 1
    m = 1
    while TICK * m < duration:
        steps.append((TICK * m, "tick"))
        m += 1
    return sorted(steps, key=lambda s: (s[0], s[1] != "check-in"))


# -- metering every store call ------------------------------------------------------------


@dataclass
class Tally:
    """Store operations of one phase."""

    reads: int = 0
    """Documents read (by gets and queries)."""
    writes: int = 0
    queries: int = 0
    empty_queries: int = 0
    """Queries that returned nothing: Firestore bills each as one read."""
    calls: int = 0

    def add(self, reads: int, writes: int, queries: int) -> None:
        self.reads += reads
        self.writes += writes
        self.queries += queries
        self.empty_queries += queries if queries and not reads else 0
        self.calls += 1


_PHASES: Final = {
    # the worker (firecron.worker._execution, firecron.worker._runtime)
    "check_in": "check-in read",
    "beat": "renewal",
    "_write_end": "end",
    "_record": "end",
    "_begin": "start",
    "_settle": "settle",
    "_sync": "clock",
    # the dispatcher and what both share (firecron.dispatch, firecron.outbox)
    "_claim_and_fire": "claim",
    "_latest_runs": "claim",
    "_fire": "send",
    "_watch_one": "watchdog",
    "settle": "settle",
    "_emit": "events",
    "emit": "events",
    "_deliver": "events",
    "flush": "events",
}
"""The phase of a store call: the first of these function names found on the caller's
stack, nearest first (``beat`` before ``check_in``: a renewal made by a check-in)."""
_METHOD_PHASES: Final = {
    "append_logs": "logs",
    "due_schedules": "due query",
    "due_watches": "watchdog query",
    "clock": "clock",
    "close": "close",
}
"""Store methods whose phase is the method's own, whoever calls it."""


def phase_of(method: str, frame: types.FrameType | None) -> str:
    """The phase of a call of ``method`` made from ``frame`` (see :data:`_PHASES`)."""
    if method in _METHOD_PHASES:
        return _METHOD_PHASES[method]
    depth = 0
    while frame is not None and depth < 60:
        name = frame.f_code.co_name
        if name in _PHASES:
            return _PHASES[name]
        frame = frame.f_back
        depth += 1
    return f"other ({method})"


class MeteredStore:
    """A real store whose every call is tallied by phase from the store's own ``stats``.

    Calls are serialised (one lock on the loop the store is used on) so the counters'
    change over one call is that call's alone; every call goes to the real store.
    """

    def __init__(self, store: Store, book: dict[str, Tally]) -> None:
        self._store = store
        self._book = book
        self._lock: asyncio.Lock | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            phase = phase_of(name, sys._getframe(1))
            return self._metered(phase, attr(*args, **kwargs))

        return call

    async def _metered(self, phase: str, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            s = self._store.stats
            before = (s.reads, s.writes, s.queries)
            try:
                return await coro
            finally:
                tally = self._book.setdefault(phase, Tally())
                tally.add(s.reads - before[0], s.writes - before[1], s.queries - before[2])


# -- the simulated run --------------------------------------------------------------------


class SimClock:
    """The simulated time both the dispatcher and the worker read."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> None:
        with self._lock:
            self._now = instant


@dataclass
class RunCost:
    """What one run cost, by phase, and how it ended."""

    backend: str
    mode: str
    duration_s: int
    heartbeat_timeout_s: float
    interval_s: float
    phases: dict[str, Tally]
    state: str
    attempts: int
    log_lines: int
    store_writes: int
    """Every write both clients made from the first tick on, from their ``stats`` alone
    (not by phase): equal to :attr:`writes` when every call was put in a phase."""
    run_version: str
    """The run document's final version (on SQLite, how many times it was written)."""
    renewals: int = 0
    check_in_reads: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return sum(t.writes for t in self.phases.values())

    @property
    def reads(self) -> int:
        """Documents read on the run's behalf (the ticks' empty queries are not its own)."""
        return sum(t.reads for t in self.phases.values())

    @property
    def shared_reads(self) -> int:
        """The ticks' empty queries: one billed read each, shared by every schedule."""
        return sum(t.empty_queries for t in self.phases.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "mode": self.mode,
            "duration_s": self.duration_s,
            "heartbeat_timeout_s": self.heartbeat_timeout_s,
            "interval_s": self.interval_s,
            "writes": self.writes,
            "reads": self.reads,
            "shared_empty_query_reads": self.shared_reads,
            "renewals": self.renewals,
            "check_in_reads": self.check_in_reads,
            "state": self.state,
            "attempts": self.attempts,
            "log_lines": self.log_lines,
            "store_writes": self.store_writes,
            "wall_s": round(self.wall_s, 2),
            "phases": {
                k: {"reads": t.reads, "writes": t.writes, "queries": t.queries, "calls": t.calls}
                for k, t in sorted(self.phases.items())
            },
        }


@contextlib.contextmanager
def _worker_server(handler: Callable[[Any], Any]) -> Iterator[str]:
    """A werkzeug server on 127.0.0.1 in a thread, serving ``handler(flask.request)``."""
    import flask
    from werkzeug.serving import make_server

    app = flask.Flask("firecron-bench-scale-cost")

    @app.route("/<name>", methods=["POST"])
    def serve(name: str) -> Any:
        return handler(flask.request)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="cost-worker", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


async def measure_run(
    backends: Backends,
    backend: str,
    duration: timedelta,
    *,
    mode: str = "lease",
    heartbeat_timeout: timedelta | None = None,
    tasks_host: str | None = None,
) -> RunCost:
    """One run of ``duration`` (simulated) from claim to end; see the module docstring.

    ``tasks_host``: deliver through Cloud Tasks (``delivery: cloud_tasks``), the
    emulator at that host (its queue ``tests/_tasks_emulator.QUEUE``), instead of a
    direct POST: the tick enqueues and the emulator POSTs to the worker.

    ``mode`` ``lease``: the SDK's check-in (``_Execution.check_in``) at its own cadence;
    ``legacy``: a renewal (``_Execution.beat``) and a log flush every 15 s, as the SDK
    did before leases, with ``heartbeat_timeout`` 90 s. ``heartbeat_timeout`` sets the
    schedule's (None: the default of :class:`RunTimeouts`).
    """
    from firecron.dispatch import Dispatcher
    from firecron.settings import Settings
    from firecron.worker import RunContext, _Execution, _Runtime
    from firecron.worker import _runtime as worker_runtime
    from firecron.worker._http import _handle

    if mode == "legacy":
        heartbeat_timeout = LEGACY_HEARTBEAT_TIMEOUT
    shared: SharedStore = open_shared(backends, backend, f"cost-{mode}")
    book: dict[str, Tally] = {}
    t0 = datetime.now(UTC).replace(microsecond=0)
    sim = SimClock(t0)
    main_loop = asyncio.get_running_loop()
    spec_fields: dict[str, Any] = {
        "id": "cost-run",
        "every": "1d",
        "start_at": t0,
        "target": {"function": FUNCTION},
    }
    if heartbeat_timeout is not None:
        spec_fields["heartbeat_timeout"] = f"{heartbeat_timeout.total_seconds():g}s"
    spec = ScheduleSpec.model_validate(spec_fields)
    state = planning.initial_state(spec, t0 - timedelta(seconds=1))
    await shared.store.write_schedules([ScheduleWrite(spec, state, None)])

    worker_settings = Settings(
        store_url=shared.url,
        namespace=shared.namespace,
        signing_secrets=(SECRET,),
        allow_private_targets=True,
    )
    runtime = _Runtime.start(clock=sim, settings=worker_settings)
    worker_store = runtime.store
    runtime.store = cast(Store, MeteredStore(worker_store, book))
    writes_before = shared.store.stats.writes + worker_store.stats.writes
    done = threading.Event()
    failures: list[BaseException] = []
    counts = {"renewals": 0, "reads": 0}
    dispatcher: Dispatcher | None = None

    def simulate(ctx: RunContext) -> dict[str, Any]:
        """The worker function: walks the run's simulated minutes (see the docstring)."""
        execution = ctx._execution
        assert execution is not None
        assert dispatcher is not None
        try:
            for offset, kind in timeline(duration, execution.interval):
                sim.set(t0 + offset)
                if kind == "tick":
                    asyncio.run_coroutine_threadsafe(
                        dispatcher.tick(t0 + offset), main_loop
                    ).result(120)
                elif mode == "legacy":
                    before = execution.run.version
                    execution.beat()
                    execution.logs.flush()
                    counts["renewals"] += execution.run.version != before
                else:
                    before = execution.run.version
                    execution.check_in()
                    renewed = execution.run.version != before
                    counts["renewals" if renewed else "reads"] += 1
        except BaseException as exc:
            failures.append(exc)
            raise
        sim.set(t0 + duration)
        return {"simulated_s": duration.total_seconds()}

    interval = LEGACY_INTERVAL if mode == "legacy" else None

    def handle(request: Any) -> Any:
        response = _handle(simulate, interval, request)
        response.call_on_close(done.set)
        return response

    start_check_ins = _Execution._start_check_ins
    previous_runtime = worker_runtime._runtime
    # No check-in thread: the simulated function calls the check-ins at their instants.
    _Execution._start_check_ins = lambda self: None  # type: ignore[method-assign]
    worker_runtime._runtime = runtime
    started = time.perf_counter()
    try:
        with _worker_server(handle) as url:
            queued: dict[str, Any] = {}
            if tasks_host is not None:
                from _tasks_emulator import QUEUE
                from firecron.core.models import TargetDelivery

                queued = {
                    "delivery": TargetDelivery.cloud_tasks,
                    "tasks_queue": QUEUE,
                    "tasks_emulator_host": tasks_host,
                }
            settings = bench_settings(
                store_url=shared.url,
                namespace=shared.namespace,
                signing_secrets=(SECRET,),
                functions_base_url=url,
                **queued,
            )
            dispatcher = Dispatcher(
                cast(Store, MeteredStore(shared.store, book)),
                settings,
                clock=sim,
            )
            try:
                summary = await dispatcher.tick(t0)
                if summary.fired != 1 or summary.errors:
                    raise RuntimeError(f"the first tick did not fire the run: {summary.as_dict()}")
                if not await asyncio.to_thread(done.wait, 600):
                    raise RuntimeError("the worker did not finish its request")
                if failures:
                    raise RuntimeError(f"the simulated run failed: {failures[0]!r}")
                after = t0 + TICK * (math.floor(duration / TICK) + 1)
                sim.set(after)
                await dispatcher.tick(after)
            finally:
                await dispatcher.aclose()
        wall = time.perf_counter() - started
        runs = await shared.store.list_runs(schedule_id="cost-run")
        if len(runs) != 1:
            raise RuntimeError(f"expected one run, found {len(runs)}")
        final = runs[0]
        store_writes = shared.store.stats.writes + worker_store.stats.writes - writes_before
        lines = await shared.store.get_logs(final.id)
    finally:
        _Execution._start_check_ins = start_check_ins  # type: ignore[method-assign]
        worker_runtime._runtime = previous_runtime
        runtime.close()
        await shared.store.close()
    hb = heartbeat_timeout or runtime.timeouts.heartbeat_timeout
    return RunCost(
        backend=backend,
        mode=mode if tasks_host is None else f"{mode}, cloud_tasks",
        duration_s=int(duration.total_seconds()),
        heartbeat_timeout_s=hb.total_seconds(),
        interval_s=(LEGACY_INTERVAL if mode == "legacy" else check_in_interval(hb)).total_seconds(),
        phases=book,
        state=final.state.value,
        attempts=final.attempt,
        log_lines=len(lines),
        store_writes=store_writes,
        run_version=final.version or "",
        renewals=counts["renewals"],
        check_in_reads=counts["reads"],
        wall_s=wall,
    )


# -- the whole benchmark ------------------------------------------------------------------

_PHASE_ORDER: Final = (
    "claim",
    "send",
    "start",
    "renewal",
    "check-in read",
    "logs",
    "end",
    "settle",
    "events",
    "watchdog",
    "clock",
    "due query",
    "watchdog query",
)
"""Phases in the order of a run's life; the two queries are the ticks' (see ``shared``)."""


def _shown_s(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _phase_rows(costs: list[RunCost]) -> list[list[object]]:
    """One row per phase: writes and reads of each run (the runs of one backend and mode)."""
    # Every phase, even at zero (a silent run's logs, no sink's events): zero is a finding.
    names = list(_PHASE_ORDER)
    names += sorted({p for c in costs for p in c.phases} - set(_PHASE_ORDER) - {"close"})
    rows: list[list[object]] = []
    for name in names:
        row: list[object] = [name]
        for cost in costs:
            tally = cost.phases.get(name, Tally())
            row += [tally.writes, tally.reads]
        rows.append(row)
    total: list[object] = ["total (the run's)"]
    shared: list[object] = ["ticks' empty queries (shared)"]
    for cost in costs:
        total += [cost.writes, cost.reads]
        shared += [0, cost.shared_reads]
    return [*rows, total, shared]


def print_runs(costs: list[RunCost]) -> None:
    """The per-phase tables, one per backend and mode."""
    groups: dict[tuple[str, str], list[RunCost]] = {}
    for cost in costs:
        groups.setdefault((cost.backend, cost.mode), []).append(cost)
    for (backend, mode), group in groups.items():
        headers = ["phase"]
        for cost in group:
            headers += [f"{_shown_s(cost.duration_s)} W", "R"]
        first = group[0]
        print_table(
            f"{backend}, {mode}: writes (W) and documents read (R) per phase of one run "
            f"(heartbeat_timeout {_shown_s(first.heartbeat_timeout_s)}, "
            f"check-in every {_shown_s(first.interval_s)})",
            headers,
            _phase_rows(group),
        )


@dataclass(frozen=True)
class SettingRow:
    """The settings table's row of one ``heartbeat_timeout``."""

    heartbeat_timeout_s: float
    interval_s: float
    renew_within_s: float
    detection_s: float
    """The longest a dead worker goes unnoticed: the lease plus one tick."""
    cancel_s: float
    """The longest a cancel request goes unseen: one check-in interval."""
    by_duration: dict[int, tuple[int, int]]
    """Run length (s) -> (writes, reads) of one run."""


def setting_row(heartbeat_timeout: timedelta, costs: list[RunCost]) -> SettingRow:
    """What one lease setting gives (``costs``: its measured runs)."""
    interval = check_in_interval(heartbeat_timeout)
    lease_share = heartbeat_timeout / 5
    return SettingRow(
        heartbeat_timeout_s=heartbeat_timeout.total_seconds(),
        interval_s=interval.total_seconds(),
        renew_within_s=(2 * max(interval, lease_share)).total_seconds(),
        detection_s=detection_latency(heartbeat_timeout).total_seconds(),
        cancel_s=interval.total_seconds(),
        by_duration={c.duration_s: (c.writes, c.reads) for c in costs},
    )


@dataclass(frozen=True)
class MonthlyCost:
    """The monthly Firestore bill of one cadence, beside Cloud Scheduler's."""

    label: str
    runs: int
    writes_per_run: int
    reads_per_run: int
    nam5_usd: float
    regional_usd: float


def monthly_costs(cfg: CostConfig, legacy: RunCost, lease: RunCost) -> list[MonthlyCost]:
    """Today's cadence (every write of a legacy run, and its renewals alone) and leases,
    for ``cfg.runs_per_month`` runs of ``cfg.run_minutes`` minutes."""
    runs = cfg.runs_per_month
    renewals = legacy.phases.get("renewal", Tally()).writes
    rows = [
        ("before leases: renewals alone", renewals, 0),
        ("before leases: whole run", legacy.writes, legacy.reads),
        ("leases (default): whole run", lease.writes, lease.reads),
    ]
    return [
        MonthlyCost(
            label,
            runs,
            w,
            r,
            round(monthly_usd(runs, w, r, NAM5), 2),
            round(monthly_usd(runs, w, r, US_CENTRAL1), 2),
        )
        for label, w, r in rows
    ]


async def _measure_all(
    backends: Backends, names: list[str], cfg: CostConfig
) -> tuple[list[RunCost], dict[float, list[RunCost]]]:
    costs: list[RunCost] = []
    for backend in names:
        for mode in ("lease", "legacy"):
            for seconds in cfg.durations_s:
                cost = await measure_run(backends, backend, timedelta(seconds=seconds), mode=mode)
                print(
                    f"  {backend} {mode} {_shown_s(seconds)}: {cost.writes} writes, "
                    f"{cost.reads} reads ({cost.renewals} renewals, {cost.check_in_reads} "
                    f"check-in reads; {cost.state}; {cost.wall_s:.1f} s)",
                    flush=True,
                )
                costs.append(cost)
    sweep: dict[float, list[RunCost]] = {}
    for hb in cfg.lease_settings_s:
        for seconds in cfg.settings_durations_s:
            cost = await measure_run(
                backends,
                names[0],
                timedelta(seconds=seconds),
                heartbeat_timeout=timedelta(seconds=hb),
            )
            sweep.setdefault(hb, []).append(cost)
    if cfg.cloud_tasks:
        costs += await _through_cloud_tasks(backends, names, cfg)
    return costs, sweep


async def _through_cloud_tasks(
    backends: Backends, names: list[str], cfg: CostConfig
) -> list[RunCost]:
    """A 5-minute run on each backend delivered through the Cloud Tasks emulator (none,
    with a line saying so, when ``make tasks-emulator`` has not installed it)."""
    from _tasks_emulator import emulator_executable, start_tasks_emulator

    executable = emulator_executable()
    if executable is None:
        print("  gcloud-tasks-emulator not found (make tasks-emulator): no Cloud Tasks run")
        return []
    emulator = start_tasks_emulator(executable)
    costs: list[RunCost] = []
    try:
        for backend in names:
            five = timedelta(minutes=cfg.run_minutes)
            cost = await measure_run(backends, backend, five, tasks_host=emulator.host)
            print(
                f"  {backend} lease via Cloud Tasks {_shown_s(five.total_seconds())}: "
                f"{cost.writes} writes, {cost.reads} reads ({cost.state})",
                flush=True,
            )
            costs.append(cost)
    finally:
        emulator.stop()
    return costs


def _find(costs: list[RunCost], backend: str, mode: str, seconds: int) -> RunCost | None:
    for cost in costs:
        if (cost.backend, cost.mode, cost.duration_s) == (backend, mode, seconds):
            return cost
    return None


def run(backends: Backends, names: list[str], cfg: CostConfig) -> BenchResult:
    """Measure, print the tables and the monthly cost, and check the 5-minute target."""
    import logging

    five = cfg.run_minutes * 60
    print(
        f"\n[{NAME}] one run at a time through a real tick and the worker SDK, simulated "
        f"time: runs of {', '.join(_shown_s(s) for s in cfg.durations_s)} on "
        f"{', '.join(names)}; leases and the pre-lease cadence",
        flush=True,
    )
    # The in-process worker's request lines would drown the tables.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    costs, sweep = asyncio.run(_measure_all(backends, names, cfg))
    print_runs(costs)

    settings = [setting_row(timedelta(seconds=hb), sweep[hb]) for hb in cfg.lease_settings_s]
    headers = [
        "heartbeat_timeout",
        "check-in",
        "renew at <=",
        "lost seen within",
        "cancel seen within",
    ]
    for seconds in cfg.settings_durations_s:
        headers += [f"{_shown_s(seconds)} run W", "R"]
    rows: list[list[object]] = []
    for row in settings:
        line: list[object] = [
            _shown_s(row.heartbeat_timeout_s)
            + (" (default)" if row.heartbeat_timeout_s == LEASE_DEFAULT_S else ""),
            _shown_s(row.interval_s),
            _shown_s(row.renew_within_s),
            _shown_s(row.detection_s),
            _shown_s(row.cancel_s),
        ]
        for seconds in cfg.settings_durations_s:
            measured = row.by_duration.get(seconds)
            line += [None, None] if measured is None else list(measured)
        rows.append(line)
    print_table(
        f"Lease settings on {names[0]}: detection latency (lease + one 1-minute tick) and "
        "one run's writes (W) and reads (R)",
        headers,
        rows,
    )

    checks: list[Check] = []
    monthly: list[MonthlyCost] = []
    for backend in names:
        lease = _find(costs, backend, "lease", five)
        legacy = _find(costs, backend, "legacy", five)
        if lease is None:
            continue
        checks.append(
            Check(
                NAME,
                backend,
                f"{cfg.run_minutes}-minute run writes <= {cfg.max_writes_5min}",
                f"{lease.writes} writes (before leases: {legacy.writes if legacy else '?'}); "
                f"the stores counted {lease.store_writes}",
                lease.writes <= cfg.max_writes_5min
                # Every write was put in a phase, and the run did what it should.
                and lease.writes == lease.store_writes
                and lease.state == RunState.succeeded.value
                and lease.attempts == 1,
            )
        )
        queued = _find(costs, backend, "lease, cloud_tasks", five)
        if queued is not None:
            checks.append(
                Check(
                    NAME,
                    backend,
                    f"{cfg.run_minutes}-minute run through Cloud Tasks writes <= "
                    f"{cfg.max_writes_5min}",
                    f"{queued.writes} writes; the stores counted {queued.store_writes}",
                    queued.writes <= cfg.max_writes_5min
                    and queued.writes == queued.store_writes
                    and queued.state == RunState.succeeded.value
                    and queued.attempts == 1,
                )
            )
        if legacy is not None and backend == names[0]:
            monthly = monthly_costs(cfg, legacy, lease)
    if monthly:
        print_table(
            f"A month of {cfg.schedules:,} schedules every {cfg.every_minutes} minutes "
            f"({cfg.runs_per_month:,} runs of {cfg.run_minutes} min) in Firestore reads and "
            f"writes, list prices {PRICES_READ_ON} ({FIRESTORE_PRICING_URL})",
            ["", "W/run", "R/run", "writes/month", "$ nam5", "$ us-central1"],
            [
                [
                    m.label,
                    m.writes_per_run,
                    m.reads_per_run,
                    m.runs * m.writes_per_run,
                    f"${m.nam5_usd:,.2f}",
                    f"${m.regional_usd:,.2f}",
                ]
                for m in monthly
            ],
        )
        print(
            f"  beside Cloud Scheduler: {cfg.schedules:,} jobs x "
            f"${SCHEDULER_JOB_MONTH_USD:.2f} = ${scheduler_usd(cfg.schedules):,.2f} a month "
            f"({SCHEDULER_PRICING_URL}); each run's document deleted by its TTL adds "
            f"${cfg.runs_per_month * NAM5.deletes / 100_000:,.2f} (nam5)",
            flush=True,
        )
    figures: dict[str, Any] = {
        "config": {
            "durations_s": list(cfg.durations_s),
            "lease_settings_s": list(cfg.lease_settings_s),
            "settings_durations_s": list(cfg.settings_durations_s),
            "runs_per_month": cfg.runs_per_month,
        },
        "runs": [c.as_dict() for c in costs],
        "settings": [
            {
                "heartbeat_timeout_s": r.heartbeat_timeout_s,
                "interval_s": r.interval_s,
                "renew_within_s": r.renew_within_s,
                "detection_s": r.detection_s,
                "cancel_s": r.cancel_s,
                "runs": {
                    str(k): {"writes": w, "reads": rd} for k, (w, rd) in r.by_duration.items()
                },
            }
            for r in settings
        ],
        "monthly": [m.__dict__ for m in monthly],
        "prices": {
            "source": FIRESTORE_PRICING_URL,
            "read_on": PRICES_READ_ON,
            "per_100k": [p.__dict__ for p in (NAM5, US_CENTRAL1)],
            "scheduler_job_month_usd": SCHEDULER_JOB_MONTH_USD,
            "scheduler_source": SCHEDULER_PRICING_URL,
        },
    }
    return BenchResult(NAME, figures, checks)
