"""The local stack: ``firecron dev``. Edge module; nothing imports it but the CLI.

One process runs, on the embedded SQLite store:

- the admin app (:func:`firecron.api.make_app`) on the same port: the admin API at
  ``/api/v1/...`` and the web console at ``/``, answering loopback callers only;
- every worker entry point of ``functions/main.py``, each served by the real
  functions-framework app (``create_app``) and mounted at ``/<name>`` on one port,
  with ``FIRECRON_FUNCTIONS_BASE_URL`` pointing there. When the source file changes,
  it is executed again and the new set of workers replaces the old one (requests in
  flight finish on the old code); a source that no longer loads is reported in one
  line and the previous workers keep serving. Only the source file is watched: a
  module it imports is not reloaded;
- a dispatcher that ticks every second (so second-level ``every`` schedules work),
  signing every dispatch, and workers that refuse unsigned requests: the secret is
  ``FIRECRON_SIGNING_SECRET`` or else the store's own, kept beside the database
  (see :mod:`firecron._dev_secret`);
- the schedules file, applied at start;
- a live view of upcoming fire times and recent runs (rich), or plain log lines
  when stdout is not a terminal: one line per run that changes after the start, with
  the time of its change (runs from before a restart are not printed again). A
  pipeline run is one line with its tasks' states (``extract:succeeded join:waiting``),
  and changes when any of them does; its task runs are not listed on their own. A run
  waiting on a state key shows as ``waiting on KEY``, and the live view lists the runs
  waiting on keys (key, condition, last value seen, next check, timeout). A continuous
  schedule has no fire times: the view marks it ``continuous (window 10m) · gen 12
  running``, with its live generation.

Ctrl-C or SIGTERM stops it within a few seconds. Runs still in flight are left as
they are (``running``/``dispatched``); the watchdog recovers them on the next start,
exactly as it would after a crash in the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from firecron import admin
from firecron._dev_secret import secret_path, with_dev_secret
from firecron.core import planning
from firecron.core.durations import format_duration
from firecron.core.models import StoredSchedule
from firecron.core.pipeline_graph import topological_order
from firecron.core.runs import Run, RunState, task_run_id
from firecron.core.schedule_file import ScheduleFile
from firecron.dispatch import Dispatcher
from firecron.errors import InvalidInputError
from firecron.settings import Settings
from firecron.store import Store, open_store
from firecron.worker import declared_in

__all__ = [
    "DevStack",
    "Recent",
    "continuous_text",
    "default_source",
    "find_workers",
    "live_generations",
    "recent_runs",
    "state_text",
    "task_states",
    "waiting_runs",
]

_RECENT = 12
"""Runs shown in the view, newest first (and compared by the piped change log); a
pipeline run counts once, its task runs not at all."""
_MAX_LISTED = 4000
"""The most runs one look at the recent runs reads, when task runs crowd out the others."""
_WAITING_READ = 200
"""The most waiting runs one look reads for the view's waits (task runs waiting for their
upstream tasks are among them, and are left out)."""
_TASKS_SHOWN = 12
"""A pipeline run with more tasks than this shows counts per state instead of each task."""

_STATE_STYLE = {
    RunState.succeeded: "green",
    RunState.delivered: "green",
    RunState.failed: "bold red",
    RunState.lost: "red",
    RunState.timed_out: "red",
    RunState.running: "cyan",
    RunState.dispatched: "cyan",
    RunState.pending: "yellow",
    RunState.retry_wait: "yellow",
    RunState.queued: "magenta",
    RunState.skipped: "dim",
    RunState.waiting: "dim",
    RunState.cancelled: "red",
}


Recent = list[tuple[Run, list[Run]]]
"""The runs a view shows, newest first, each with its task runs (none for a plain run)."""


async def recent_runs(store: Store, count: int = _RECENT) -> Recent:
    """The ``count`` newest runs that are not pipeline tasks, each pipeline run with its
    task runs in topological order (those created so far).

    Task runs are created together, so a pipeline's may fill a page: the page grows
    (by 4) until it holds ``count`` other runs or every run, up to :data:`_MAX_LISTED`.
    Each pipeline run's tasks then cost one batched read.
    """
    limit = count * 4
    while True:
        page = await store.list_runs(limit=limit)
        shown = [r for r in page if r.parent_run_id is None][:count]
        if len(shown) >= count or len(page) < limit or limit >= _MAX_LISTED:
            break
        limit = min(limit * 4, _MAX_LISTED)
    recent: Recent = []
    for run in shown:
        tasks: list[Run] = []
        if run.pipeline_spec is not None:
            order = topological_order(run.pipeline_spec)
            # In the order asked for (Store.get_runs keeps it).
            tasks = await store.get_runs([task_run_id(run.id, t) for t in order])
        recent.append((run, tasks))
    return recent


async def waiting_runs(store: Store, count: int = _RECENT) -> list[Run]:
    """Up to ``count`` runs waiting on a state key, newest first (one query; pipeline
    tasks waiting for their upstream tasks, which are ``waiting`` too, are left out)."""
    page = await store.list_runs(states=[RunState.waiting], limit=_WAITING_READ)
    return [r for r in page if r.wait_key is not None][:count]


async def live_generations(store: Store, schedules: list[StoredSchedule]) -> dict[str, Run]:
    """The live (latest) generation of each continuous schedule among ``schedules`` that
    has one, by schedule id: the runs their states name last, in one batched read."""
    ids = [
        s.state.last_run_id
        for s in schedules
        if s.spec.continuous is not None and s.state.last_run_id is not None
    ]
    if not ids:
        return {}
    return {r.schedule_id: r for r in await store.get_runs(ids) if r.generation is not None}


def continuous_text(schedule: StoredSchedule, live: Run | None) -> str:
    """How the view marks a continuous schedule in place of a next fire time:
    ``continuous (window 10m) · gen 12 running`` (without the generation when it has none
    yet). Empty for any other schedule."""
    if schedule.spec.continuous is None:
        return ""
    text = f"continuous (window {format_duration(schedule.spec.continuous.window)})"
    if live is not None:
        text += f" · gen {live.generation} {state_text(live)}"
    return text


def state_text(run: Run) -> str:
    """The run's state as the view shows it: ``waiting on KEY`` for a run waiting on a
    state key, else the state's name."""
    if run.state is RunState.waiting and run.wait_key is not None:
        return f"waiting on {run.wait_key}"
    return run.state.value


def task_states(tasks: list[Run]) -> str:
    """A pipeline run's tasks as ``id:state`` words in order, or, beyond
    :data:`_TASKS_SHOWN` tasks, as ``state count`` pairs (``succeeded 150, running 8``)."""
    if len(tasks) <= _TASKS_SHOWN:
        return " ".join(f"{t.task}:{t.state.value}" for t in tasks)
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    return f"{len(tasks)} tasks: " + ", ".join(f"{state} {n}" for state, n in counts.items())


def _change_key(run: Run, tasks: list[Run]) -> tuple[object, ...]:
    """What the piped view compares: a run is printed again when this changes."""
    return (run.state, run.attempt, tuple((t.task, t.state) for t in tasks))


def default_source() -> Path:
    """``functions/main.py`` next to the installed (editable) package."""
    return Path(__file__).resolve().parents[1] / "main.py"


def _load(source: Path) -> ModuleType:
    """Execute ``source`` as a new module.

    Raises :class:`InvalidInputError` with one line, ``FILE:LINE: ...``, when it does
    not compile or raises while executing: the user's file is at fault, not firecron.
    """
    spec = importlib.util.spec_from_file_location("main", source)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"cannot load {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("main", module)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        where = f"{source}:{exc.lineno}" if exc.lineno else str(source)
        raise InvalidInputError(f"{where}: {type(exc).__name__}: {exc.msg}") from None
    except Exception as exc:
        raise InvalidInputError(
            f"{source}:{_failing_line(exc, source)}: cannot load it: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None
    return module


def _failing_line(exc: BaseException, source: Path) -> str:
    """The line of ``source`` deepest in ``exc``'s traceback (``?`` when it is not there)."""
    target = os.path.realpath(source)
    line = "?"
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.realpath(frame.f_code.co_filename) == target:
            line = str(lineno)
    return line


def find_workers(source: Path) -> list[str]:
    """Names of the ``@firecron.worker`` functions defined in ``source``, sorted."""
    if not source.is_file():
        raise InvalidInputError(f"{source}: no such file (pass --source functions/main.py)")
    module = _load(source)
    # The names the module binds to its declared workers: functions-framework serves
    # a target by looking that name up in the module.
    handlers = [declared.handler for declared in declared_in(module)]
    return sorted(name for name, value in vars(module).items() if any(value is h for h in handlers))


def _workers_app(source: Path, names: list[str], fallback: Any) -> Any:
    """One WSGI app: each worker's functions-framework app mounted at ``/<name>``, and
    ``fallback`` (the admin app: the console) for every other path.

    ``create_app`` executes ``source`` again for each worker; a failure there raises
    :class:`InvalidInputError` (one line) like :func:`find_workers`.
    """
    import functions_framework
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    create_app: Callable[..., Any] = functions_framework.create_app

    def at_root(app: Any) -> Callable[..., Any]:
        # In the cloud each function is its own service, called at "/"; mounted at
        # /<name>, Flask would see an empty path and redirect it. Hand it "/".
        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            environ["PATH_INFO"] = environ.get("PATH_INFO") or "/"
            return app(environ, start_response)

        return wrapped

    try:
        mounts = {
            f"/{name}": at_root(create_app(target=name, source=str(source), signature_type="http"))
            for name in names
        }
    except Exception as exc:
        raise InvalidInputError(
            f"{source}:{_failing_line(exc, source)}: cannot serve its workers: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None
    return DispatcherMiddleware(fallback, mounts)


def _routed(admin_app: Any, workers: Any) -> Callable[..., Any]:
    """The dev server's app: ``/api/...`` to the admin API, anything else to ``workers``
    (which serves ``/<name>`` and hands the rest to the console).

    A worker named like a path of the API keeps its own ``/<name>`` (``/api`` itself is
    a worker named ``api``), while ``/api/v1/...`` is always the API's. A worker named
    like a console page (``/timeline``) takes that page's path: dispatch must reach it.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith(_API_PATH):
            return admin_app(environ, start_response)
        return workers(environ, start_response)

    return app


_API_PATH = "/api/"


class _Swappable:
    """A WSGI app that forwards to :attr:`app`, which a reload replaces.

    Each request reads the attribute once (one atomic load), so it runs wholly on the
    old or wholly on the new workers.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


class DevStack:
    """The running stack. :meth:`run` blocks until stopped; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        schedule_file: ScheduleFile | None,
        *,
        port: int,
        source: Path,
        console: Console,
        tick_every: float = 1.0,
    ) -> None:
        self.port = port
        self.source = source
        self.schedule_file = schedule_file
        self.console = console
        self.tick_every = tick_every
        self.base_url = f"http://127.0.0.1:{port}"
        self.settings = replace(
            settings,
            functions_base_url=self.base_url,
            allow_private_targets=True,
            event_log=False,
            # The stack serves the console at its root: notifications link runs there.
            console_url=settings.console_url or self.base_url,
        )
        self._stop = asyncio.Event()
        self._seen: dict[str, tuple[object, ...]] = {}
        self._generations: set[str] = set()
        """Generations printed while not ended: read until their end is printed."""
        self._names: list[str] = []
        self._source_text: bytes | None = None
        self._app: _Swappable | None = None
        self._admin: Any = None
        self._signed_with = ""

    def _sign(self) -> str:
        """Make the stack sign with its secret; says where the secret is (never the secret)."""
        if self.settings.signing_secrets:
            return "$FIRECRON_SIGNING_SECRET"
        self.settings = with_dev_secret(self.settings, create=True)
        path = secret_path(self.settings.store_url)
        if not self.settings.signing_secrets or path is None:
            # No file beside a remote store: unsigned workers would run forged requests.
            raise InvalidInputError(
                f"firecron dev on {self.settings.store_url} needs FIRECRON_SIGNING_SECRET "
                "(a whsec_<base64> secret); only a sqlite:/// store gets one made for it"
            )
        return f"the secret in {path}"

    def _export_env(self) -> None:
        # The worker SDK reads its settings from the environment on its first request.
        os.environ["FIRECRON_STORE"] = self.settings.store_url
        # Workers refuse what the dispatcher did not sign (the secret is never printed).
        os.environ["FIRECRON_SIGNING_SECRET"] = ",".join(self.settings.signing_secrets)
        os.environ["FIRECRON_NAMESPACE"] = self.settings.namespace
        os.environ["FIRECRON_FUNCTIONS_BASE_URL"] = self.base_url
        os.environ["FIRECRON_ALLOW_PRIVATE_TARGETS"] = "1"
        if self.settings.console_url is not None:
            os.environ["FIRECRON_CONSOLE_URL"] = self.settings.console_url
        # The view (or the change log) shows every run; JSON event lines would bury it.
        os.environ["FIRECRON_EVENT_LOG"] = "0"

    def _serve(self, app: Any) -> Any:
        from werkzeug.serving import make_server

        # The view (or the change log) already shows every run; request logs would bury it.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("firecron.dispatch").setLevel(logging.ERROR)
        # Worker errors are in each run's record (the view, `firecron run ID`); in dev the
        # tracebacks would scroll the view away.
        logging.getLogger("firecron.worker").setLevel(logging.CRITICAL)

        try:
            # werkzeug exits the process on a taken port; find out first, to say it our way.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", self.port))
            server = make_server("127.0.0.1", self.port, app, threaded=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInputError(
                    f"port {self.port} is already in use: choose another with --port N (make dev PORT=N)"
                ) from None
            raise InvalidInputError(
                f"cannot listen on 127.0.0.1:{self.port}: {exc.strerror}"
            ) from None
        server.daemon_threads = True  # type: ignore[attr-defined]  # in-flight runs must not block shutdown
        threading.Thread(target=server.serve_forever, name="firecron-dev-http", daemon=True).start()
        return server

    async def run(self) -> None:
        """Start everything, tick until SIGINT/SIGTERM, then stop cleanly."""
        self._source_text = _read_source(self.source)
        names = find_workers(self.source)
        self._names = names
        self._signed_with = self._sign()
        from firecron import api

        # Opens nothing yet: its store and loop start with the first request.
        self._admin = api.make_app(self.settings)
        self._app = _Swappable(_workers_app(self.source, names, self._admin))
        self._export_env()
        server = self._serve(_routed(self._admin, self._app))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        store = open_store(self.settings.store_url, self.settings.namespace)
        dispatcher = Dispatcher(store, self.settings)
        try:
            if self.schedule_file is not None:
                lines = await admin.apply_schedules(
                    store,
                    self.schedule_file.schedules,
                    datetime.now(UTC),
                    prune=False,
                    dry_run=False,
                )
                for line in lines:
                    self._log(f"{line.action.value} {line.schedule_id}")
            self._log(
                f"firecron dev: store {self.settings.store_url}, workers {_paths(names)} "
                f"on {self.base_url}, signed with {self._signed_with}; console {self.base_url}/, "
                f"admin API {self.base_url}/api/v1; Ctrl-C to stop"
            )
            # Runs from before this start were printed by the previous one: only changes
            # from now on are news.
            for run, tasks in await recent_runs(store):
                self._seen[run.id] = _change_key(run, tasks)
            if self.console.is_terminal:
                with Live(
                    Text("starting..."), console=self.console, refresh_per_second=4, transient=False
                ) as live:
                    await self._loop(store, dispatcher, live)
            else:
                await self._loop(store, dispatcher, None)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await dispatcher.aclose()
            server.shutdown()
            await asyncio.to_thread(self._close_admin)
            await store.close()
            self._log("firecron dev: stopped")

    async def _loop(self, store: Store, dispatcher: Dispatcher, live: Live | None) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            tick = asyncio.create_task(dispatcher.tick())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({tick, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                # Stopping mid-tick: give it a moment, then leave the rest to the watchdog.
                await asyncio.wait({tick}, timeout=3)
                tick.cancel()
                stop.cancel()
                return
            stop.cancel()
            summary = tick.result()
            for error in summary.errors:
                self._log(f"error: {error}", style="red")
            self._reload_if_changed()
            schedules = await store.list_schedules()
            runs = await recent_runs(store)
            if live is not None:
                generations = await live_generations(store, schedules)
                live.update(self._view(schedules, runs, await waiting_runs(store), generations))
            else:
                self._print_changes(await self._with_generations(store, schedules, runs))
            delay = self.tick_every - (time.monotonic() - started)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)

    def _reload_if_changed(self) -> None:
        """Serve the workers of the source file again if its content changed.

        Content, not mtime, is compared: an edit within the file system's timestamp
        granularity must not be missed. A source that fails to load is reported once
        per change and the previous workers keep serving.
        """
        try:
            text = _read_source(self.source)
        except InvalidInputError:
            return  # mid-save (replaced by rename) or deleted: look again next tick
        if text == self._source_text or self._app is None:
            return
        self._source_text = text
        try:
            names = find_workers(self.source)
            app = _workers_app(self.source, names, self._admin)
        except InvalidInputError as exc:
            self._log(
                f"{_clock()} reload failed, still serving the previous workers: {exc}", style="red"
            )
            return
        self._app.app = app
        self._names = names
        self._log(f"{_clock()} reloaded {self.source}: workers {_paths(names)}")

    def _close_admin(self) -> None:
        """Close the admin app's store connections (the API's and the console's)."""
        from firecron import api

        if self._admin is None:
            return
        api.close(self._admin)
        console = self._admin.extensions.get("firecron_console")
        if console is not None:
            console.close()

    def _log(self, message: str, style: str | None = None) -> None:
        self.console.print(message, style=style, highlight=False)

    async def _with_generations(
        self, store: Store, schedules: list[StoredSchedule], runs: Recent
    ) -> Recent:
        """``runs`` plus the continuous schedules' live generations and those that were
        live when last looked at: a generation lives for its window, long after newer
        runs pushed it out of the recent ones, and its end must still be printed. One
        batched read each, only when there are continuous schedules."""
        live = await live_generations(store, schedules)
        listed = {run.id for run, _ in runs}
        known = {run.id for run in live.values()} | listed
        gone = [run_id for run_id in sorted(self._generations) if run_id not in known]
        extra = [*live.values(), *(await store.get_runs(gone) if gone else [])]
        self._generations = {r.id for r in extra if not r.is_terminal}
        merged = runs + [(run, []) for run in extra if run.id not in listed]
        return sorted(merged, key=lambda pair: pair[0].created_at, reverse=True)

    def _print_changes(self, runs: Recent) -> None:
        for run, tasks in reversed(runs):
            key = _change_key(run, tasks)
            if self._seen.get(run.id) == key:
                continue
            self._seen[run.id] = key
            extra = f" ({run.error})" if run.error and run.state is not RunState.succeeded else ""
            sla = " SLA breached" if run.sla_breached_at else ""
            # The time of the change itself (a task's, for a pipeline run), not of the
            # tick that noticed it.
            changed = max([run.updated_at, *(t.updated_at for t in tasks)])
            when = changed.astimezone().strftime("%H:%M:%S")
            steps = f"  {task_states(tasks)}" if tasks else ""
            self._log(f"{when} {run.id} {state_text(run)} attempt {run.attempt}{sla}{extra}{steps}")

    def _view(
        self,
        schedules: list[StoredSchedule],
        runs: Recent,
        waiting: list[Run] | None = None,
        generations: dict[str, Run] | None = None,
    ) -> Group:
        """The live view: upcoming fire times with each trigger in words (a continuous
        schedule marked as such, with its live generation from ``generations``), recent
        runs, and the waits."""
        now = datetime.now(UTC)
        generations = generations or {}
        upcoming = Table(title="Upcoming", title_justify="left", box=None, header_style="bold")
        for col in ("SCHEDULE", "STATUS", "NEXT FIRE (LOCAL)", "IN", "RUNS"):
            upcoming.add_column(col)
        upcoming.add_column("WHEN", overflow="fold")
        active = sorted(
            schedules, key=lambda s: s.state.next_fire_at or datetime.max.replace(tzinfo=UTC)
        )
        for s in active:
            if s.spec.continuous is not None:
                # It has no fire times: one generation follows another.
                mark = continuous_text(s, generations.get(s.id))
                upcoming.add_row(s.id, s.status, mark, "-", str(s.state.run_count), "continuous")
                continue
            nxt = s.state.next_fire_at
            local = (
                nxt.astimezone(ZoneInfo(s.spec.timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")
                if nxt
                else "-"
            )
            eta = (
                format_duration(timedelta(seconds=int(max(0, (nxt - now).total_seconds()))))
                if nxt
                else "-"
            )
            upcoming.add_row(
                s.id, s.status, local, eta, str(s.state.run_count), planning.trigger_words(s.spec)
            )
        recent = Table(title="Recent runs", title_justify="left", box=None, header_style="bold")
        for col in ("RUN", "STATE", "ATTEMPT", "DURATION", "TASKS", "ERROR"):
            recent.add_column(col, overflow="fold")
        for run, tasks in runs:
            state = Text(state_text(run), style=_STATE_STYLE.get(run.state, ""))
            if run.sla_breached_at:
                state.append(" SLA!", style="bold magenta")
            duration = "-"
            if run.started_at:
                end = run.ended_at or now
                duration = f"{(end - run.started_at).total_seconds():.1f}s" + (
                    "" if run.ended_at else "…"
                )
            recent.add_row(
                run.id,
                state,
                f"{run.attempt}/{run.retry.max_attempts}",
                duration,
                _styled_tasks(tasks),
                (run.error or "")[:80],
            )
        footer = Text(
            f"{_clock()}  store {self.settings.store_url}  workers {_paths(self._names)} on "
            f"{self.base_url}  Ctrl-C to stop",
            style="dim",
        )
        parts: list[Any] = [upcoming, Text(""), recent, Text("")]
        if waiting:
            parts += [_waits_table(waiting, now), Text("")]
        return Group(*parts, footer)


def _waits_table(waiting: list[Run], now: datetime) -> Table:
    """The runs waiting on state keys: key, condition, last value, next check, timeout."""
    table = Table(title="Waiting on state", title_justify="left", box=None, header_style="bold")
    for col in ("RUN", "KEY", "UNTIL", "LAST VALUE", "NEXT CHECK IN", "TIMES OUT IN"):
        table.add_column(col, overflow="fold")
    for run in waiting:
        looked = run.wait_checked_at is not None
        table.add_row(
            run.id,
            run.wait_key or "-",
            run.wait.until if run.wait is not None else "-",
            _short(run.wait_value) if looked else "-",
            _until(run.deadline_at, now),
            _until(run.wait_until, now),
        )
    return table


def _short(value: object, limit: int = 40) -> str:
    """``value`` as compact JSON, cut to ``limit`` characters."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _until(instant: datetime | None, now: datetime) -> str:
    """How long until ``instant``, in whole seconds (``-`` when there is none)."""
    if instant is None:
        return "-"
    return format_duration(timedelta(seconds=int(max(0, (instant - now).total_seconds()))))


def _styled_tasks(tasks: list[Run]) -> Text:
    """:func:`task_states` for the live view, each task's state in its colour."""
    if len(tasks) > _TASKS_SHOWN:
        return Text(task_states(tasks))
    text = Text()
    for n, t in enumerate(tasks):
        text.append(("" if n == 0 else " ") + f"{t.task}:")
        text.append(t.state.value, style=_STATE_STYLE.get(t.state, ""))
    return text


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _paths(names: list[str]) -> str:
    return ", ".join("/" + n for n in names) or "(none)"


def _read_source(source: Path) -> bytes:
    if not source.is_file():
        raise InvalidInputError(f"{source}: no such file (pass --source functions/main.py)")
    try:
        return source.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{source}: cannot read it: {exc.strerror or exc}") from None
