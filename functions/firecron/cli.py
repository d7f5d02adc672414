"""The ``firecron`` command line. Thin: it parses, calls the services, and prints.

Exit codes: 0 ok, 1 operational failure, 2 invalid input or unknown id. Errors are
one line on stderr (a schedules file prints one line per problem), never a traceback.
Shell completion uses click's mechanism, e.g. ``eval "$(_FIRECRON_COMPLETE=bash_source firecron)"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from firecron import admin, service
from firecron._output import console, emit_json, err_console, jsonable, rfc3339, table
from firecron.core import planning
from firecron.core.describe import ON_DEMAND
from firecron.core.durations import format_duration, parse_duration
from firecron.core.events import RUN_EVENT_TYPES, Event, EventType, cloudevent
from firecron.core.generations import History, history
from firecron.core.lifecycle import RunTimeouts
from firecron.core.models import (
    SCHEDULE_ID_PATTERN,
    PipelineSpec,
    ScheduleSpec,
    StoredSchedule,
    Target,
)
from firecron.core.pipeline_graph import depths, render_mermaid, render_text, topological_order
from firecron.core.runs import Attempt, Run, RunState, task_run_id
from firecron.core.schedule_file import ScheduleFile, ScheduleFileError, parse_schedule_file
from firecron.core.state import StateEntry
from firecron.core.triggers import parse_instant, parse_spec, validate_timezone
from firecron.core.waits import render_key
from firecron.dispatch import Dispatcher, run_tick
from firecron.errors import FirecronError, InvalidInputError, NotFoundError, UserError
from firecron.settings import Settings
from firecron.store import Store, open_store

__all__ = ["cli", "main"]

T = TypeVar("T")

_STORE_HELP = "Store URL (default: $FIRECRON_STORE or sqlite:///.firecron/firecron.db)."


def _now() -> datetime:
    return datetime.now(UTC)


def _settings(store_url: str | None) -> Settings:
    return Settings.from_env().with_store(store_url)


def _with_store(
    store_url: str | None, fn: Callable[[Store], Awaitable[T]], *, create: bool = True
) -> T:
    """Open the configured store, run ``fn`` on it, close it.

    Read-only commands pass ``create=False``: a SQLite store that does not exist is then
    an :class:`InvalidInputError` naming its path (exit 2), and nothing is created.
    """
    settings = _settings(store_url)

    async def go() -> T:
        store = open_store(settings.store_url, settings.namespace, create=create)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _read_schedule_file(
    path: str, *, allow_private_targets: bool | None = None, now: datetime | None = None
) -> ScheduleFile:
    """Read and validate a schedules file as of ``now`` (default: the clock).

    Valid means ``apply`` can write it: every schedule is also planned and encoded for
    the store (:func:`admin.unwritable`). ``allow_private_targets`` defaults to
    ``FIRECRON_ALLOW_PRIVATE_TARGETS``, the setting the dispatcher's SSRF guard will
    apply to the targets. Raises :class:`ScheduleFileError` (or, for a file that cannot
    be read or is not UTF-8, :class:`InvalidInputError`), one line per problem.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = f"byte 0x{data[exc.start]:02x} at line {line}, column {column}"
        raise InvalidInputError(f"{path}: not UTF-8 text: {byte}") from None
    settings = _settings(None)
    if allow_private_targets is None:
        allow_private_targets = settings.allow_private_targets
    now = _now() if now is None else now
    doc = parse_schedule_file(
        text,
        source=path,
        now=now,
        allow_private_targets=allow_private_targets,
        function_timeouts=settings.function_timeouts,
    )
    errors = admin.unwritable(doc.schedules, now)
    if errors:
        raise ScheduleFileError(path, errors)
    return doc


def _print_warnings(doc: ScheduleFile) -> None:
    """``warning: LINE`` on stderr for each of the file's warnings (valid, but likely a
    mistake: a pipeline no schedule targets); the command still succeeds."""
    for line in doc.warnings:
        click.echo(f"warning: {line}", err=True)


store_option = click.option("--store", "store_url", metavar="URL", help=_STORE_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
limit_option = click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)


def schedule_filter(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--schedule ID`` filter of the listing commands."""
    return click.option(
        "--schedule", "schedule_id", metavar="ID", help=f"Only {what} of this schedule."
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="firecron")
def cli() -> None:
    """firecron: one scheduler job, every schedule, exactly-once runs.

    Schedules live in a store (SQLite locally, Firestore in the cloud); a tick claims
    due occurrences and POSTs them one-way to worker functions.

    \b
    Examples:
      firecron next "0 9 * * MON-FRI" --tz Europe/Berlin -n 3
      firecron validate schedules.yaml
      firecron apply schedules.yaml --prune
      firecron list
    """


class _SpecCommand(click.Command):
    """A command whose SPEC may begin with ``-``: a hint to put it after ``--``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes ``args``
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption:
            options = given[: given.index("--")] if "--" in given else given
            # No option name holds a space, so such a word is a SPEC like "-1 * * * *".
            spec = next((a for a in options if a.startswith("-") and " " in a), None)
            if spec is None:
                raise
            raise click.UsageError(
                f"SPEC {spec!r} begins with '-': put it after '--', as in "
                f"firecron {ctx.info_name} -- {spec!r}",
                ctx,
            ) from None


@cli.command("next", cls=_SpecCommand)
@click.argument("spec")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the expression.")
@click.option(
    "--after", metavar="RFC3339", help="List occurrences strictly after this (default: now)."
)
@click.option("-n", "count", type=click.IntRange(1, 1000), default=5, show_default=True)
@json_option
def next_cmd(spec: str, tz: str, after: str | None, count: int, as_json: bool) -> None:
    """Print the next occurrences of SPEC, in local time with offset.

    SPEC is a cron expression (5 fields, or 6 with seconds first), a macro
    (@hourly @daily @weekly @monthly @yearly), "every 15m", "at RFC3339", or a
    frequency: "hourly :15", "daily 02:30" (or "daily 02:30,14:00"),
    "weekly mon,fri 09:00", "monthly 1 06:00", "monthly last 06:00" or
    "monthly -3 06:00" (the third-to-last day).
    Put SPEC after "--" (and every option before it) when it may begin with "-":
    otherwise it is read as an option.

    \b
    Examples:
      firecron next "30 2 * * *" --tz Europe/Berlin --after 2027-03-27T00:00:00Z -n 3
      firecron next "every 15m" -n 4 --json
      firecron next "monthly last 06:00" --tz Europe/Berlin -n 3
      firecron next -n 3 -- "$SPEC"    # whatever $SPEC begins with
    """
    zone_name = _user_value("--tz", lambda: validate_timezone(tz))
    trigger = _user_value("SPEC", lambda: parse_spec(spec, zone_name))
    start = _user_value("--after", lambda: parse_instant(after, zone_name)) if after else _now()
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(zone_name)
    times = trigger.occurrences(start, count)
    if as_json:
        emit_json([{"utc": rfc3339(t), "local": t.astimezone(zone).isoformat()} for t in times])
        return
    for t in times:
        click.echo(t.astimezone(zone).isoformat())
    if not times:
        err_console.print("no occurrences after that time")


def _user_value(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ValueError as exc:
        raise InvalidInputError(f"{what}: {exc}") from None


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a schedules file; exit 2 with one line per error.

    Valid means apply can write it: each schedule is also planned (its first
    occurrences from now) and encoded as the store will encode it.

    \b
    Example:
      firecron validate schedules.yaml
    """
    doc = _read_schedule_file(file)
    _print_warnings(doc)
    n = len(doc.schedules)
    click.echo(f"ok: {file}: {n} schedule{'s' if n != 1 else ''}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--prune", is_flag=True, help="Delete stored schedules that the file does not list.")
@click.option(
    "--yes",
    is_flag=True,
    help="Confirm a --prune that deletes every stored schedule or more than half of them.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@store_option
@json_option
def apply(
    file: str, prune: bool, yes: bool, dry_run: bool, store_url: str | None, as_json: bool
) -> None:
    """Make the store match a schedules file, printing a plan line per schedule.

    + created, ~ updated, = unchanged, - deleted (only with --prune), then a summary
    line; --json prints the four lists instead. Nothing is written when any entry is
    invalid or cannot be planned or stored (on SQLite the writes are one transaction;
    on Firestore, batches of 500, see the README). Re-applying an unchanged file
    changes nothing and keeps next fire times and counters. A --prune that would delete every stored schedule, or more than
    half of them, is refused (exit 2) unless --yes is given. --dry-run prints the same
    plan and writes nothing. On a terminal, a progress bar shows on stderr.

    \b
    Examples:
      firecron apply schedules.yaml --dry-run
      firecron apply schedules.yaml --prune
    """
    now = _now()
    doc = _read_schedule_file(file, now=now)
    _print_warnings(doc)
    with _apply_progress() as progress:
        try:
            lines = _with_store(
                store_url,
                lambda s: admin.apply_schedules(
                    s,
                    doc.schedules,
                    now,
                    prune=prune,
                    dry_run=dry_run,
                    confirmed=yes,
                    progress=progress,
                ),
            )
        except admin.UnpreparedSchedules as exc:
            raise ScheduleFileError(file, exc.errors) from None
    by_action: dict[admin.ApplyAction, list[admin.ApplyLine]] = {a: [] for a in admin.ApplyAction}
    for line in lines:
        by_action[line.action].append(line)
    deleting = len(by_action[admin.ApplyAction.delete])
    stored = deleting + sum(
        len(by_action[a]) for a in (admin.ApplyAction.update, admin.ApplyAction.unchanged)
    )
    if dry_run and not yes and admin.prune_needs_confirmation(deleting, stored):
        click.echo(
            f"note: --prune would delete {deleting} of {stored} stored schedules;"
            " without --dry-run it needs --yes",
            err=True,
        )
    if as_json:
        emit_json(
            {
                "created": [ln.schedule_id for ln in by_action[admin.ApplyAction.create]],
                "updated": [ln.schedule_id for ln in by_action[admin.ApplyAction.update]],
                "unchanged": [ln.schedule_id for ln in by_action[admin.ApplyAction.unchanged]],
                "deleted": [ln.schedule_id for ln in by_action[admin.ApplyAction.delete]],
                "changed_fields": {
                    ln.schedule_id: list(ln.changed_fields)
                    for ln in by_action[admin.ApplyAction.update]
                },
                "dry_run": dry_run,
            }
        )
        return
    out = [
        f"{ln.action.value} {ln.schedule_id}"
        + (f"  ({', '.join(ln.changed_fields)})" if ln.changed_fields else "")
        for ln in lines
    ]
    counts = {a: len(found) for a, found in by_action.items()}
    out.append(
        f"{counts[admin.ApplyAction.create]} created, {counts[admin.ApplyAction.update]} updated, "
        f"{counts[admin.ApplyAction.unchanged]} unchanged, {counts[admin.ApplyAction.delete]} "
        f"deleted{' (dry run: nothing written)' if dry_run else ''}"
    )
    # One write: a plan of 100,000 lines echoed line by line took seconds.
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _apply_progress() -> Iterator[admin.Progress | None]:
    """A rich progress bar on stderr when it is a terminal; None (no output) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}
    names = {"read": "reading the store", "plan": "planning", "write": "writing"}

    def report(phase: str, done: int, total: int) -> None:
        known = total or None  # 0: not known yet (a bar without an end)
        if phase not in tasks:
            tasks[phase] = bar.add_task(names.get(phase, phase), total=known)
        bar.update(tasks[phase], completed=done, total=known)

    with bar:
        yield report


def _trigger_text(s: StoredSchedule) -> str:
    spec = s.spec
    if spec.on_demand:
        return ON_DEMAND
    if spec.cron is not None:
        return f"cron {spec.cron}"
    if spec.every is not None:
        return f"every {format_duration(spec.every)}"
    frequency = spec.frequency
    if frequency is not None:
        return frequency.text  # `weekly mon,fri 09:00`, as `firecron next` reads it
    if spec.continuous is not None:
        return f"continuous (window {format_duration(spec.continuous.window)})"
    return f"at {rfc3339(spec.at)}"


def _target_text(target: Target) -> str:
    """:meth:`Target.describe`, marking a URL whose runs report their state (a worker)."""
    return target.describe() + (" (worker)" if target.url is not None and target.worker else "")


def _summary(s: StoredSchedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "status": s.status,
        "trigger": _trigger_text(s),
        "timezone": s.spec.timezone,
        "target": _target_text(s.spec.target),
        "next_fire_at": rfc3339(s.state.next_fire_at),
        "last_run_id": s.state.last_run_id,
        "run_count": s.state.run_count,
        "last_error": s.state.last_error,
        "description": s.spec.description,
        "labels": s.spec.labels,
    }


@cli.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Schedules per page.",
)
@click.option("--after", metavar="ID", help="Start after this id (ids are listed in order).")
@store_option
@json_option
def list_cmd(limit: int, after: str | None, store_url: str | None, as_json: bool) -> None:
    """List schedules in id order, a page at a time, with status and next fire time.

    When more schedules follow, a last line gives the --after value of the next page
    (--json: "next_after", null on the last page).

    \b
    Examples:
      firecron list --json
      firecron list --limit 50 --after nightly-report
    """
    if after is not None and not re.match(SCHEDULE_ID_PATTERN, after):
        raise InvalidInputError(f"--after: invalid schedule id {after!r}")
    # One more than a page tells whether another page follows, without a count.
    found = _with_store(
        store_url,
        lambda s: service.list_schedules(s, after=after, limit=limit + 1),
        create=False,
    )
    page = found[:limit]
    next_after = page[-1].id if len(found) > limit else None
    rows = [_summary(s) for s in page]
    if as_json:
        emit_json({"schedules": rows, "next_after": next_after})
        return
    if not rows:
        if after is None:
            console.print("no schedules (add some with: firecron apply schedules.yaml)")
        else:
            console.print(f"no schedules after {after}")
        return
    table(
        None,
        ["ID", "STATUS", "TRIGGER", "TZ", "TARGET", "NEXT FIRE (UTC)", "RUNS"],
        [
            [
                r["id"],
                r["status"],
                r["trigger"],
                r["timezone"],
                r["target"],
                r["next_fire_at"],
                r["run_count"],
            ]
            for r in rows
        ],
    )
    if next_after is not None:
        console.print(f"more: firecron list --limit {limit} --after {next_after}")


async def _get(store: Store, schedule_id: str) -> StoredSchedule:
    return await service.get_schedule(store, schedule_id)


_HISTORY = timedelta(hours=24)
"""How far back ``show`` tells a continuous schedule's handoffs."""
_GENERATIONS_READ = 500
"""The most runs ``show`` reads of a continuous schedule, newest first: one query, however
short the window. A day of a short window holds more generations than this; ``show``
then says its counts cover only the generations read."""
_HANDOFFS_SHOWN = 5
"""The handoffs ``show`` lists one by one, newest first."""


@dataclass(frozen=True)
class _Generations:
    """What ``show`` read of a continuous schedule's generations."""

    now: datetime
    """The store's clock when they were read (the reference of "ago" and of the 24 h)."""
    since: datetime
    """The start of the period told: ``now`` minus :data:`_HISTORY`."""
    history: History


async def _get_with_generations(
    store: Store, schedule_id: str
) -> tuple[StoredSchedule, _Generations | None]:
    """The schedule and, when it is continuous, its newest runs (at most
    :data:`_GENERATIONS_READ`, one query) as a :class:`History` of the last 24 h."""
    stored = await _get(store, schedule_id)
    if stored.spec.continuous is None:
        return stored, None
    now = await store.clock()
    runs = await store.list_runs(schedule_id=schedule_id, limit=_GENERATIONS_READ)
    since = now - _HISTORY
    return stored, _Generations(now, since, history(runs, since, limit=_GENERATIONS_READ))


def _heartbeat_timeout(spec: ScheduleSpec) -> tuple[timedelta, bool]:
    """The schedule's heartbeat timeout and whether it is the watchdog's default."""
    if spec.heartbeat_timeout is not None:
        return spec.heartbeat_timeout, False
    return RunTimeouts().heartbeat_timeout, True


def _signed_duration(value: timedelta) -> str:
    """:func:`format_duration`, with a minus sign for a negative value (never expected of
    a gap, so shown rather than hidden if a clock ever makes one)."""
    return ("-" + format_duration(-value)) if value < timedelta(0) else format_duration(value)


def _window_end(run: Run) -> datetime | None:
    """When ``run``'s window ends (``ctx.window_end``): its start plus its window."""
    if run.started_at is None or run.window is None:
        return None
    return run.started_at + run.window


def _ended_text(run: Run, crashed: bool) -> str:
    """How a generation ended, ``lost (crash)`` when its successor counted it a crash."""
    return run.state.value + (" (crash)" if crashed else "")


def _live_dict(run: Run) -> dict[str, Any]:
    queued = run.state is RunState.queued
    return {
        "generation": run.generation,
        "run_id": run.id,
        "state": run.state,
        "started_at": run.started_at,
        "heartbeat_at": run.heartbeat_at,
        "window_end": _window_end(run),
        "crashes_in_a_row": run.failures,
        "waits_until": run.deadline_at if queued else None,
    }


def _continuous_dict(stored: StoredSchedule, seen: _Generations) -> dict[str, Any]:
    """``show --json``'s ``continuous`` object: the same facts as the table, as fields."""
    assert stored.spec.continuous is not None
    hb, default = _heartbeat_timeout(stored.spec)
    hist = seen.history
    gaps = hist.gaps
    stats = hist.gap_p50_max
    return {
        "window": stored.spec.continuous.window,
        "heartbeat_timeout": hb,
        "heartbeat_timeout_is_default": default,
        "live": None if hist.live is None else _live_dict(hist.live),
        "handoffs": {
            "since": seen.since,
            "count": len(hist.handoffs),
            "waiting": len(hist.handoffs) - len(gaps),
            "gap_p50_s": None if stats is None else stats[0].total_seconds(),
            "gap_max_s": None if stats is None else stats[1].total_seconds(),
            "truncated": hist.truncated,
            "runs_read_limit": _GENERATIONS_READ,
            "last": [
                {
                    "from_generation": h.previous.generation,
                    "to_generation": h.successor.generation,
                    "from_run_id": h.previous.id,
                    "to_run_id": h.successor.id,
                    "at": h.at,
                    "from_state": h.previous.state,
                    "crashed": h.crashed,
                    "gap_s": None if h.gap is None else h.gap.total_seconds(),
                    "to_state": h.successor.state,
                }
                for h in hist.handoffs[:_HANDOFFS_SHOWN]
            ],
        },
    }


def _continuous_rows(stored: StoredSchedule, seen: _Generations) -> list[list[Any]]:
    """``show``'s rows of a continuous schedule: its heartbeat timeout, its live
    generation, and the count and gaps of the handoffs of the last 24 h."""
    hb, default = _heartbeat_timeout(stored.spec)
    rows: list[list[Any]] = [
        ["heartbeat timeout", format_duration(hb) + (" (default)" if default else "")]
    ]
    hist, live = seen.history, seen.history.live
    if live is None:
        starts = (
            "starts at the next tick" if stored.state.next_fire_at is not None else stored.status
        )
        rows.append(["live generation", f"none ({starts})"])
    else:
        label = "last generation" if live.is_terminal else "live generation"
        rows.append([label, f"{live.generation}  {live.id}  {_state_text(live)}"])
        beat = None
        if live.heartbeat_at is not None:
            ago = _signed_duration(seen.now - live.heartbeat_at)
            beat = f"{rfc3339(live.heartbeat_at)}  ({ago} ago)"
        rows += [
            ["  started", rfc3339(live.started_at) or "not yet"],
            ["  last heartbeat", beat],
            ["  window ends", rfc3339(_window_end(live))],
        ]
        if live.failures:
            wait = ""
            if live.state is RunState.queued and live.deadline_at is not None:
                wait = f", waits until {rfc3339(live.deadline_at)}"
            rows.append(["  crashes in a row", f"{live.failures}{wait}"])
    gaps = hist.gaps
    summary = f"{len(hist.handoffs)}"
    stats = hist.gap_p50_max
    if stats is not None:
        summary += f", gap p50 {_signed_duration(stats[0])}, max {_signed_duration(stats[1])}"
    if len(gaps) < len(hist.handoffs):
        summary += f", {len(hist.handoffs) - len(gaps)} waiting"
    if hist.truncated:
        summary += f" (partial: only the newest {_GENERATIONS_READ} runs were read)"
    rows.append(["handoffs (24 h)", summary])
    return rows


def _handoffs_table(seen: _Generations) -> None:
    """``show``'s last few handoffs, newest first: N -> N+1, when, how N ended, the gap
    (or since when the successor waits)."""
    last = seen.history.handoffs[:_HANDOFFS_SHOWN]
    if not last:
        click.echo("Handoffs: none in the last 24 h")
        return
    table(
        "Last handoffs",
        ["HANDOFF", "AT (UTC)", "ENDED", "GAP"],
        [
            [
                f"{h.previous.generation} -> {h.successor.generation}",
                rfc3339(h.at),
                _ended_text(h.previous, h.crashed),
                _signed_duration(h.gap)
                if h.gap is not None
                else f"waiting since {rfc3339(h.at)}"
                + (
                    f" (until {rfc3339(h.successor.deadline_at)})"
                    if h.successor.state is RunState.queued and h.successor.deadline_at
                    else ""
                ),
            ]
            for h in last
        ],
    )


@cli.command()
@click.argument("schedule_id", metavar="ID")
@store_option
@json_option
def show(schedule_id: str, store_url: str | None, as_json: bool) -> None:
    """Show a schedule: definition, state, next 5 fire times, and what the trigger means.

    A continuous schedule has no fire times: show gives instead its heartbeat timeout,
    its live generation (start, last heartbeat, window end, and the crashes in a row it
    waits behind), and the handoffs of the last 24 h: their count, the gap from one
    generation's end to the next one's start (p50, max), and the last 5 (--json:
    "continuous"). It reads at most the schedule's newest 500 runs, and says so when
    the day holds more.

    \b
    Example:
      firecron show nightly-report
    """
    stored, seen = _with_store(
        store_url, lambda s: _get_with_generations(s, schedule_id), create=False
    )
    trigger = planning.trigger_of(stored.spec)
    upcoming = _upcoming(stored, trigger)
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(stored.spec.timezone)
    if as_json:
        emit_json(
            {
                "id": stored.id,
                "status": stored.status,
                "description_of_trigger": trigger.describe(),
                "spec": stored.spec.model_dump(mode="python", exclude_none=True),
                "state": stored.state,
                "next": [{"utc": rfc3339(t), "local": _local(t, zone)} for t in upcoming],
            }
            | ({"continuous": _continuous_dict(stored, seen)} if seen is not None else {})
        )
        return
    spec, state = stored.spec, stored.state
    rows: list[list[Any]] = [
        ["id", spec.id],
        ["description", spec.description or None],
        ["status", stored.status],
        ["trigger", f"{_trigger_text(stored)}  —  {trigger.describe()}"],
        ["timezone", spec.timezone],
        [
            "target",
            _target_text(spec.target)
            # Auth applies to a POST only: a pipeline or a message has none.
            + (
                f" (auth: {spec.target.auth.value if spec.target.auth else 'default'})"
                if spec.target.is_http
                else ""
            ),
        ],
        ["params", json.dumps(spec.params) if spec.params else None],
        [
            "overlap / misfire",
            f"{spec.overlap.value} / {spec.misfire.policy.value}"
            f" within {format_duration(spec.misfire.grace)}",
        ],
        [
            "retry",
            f"{spec.retry.max_attempts} attempts, backoff {format_duration(spec.retry.backoff)} "
            f"x{spec.retry.multiplier:g} up to {format_duration(spec.retry.max_backoff)}",
        ],
        [
            "expected_duration",
            format_duration(spec.expected_duration) if spec.expected_duration else None,
        ],
        ["timeout", format_duration(spec.timeout) if spec.timeout else None],
        ["jitter", format_duration(spec.jitter) if spec.jitter else None],
        ["labels", ", ".join(f"{k}={v}" for k, v in spec.labels.items()) or None],
        [
            "runs / skipped / missed",
            f"{state.run_count} / {state.skipped_count} / {state.missed_count}",
        ],
        ["last run", state.last_run_id],
    ]
    if state.last_error is not None:
        # The tick could not handle it; it retries at next_fire_at (see planning.errored).
        rows.append(
            [
                "last error",
                f"{rfc3339(state.last_error_at)}: {state.last_error} "
                f"(next try {rfc3339(state.next_fire_at) or 'none'})",
            ]
        )
    if seen is not None:
        rows += _continuous_rows(stored, seen)
    table(None, ["FIELD", "VALUE"], rows)
    console.print()
    if seen is not None:
        _handoffs_table(seen)
        return
    if not upcoming:
        # An empty table would squeeze its title into a column as narrow as its headers.
        reason = "no occurrence left" if stored.status == "active" else stored.status
        if stored.spec.on_demand and stored.status == "active":
            reason = ON_DEMAND
        click.echo(f"Next fire times: none ({reason})")
        return
    table(
        "Next fire times",
        ["LOCAL", "UTC"],
        [[_local(t, zone), rfc3339(t)] for t in upcoming],
    )


def _upcoming(stored: StoredSchedule, trigger: Any) -> list[datetime]:
    """The next (at most) 5 nominal times, stopping where ``datetime`` ends (year 9999).

    A schedule stored before the input bounds existed may sit at the far end of time;
    show must still show it.
    """
    if stored.state.next_occurrence is None:
        return []
    upcoming = [stored.state.next_occurrence]
    if stored.spec.continuous is not None:
        # Its "occurrence" is the instant asked about: only the pending start is real.
        return upcoming
    try:
        upcoming += trigger.occurrences(stored.state.next_occurrence, 4)
    except OverflowError:
        # Trigger.occurrences stops at None only; past year 9999 it overflows. Collect
        # what fits, one at a time.
        while len(upcoming) < 5:
            try:
                following = trigger.next_after(upcoming[-1])
            except OverflowError:
                break
            if following is None:
                break
            upcoming.append(following)
    if stored.spec.max_runs is not None:
        upcoming = upcoming[: max(0, stored.spec.max_runs - stored.state.run_count)]
    return upcoming


def _local(instant: datetime, zone: Any) -> str:
    """``instant`` in ``zone``, ISO 8601; in UTC where the zone's wall time passes year 9999."""
    try:
        return instant.astimezone(zone).isoformat()
    except OverflowError:
        return instant.isoformat()


def _state_command(name: str, verb: str, fn: Any, example: str, extra_doc: str) -> None:
    @cli.command(name, help=f"{verb} a schedule. {extra_doc}\n\n\b\nExample:\n  {example}")
    @click.argument("schedule_id", metavar="ID")
    @store_option
    @json_option
    def command(schedule_id: str, store_url: str | None, as_json: bool) -> None:
        # An unknown store is an unknown schedule: say so without creating an empty store.
        stored = _with_store(store_url, lambda s: fn(s, schedule_id, _now()), create=False)
        if as_json:
            emit_json(_summary(stored))
        else:
            nxt = rfc3339(stored.state.next_fire_at) or "-"
            click.echo(f"{stored.id}: {stored.status} (next fire {nxt})")


_state_command(
    "pause",
    "Pause",
    service.pause,
    "firecron pause nightly-report",
    "It stops firing until resumed; re-applying the YAML keeps it paused.",
)
_state_command(
    "resume",
    "Resume",
    service.resume,
    "firecron resume nightly-report",
    "The schedule's misfire policy decides what happens to the occurrences missed while paused.",
)


@cli.command()
@click.argument("schedule_id", metavar="ID")
@store_option
def delete(schedule_id: str, store_url: str | None) -> None:
    """Delete a schedule. Its runs are kept as history (until their retention expires).

    A schedule still listed in your YAML comes back on the next `firecron apply`.

    \b
    Example:
      firecron delete old-report
    """
    _with_store(store_url, lambda s: service.delete_schedule(s, schedule_id, _now()), create=False)
    click.echo(f"deleted {schedule_id}")


@cli.command()
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    default=None,
    help="Only shard I of N: the schedules and runs whose id hashes to it (default: all).",
)
@store_option
@json_option
def tick(shard_text: str | None, store_url: str | None, as_json: bool) -> None:
    """Run one dispatcher tick: claim and fire due occurrences, then the watchdog pass.

    This is what the `dispatch` function does on every Cloud Scheduler call. Exit
    code 1 when some schedule or run could not be handled (the others still were).
    With `--shard I/N` it does shard I's part only: N processes, one per shard, share
    the work, and N may change between ticks (claims are compare-and-sets). A tick
    that runs out of FIRECRON_TICK_BUDGET with work still due continues at once, at
    most FIRECRON_MAX_CONTINUATIONS times; the summary counts the continuations.

    \b
    Examples:
      firecron tick --json
      firecron tick --shard 0/2 & firecron tick --shard 1/2
    """
    from firecron._dev_secret import with_dev_secret
    from firecron.core.shards import parse_shard

    shard = None if shard_text is None else parse_shard(shard_text)
    # Signed like `firecron dev`'s own ticks, so a dev stack's workers accept its sends.
    settings = with_dev_secret(_settings(store_url), create=False)
    if as_json:
        # stdout is the one JSON document: the event log's lines (also on stdout, where
        # Cloud Logging reads them when deployed) would break it.
        settings = replace(settings, event_log=False)
    summary = _with_store(store_url, lambda s: run_tick(settings, s, shard=shard, chain=True))
    data = summary.as_dict()
    if as_json:
        emit_json(data)
    else:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(data["outcomes"].items())) or "none"
        events = ", ".join(f"{k} {v}" for k, v in sorted(data["events"].items())) or "none"
        click.echo(
            f"tick: {data['due']} due, {data['claimed']} claimed, {data['fired']} fired "
            f"({outcomes}), {data['skipped']} skipped, {data['missed']} missed, "
            f"{data['watched']} watched; events: {events}; {data['duration_s']}s"
            + (f"; shard {summary.shard}" if summary.shard else "")
            + (f"; {summary.continuations} continuations" if summary.continuations else "")
            + ("; more due" if summary.more_due else "")
        )
        for line in data["errors"]:
            click.echo(f"error: {line}", err=True)
    if summary.errors:
        sys.exit(1)


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            # Strict JSON when it parses (numbers, true, lists...), else the plain string:
            # NaN, Infinity and overflowing numbers are not JSON, so they stay text.
            params[key] = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
        except (ValueError, RecursionError):
            params[key] = raw
    return params


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


@cli.command()
@click.argument("schedule_id", metavar="ID")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="Override a parameter (VALUE is JSON or a string). Repeatable.",
)
@click.option(
    "--no-wait",
    "no_gate",
    is_flag=True,
    help="Fire at once, without waiting on the schedule's wait: gate (a wait target still waits).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the run until it ends (its retries included) and exit 1 unless it succeeded.",
)
@click.option(
    "--wait-timeout",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="With --wait: give up (exit 1) when the run has not ended by then.",
)
@store_option
@json_option
def trigger(
    schedule_id: str,
    params: tuple[str, ...],
    no_gate: bool,
    wait: bool,
    wait_timeout: str,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Run a schedule now, with optional parameter overrides, and print the run id.

    The run is POSTed like a scheduled one (trigger: manual) and ignores the overlap
    policy. Follow it with `firecron run RUN_ID`. It is signed with
    $FIRECRON_SIGNING_SECRET or, when that is unset, with the secret `firecron dev`
    keeps beside a SQLite store (DB.signing-secret), so its workers accept it.

    Exit code 1, with one line on stderr, when the run could not be sent (refused,
    unreachable, an HTTP error; a retry may still be scheduled) or has already failed.
    Its events are recorded with the run (see `firecron events`), not printed.

    A worker acknowledges before it works, so without --wait the command ends when the
    run has started. With --wait it follows the run in the store until it ends, while a
    dispatcher (`firecron dev`, or the deployed one) drives its retries, and exits 1
    unless it ended succeeded or delivered.

    A schedule with a wait: gate makes the run wait on its key like a scheduled one:
    the command prints the run id and "state: waiting on KEY" and exits 0 (with --wait
    it follows the run through its wait). --no-wait skips the gate and fires at once.
    The two are unrelated: --no-wait is about the schedule's gate, --wait about
    following the run. A wait target (target: {wait: ...}) always waits.

    \b
    Examples:
      firecron trigger hello --param name=you
      firecron trigger nightly-report --wait --wait-timeout 30m
      firecron trigger load-orders --no-wait    # the data is known to be ready
    """
    from firecron._dev_secret import with_dev_secret

    overrides = _parse_params(params)
    deadline = _user_value("--wait-timeout", lambda: parse_duration(wait_timeout))
    settings = with_dev_secret(_settings(store_url), create=False)

    _quiet_library_logs()

    async def go(store: Store) -> Run:
        # No event log lines: they would mix JSON into the printed run id. The events
        # stay recorded with the run (`firecron events`).
        dispatcher = Dispatcher(store, replace(settings, event_log=False))
        try:
            # The store's record, read after the send (see service.trigger).
            run = await service.trigger(dispatcher, schedule_id, overrides, gate=not no_gate)
        finally:
            await dispatcher.aclose()
        if wait:
            run = await _follow(store, run, deadline)
        return run

    run = _with_store(store_url, go, create=False)
    failure = _wait_failure(run, deadline) if wait else _trigger_failure(run)
    if as_json:
        emit_json(_run_dict(run))
    elif failure is None:
        click.echo(run.id)
        click.echo(f"state: {_state_text(run)}", err=True)
    if failure is not None:
        raise FirecronError(failure)


def _quiet_library_logs() -> None:
    """Keep firecron's log records off stderr (logging's last-resort handler).

    The command reports the outcome itself, in one line; a warning logged on the way
    would print it a second time, in another format.
    """
    logger = logging.getLogger("firecron")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


_FOLLOW_INTERVAL_S = 0.5


async def _follow(store: Store, run: Run, limit: timedelta) -> Run:
    """The run as stored once it is terminal, or as last read when ``limit`` has passed."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit.total_seconds()
    while not run.is_terminal and loop.time() < give_up:
        await asyncio.sleep(_FOLLOW_INTERVAL_S)  # a user-facing poll of the store, not a test
        run = await store.get_run(run.id) or run
    return run


def _wait_failure(run: Run, timeout: timedelta) -> str | None:
    """The one line `trigger --wait` exits 1 with, or None when the run succeeded."""
    if run.state in (RunState.succeeded, RunState.delivered):
        return None
    if not run.is_terminal:
        return f"run {run.id} is still {run.state.value} after {format_duration(timeout)}"
    reason = " ".join((run.error or "no error recorded").split())
    return f"run {run.id} ended {run.state.value} after {run.attempt} attempt(s): {reason}"


def _trigger_failure(run: Run) -> str | None:
    """The one line `trigger` exits 1 with, or None when the run is on its way.

    A run that could not be sent (refused, unreachable, an HTTP error) or that has
    already ended badly is a failure, even when a retry is scheduled: nothing runs now.
    """
    verbs = {
        RunState.failed: "failed",
        RunState.retry_wait: "failed",
        RunState.timed_out: "timed out",
        RunState.lost: "was lost",
    }
    if run.state not in verbs:
        return None
    started = bool(run.attempts) and run.attempts[-1].started_at is not None
    # A wait that failed or timed out never got to a send: it ended, it was not refused.
    ended_waiting = run.wait is not None and not run.attempts
    what = verbs[run.state] if started or ended_waiting else "could not be sent"
    reason = " ".join((run.error or "no error recorded").split())  # one line, always
    retry = ""
    if run.state is RunState.retry_wait and run.retry_at is not None:
        nxt = run.attempt + 1
        retry = f"; attempt {nxt} of {run.retry.max_attempts} at {rfc3339(run.retry_at)}"
    return f"run {run.id} {what}: {reason}{retry}"


def _duration(run: Run) -> str | None:
    if run.started_at is None:
        return None
    end = run.ended_at or _now()
    return format_duration(timedelta(seconds=round((end - run.started_at).total_seconds(), 1))) + (
        "" if run.ended_at else "+"
    )


def _attempt_outcome(attempt: Attempt) -> str | None:
    if attempt.outcome is None:
        return None
    # A plain target that took the request without answering within the ack timeout.
    unanswered = attempt.outcome is RunState.delivered and attempt.acknowledged is False
    return attempt.outcome.value + (" (no answer)" if unanswered else "")


def _sends(attempt: Attempt) -> str | None:
    """``"<time> <outcome>[ <status>]"`` per recorded send, oldest first, comma-separated."""
    if not attempt.sends:
        return None
    return ", ".join(
        f"{rfc3339(s.at)} {s.outcome}" + (f" {s.status_code}" if s.status_code else "")
        for s in attempt.sends
    )


def _run_dict(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(run.model_dump(mode="python"))
    data["duration_s"] = run.duration.total_seconds() if run.duration else None
    return data


def _state_text(run: Run) -> str:
    """The run's state, and for a run waiting on a key ``waiting on KEY``."""
    if run.state is RunState.waiting and run.wait_key is not None:
        return f"waiting on {run.wait_key}"
    return run.state.value


def _short_json(value: Any, limit: int = 60) -> str:
    """``value`` as compact JSON, cut to ``limit`` characters (``...`` marks the cut)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _waited_key(run: Run) -> str | None:
    """The key ``run`` waits (or waited) on: ``wait_key`` while it waits, else its
    template rendered again from the run's own params, occurrence and zone (as when the
    wait began); the template itself if that fails."""
    if run.wait_key is not None:
        return run.wait_key
    if run.wait is None:
        return None
    try:
        return render_key(run.wait.key, run.params, run.scheduled_for, run.timezone)
    except ValueError:
        return run.wait.key


def _wait_rows(run: Run) -> list[list[Any]]:
    """``firecron run``'s rows of a run that waits or waited on a key: the key, the
    condition, the last value seen and when, the next check and the timeout."""
    wait = run.wait
    if wait is None:
        return []
    waiting = run.state is RunState.waiting and run.wait_key is not None
    looked = run.wait_checked_at is not None
    return [
        ["wait key", _waited_key(run)],
        ["wait until", f"{wait.until}  (looked at every {format_duration(wait.every)})"],
        ["last value", _short_json(run.wait_value, 80) if looked else "(not looked at yet)"],
        ["last looked", rfc3339(run.wait_checked_at)],
        ["next check", rfc3339(run.deadline_at) if waiting else None],
        ["times out", rfc3339(run.wait_until)],
    ]


@cli.command("runs")
@schedule_filter("runs")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in RunState]),
    help="Only runs in this state. Repeatable.",
)
@limit_option
@store_option
@json_option
def runs_cmd(
    schedule_id: str | None,
    states: tuple[str, ...],
    limit: int,
    store_url: str | None,
    as_json: bool,
) -> None:
    """List recent runs, newest first.

    A pipeline's task runs are runs too (RUN_ID.TASK). When a listed run waits on a
    state key, KEY and UNTIL columns show the key and the condition it waits for. When
    a listed run is a generation of a continuous schedule (ID@gN), a GEN column gives
    its number. --json prints every field of each run, among them trigger, pipeline,
    task, parent_run_id, cause_run_id, for waits wait, wait_key, wait_value,
    wait_checked_at and wait_until, and for generations generation, window and
    failures (the crashes in a row before it).

    \b
    Examples:
      firecron runs --schedule hello --limit 5
      firecron runs --state failed --json
      firecron runs --state waiting
    """
    found = _with_store(
        store_url,
        lambda s: service.list_runs(s, schedule_id=schedule_id, states=states or None, limit=limit),
        create=False,
    )
    if as_json:
        emit_json([_run_dict(r) for r in found])
        return
    if not found:
        console.print("no runs")
        return
    # The wait columns only when a listed run waits on a key, the generation only when a
    # listed run is one: other listings keep their width.
    waits = any(r.wait_key is not None for r in found)
    generations = any(r.generation is not None for r in found)
    table(
        None,
        ["RUN"]
        + (["GEN"] if generations else [])
        + ["STATE", "ATTEMPT", "TARGET", "SCHEDULED (UTC)", "DURATION", "ERROR"]
        + (["KEY", "UNTIL"] if waits else []),
        [
            [r.id]
            + ([r.generation] if generations else [])
            + [
                r.state.value + (" (SLA!)" if r.sla_breached_at else ""),
                r.attempt,
                _target_text(r.target),
                rfc3339(r.scheduled_for),
                _duration(r),
                r.error,
            ]
            + ([r.wait_key, r.wait.until if r.wait_key and r.wait else None] if waits else [])
            for r in found
        ],
    )


@cli.command("run")
@click.argument("run_id")
@store_option
@json_option
def run_cmd(run_id: str, store_url: str | None, as_json: bool) -> None:
    """Show one run: state, attempts, times, output or error, and SLA breach.

    A pipeline run also shows its task tree: one line per task, in the order they
    can run, indented by depth, with its state, attempt and duration; --json adds
    "tasks": {TASK_ID: {state, run_id, attempt, started_at, ended_at, error}}.

    A run that waits (or waited) on a state key shows the key, the condition, the
    last value seen and when, the next check and when the wait times out.

    \b
    Examples:
      firecron run hello@20270101T090000Z
      firecron run etl@20270101T020000Z --json
    """

    async def get(store: Store) -> tuple[Run, dict[str, Run]]:
        found = await service.get_run(store, run_id)
        return found, await _task_runs(store, found)

    run, task_runs = _with_store(store_url, get, create=False)
    if as_json:
        data = _run_dict(run)
        if run.pipeline_spec is not None:
            data["tasks"] = _tasks_dict(run.id, run.pipeline_spec, task_runs)
        emit_json(data)
        return
    rows: list[list[Any]] = [
        ["run", run.id],
        ["schedule", run.schedule_id],
        ["state", run.state.value],
        ["trigger", run.trigger.value],
        *_orchestration_rows(run),
        *_wait_rows(run),
        ["attempt", f"{run.attempt} of {run.retry.max_attempts}"],
        ["scheduled for", rfc3339(run.scheduled_for)],
        ["target", _target_text(run.target)],
        ["params", json.dumps(run.params) if run.params else None],
        ["created", rfc3339(run.created_at)],
        ["started", rfc3339(run.started_at)],
        ["ended", rfc3339(run.ended_at)],
        ["duration", _duration(run)],
        [
            "expected duration",
            format_duration(run.expected_duration) if run.expected_duration else None,
        ],
        ["SLA breached at", rfc3339(run.sla_breached_at)],
        ["next retry", rfc3339(run.retry_at)],
        ["output", json.dumps(run.output) if run.output is not None else None],
        ["error", run.error],
    ]
    table(None, ["FIELD", "VALUE"], rows)
    console.print()
    # No SENT or ACK column: a worker records its start before it answers, so the
    # dispatcher's record of the acknowledgement loses that race and stays empty, and
    # the send time of an attempt whose connection failed is only when it was tried.
    # SENDS lists what was recorded: an `unknown` send is one whose outcome the
    # dispatcher never wrote, re-sent as the same attempt. (--json has every field.)
    table(
        "Attempts",
        ["#", "STARTED", "ENDED", "OUTCOME", "SENDS", "ERROR"],
        [
            [
                a.number,
                rfc3339(a.started_at),
                rfc3339(a.ended_at),
                _attempt_outcome(a),
                _sends(a),
                a.error,
            ]
            for a in run.attempts
        ],
    )
    if run.pipeline_spec is not None:
        console.print()
        _tasks_table(run.id, run.pipeline_spec, task_runs)
    if run.events:
        console.print()
        _events_table("Events", [(run, e) for e in run.events])


async def _task_runs(store: Store, run: Run) -> dict[str, Run]:
    """The task runs of a pipeline run by task id (one batched read); none for another run.

    A task without a run yet (the pipeline run has not started) is absent.
    """
    if run.pipeline_spec is None:
        return {}
    ids = [task_run_id(run.id, task.id) for task in run.pipeline_spec.tasks]
    return {r.task or r.id: r for r in await store.get_runs(ids)}


def _orchestration_rows(run: Run) -> list[list[Any]]:
    """``run``'s place in a pipeline or a chain, only the rows that apply."""
    rows: list[list[Any]] = []
    if run.pipeline is not None:
        rows.append(["pipeline", run.pipeline])
    if run.task is not None:
        rows.append(["task", run.task])
    if run.parent_run_id is not None:
        rows.append(["pipeline run", run.parent_run_id])
    # A task run's cause is its pipeline run, already shown.
    if run.cause_run_id is not None and run.cause_run_id != run.parent_run_id:
        rows.append(["caused by", run.cause_run_id])
    if run.then:
        rows.append(
            ["then", ", ".join(f"{step.schedule} (on {step.on.value})" for step in run.then)]
        )
    return rows


def _task_attempt(run: Run | None) -> str | None:
    """``"2/3"``: the task run's attempt of its retry policy; None before its first send."""
    if run is None or not run.attempts:
        return None
    return f"{run.attempt}/{run.retry.max_attempts}"


def _tasks_dict(pipeline_run_id: str, spec: PipelineSpec, runs: dict[str, Run]) -> dict[str, Any]:
    """``firecron run --json``'s ``tasks``: per task id, in topological order, its run's
    ``state`` (null while it has no run), ``run_id``, ``attempt`` (null before its first
    send), ``started_at``, ``ended_at`` and ``error``."""
    tasks: dict[str, Any] = {}
    for task_id in topological_order(spec):
        found = runs.get(task_id)
        tasks[task_id] = {
            "state": found.state.value if found else None,
            "run_id": task_run_id(pipeline_run_id, task_id),
            "attempt": found.attempt if found and found.attempts else None,
            "started_at": rfc3339(found.started_at) if found else None,
            "ended_at": rfc3339(found.ended_at) if found else None,
            "error": found.error if found else None,
        }
    return tasks


def _tasks_table(pipeline_run_id: str, spec: PipelineSpec, runs: dict[str, Run]) -> None:
    """The task tree of a pipeline run: one row per task in topological order, the task
    indented two spaces per level of depth, with its state (``waiting on KEY`` for a wait
    task waiting on its key), attempt and duration."""
    depth = depths(spec)
    rows = []
    for task_id in topological_order(spec):
        found = runs.get(task_id)
        rows.append(
            [
                "  " * depth[task_id] + task_id,
                _state_text(found) if found else "not created",
                _task_attempt(found),
                _duration(found) if found else None,
                found.error if found else None,
            ]
        )
    table(f"Tasks ({spec.id})", ["TASK", "STATE", "ATTEMPT", "DURATION", "ERROR"], rows)


@dataclass
class _KnownPipeline:
    """A pipeline as the CLI lists it: its definition and the schedules that target it."""

    spec: PipelineSpec
    schedules: list[str]


def _collect_pipelines(found: dict[str, _KnownPipeline], schedules: Iterable[ScheduleSpec]) -> None:
    """Add to ``found`` the pipelines that ``schedules`` target (their snapshots).

    Deduplicated by id: the first snapshot seen is kept (``apply`` writes one file's
    pipeline into every schedule that targets it, so they agree).
    """
    for spec in schedules:
        pipeline = spec.pipeline_spec
        if pipeline is None:
            continue
        known = found.setdefault(pipeline.id, _KnownPipeline(pipeline, []))
        known.schedules.append(spec.id)


_PAGE = 1000


async def _stored_pipelines(store: Store) -> dict[str, _KnownPipeline]:
    """The pipelines of the stored schedules, paging through them in id order."""
    found: dict[str, _KnownPipeline] = {}
    after: str | None = None
    while True:
        page = await store.list_schedules(after=after, limit=_PAGE)
        _collect_pipelines(found, (s.spec for s in page))
        if len(page) < _PAGE:
            return found
        after = page[-1].id


def _known_pipelines(file: str | None, store_url: str | None) -> dict[str, _KnownPipeline]:
    """The pipelines of the schedules file ``file``, or else of the store (never created)."""
    if file is None:
        return _with_store(store_url, _stored_pipelines, create=False)
    doc = _read_schedule_file(file)
    found: dict[str, _KnownPipeline] = {}
    _collect_pipelines(found, doc.schedules)
    # The file's own list also holds the pipelines that no schedule targets (yet).
    for pipeline in doc.pipelines:
        found.setdefault(pipeline.id, _KnownPipeline(pipeline, []))
    return found


_FILE_HELP = "Read this schedules file instead of the store."


@cli.command("pipelines")
@click.option("--file", type=click.Path(dir_okay=False), metavar="FILE", help=_FILE_HELP)
@store_option
@json_option
def pipelines_cmd(file: str | None, store_url: str | None, as_json: bool) -> None:
    """List pipelines with their task count, max_parallel, timeout and the schedules
    that run them.

    From the store, a pipeline is known through the schedules that target it (each
    keeps a snapshot of it, taken by apply). With --file, the file's pipelines are
    listed, those no schedule targets included.

    \b
    Examples:
      firecron pipelines
      firecron pipelines --file schedules.yaml --json
    """
    found = sorted(_known_pipelines(file, store_url).values(), key=lambda k: k.spec.id)
    rows: list[dict[str, Any]] = [
        {
            "id": known.spec.id,
            "description": known.spec.description,
            "task_count": len(known.spec.tasks),
            "tasks": topological_order(known.spec),
            "max_parallel": known.spec.max_parallel,
            "timeout": format_duration(known.spec.timeout) if known.spec.timeout else None,
            "schedules": known.schedules,
        }
        for known in found
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no pipelines (a schedule runs one with target: {pipeline: ID})")
        return
    table(
        None,
        ["ID", "TASKS", "MAX PARALLEL", "TIMEOUT", "SCHEDULES", "DESCRIPTION"],
        [
            [
                r["id"],
                r["task_count"],
                r["max_parallel"],
                r["timeout"],
                ", ".join(r["schedules"]) or "(none)",
                r["description"] or None,
            ]
            for r in rows
        ],
    )


@cli.command("graph")
@click.argument("pipeline_id", metavar="PIPELINE_ID")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid"]),
    default="text",
    show_default=True,
    help="text: one line per task, indented by depth; mermaid: a flowchart for Markdown.",
)
@click.option("--file", type=click.Path(dir_okay=False), metavar="FILE", help=_FILE_HELP)
@store_option
def graph_cmd(pipeline_id: str, fmt: str, file: str | None, store_url: str | None) -> None:
    """Print a pipeline's task graph, with each dependency's rule (when) and condition (if).

    Tasks come in an order they can run in. A dependency without a label has the
    default rule, all_succeeded. The mermaid format prints a "flowchart TD" to put in
    a ```mermaid block (GitHub renders it).

    \b
    Examples:
      firecron graph etl
      firecron graph etl --format mermaid --file schedules.yaml
    """
    known = _known_pipelines(file, store_url).get(pipeline_id)
    if known is None:
        where = file if file is not None else "the store"
        raise NotFoundError(f"unknown pipeline {pipeline_id!r} in {where}")
    render = render_mermaid if fmt == "mermaid" else render_text
    sys.stdout.write(render(known.spec))
    sys.stdout.flush()


@cli.command()
@click.option(
    "--schedules",
    "schedules_file",
    type=click.Path(dir_okay=False),
    help="Schedules YAML to apply at start (e.g. schedules.yaml).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Port of the local workers.",
)
@click.option(
    "--source",
    type=click.Path(dir_okay=False),
    help="Module with the workers (default: functions/main.py).",
)
@store_option
def dev(schedules_file: str | None, port: int, source: str | None, store_url: str | None) -> None:
    """Run the local stack: SQLite store, every worker of main.py, a dispatcher ticking every
    second, the web console and the admin API.

    Workers are served by functions-framework at http://127.0.0.1:PORT/<name>, and
    served again when the source file changes. The web console is at
    http://127.0.0.1:PORT/ and the admin API at http://127.0.0.1:PORT/api/v1 (loopback
    callers only). Every dispatch is signed, and the
    workers refuse unsigned requests: the secret is $FIRECRON_SIGNING_SECRET, or else
    one made on the first start beside a SQLite store (DB.signing-secret, mode 0600),
    which `firecron trigger` also uses. A live view shows upcoming fire times and
    recent runs (when piped: one line per run that changes after the start).
    Ctrl-C stops it; runs in flight are recovered by the watchdog on the next start.

    \b
    Example:
      firecron dev --schedules schedules.yaml --port 8080
    """
    from pathlib import Path as _Path

    from firecron.dev import DevStack, default_source

    # The dev stack always allows private targets (its workers are on 127.0.0.1).
    doc = (
        _read_schedule_file(schedules_file, allow_private_targets=True) if schedules_file else None
    )
    stack = DevStack(
        _settings(store_url),
        doc,
        port=port,
        source=_Path(source) if source else default_source(),
        console=console,
    )
    asyncio.run(stack.run())


def _deliveries_text(event: Event) -> str:
    if not event.deliveries:
        return "-"
    return ", ".join(
        f"{d.sink}: {d.state.value}"
        + (f" ({d.attempts} tries: {d.last_error})" if d.last_error else "")
        for d in event.deliveries
    )


def _events_table(title: str | None, rows: list[tuple[Run, Event]]) -> None:
    table(
        title,
        ["TIME (UTC)", "TYPE", "RUN", "DELIVERIES"],
        [[rfc3339(e.time), e.type.value, r.id, _deliveries_text(e)] for r, e in rows],
    )


@cli.command()
@schedule_filter("events")
@click.option(
    "--type",
    "types",
    multiple=True,
    # Only the types recorded in runs: schedule.error and dispatcher.clock_skew are logged.
    type=click.Choice([t.value for t in EventType if t in RUN_EVENT_TYPES]),
    help="Only events of this type. Repeatable.",
)
@limit_option
@store_option
@json_option
def events(
    schedule_id: str | None,
    types: tuple[str, ...],
    limit: int,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Recent events, newest first, with each one's delivery state per sink.

    Events are recorded in their runs, so this reads the most recent runs (up to
    five times --limit) and lists their events.

    \b
    Examples:
      firecron events --type run.failed --type run.sla_breached
      firecron events --schedule nightly-report --json
    """
    runs = _with_store(
        store_url,
        lambda s: s.list_runs(schedule_id=schedule_id, limit=min(1000, limit * 5)),
        create=False,
    )
    wanted = set(types)
    rows = sorted(
        ((r, e) for r in runs for e in r.events if not wanted or e.type.value in wanted),
        key=lambda pair: pair[1].time,
        reverse=True,
    )[:limit]
    if as_json:
        emit_json([{**cloudevent(e), "deliveries": jsonable(e.deliveries)} for _, e in rows])
        return
    if not rows:
        console.print("no events")
        return
    _events_table(None, rows)


# -- state ------------------------------------------------------------------------------


@cli.group("state")
def state_group() -> None:
    """Read and write the state collection that waits watch (key -> JSON value).

    Keys are at most 256 characters of letters, digits and / _ . : - ; values are JSON
    of at most 64 KiB. Each entry has a version (1 when created, one more per write) and
    the time of its last write. Every write goes through firecron.State: the runs
    waiting on the key are looked at with the new value at once, and those whose
    condition holds fire. Writes are signed like `firecron trigger`'s sends.

    \b
    Examples:
      firecron state set orders/2027-01-04 '{"rows": 1200}'
      firecron state get orders/2027-01-04 --json
      firecron state list --prefix orders/
      firecron state delete orders/2027-01-04 --if-version 1
    """


@contextlib.contextmanager
def _open_state(store_url: str | None) -> Iterator[Any]:
    """A :class:`firecron.State` on the configured store, closed on exit.

    The store must exist already (an unknown SQLite path is exit 2 naming it, and
    nothing is created), for the writes as for the reads: a write to a store nobody
    reads is a typo in the URL, not a way to make a store.
    """
    from firecron._state_api import State

    settings = _settings(store_url)
    _with_store(store_url, _nothing, create=False)  # exists? (creates nothing)
    _quiet_library_logs()  # a failed release is a warning; the write stands
    state = State(settings.store_url, namespace=settings.namespace)
    try:
        yield state
    finally:
        state.close()


async def _nothing(store: Store) -> None:
    return None


def _entry_dict(entry: StateEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": entry.value,
        "version": entry.version,
        "updated_at": rfc3339(entry.updated_at),
    }


def _parse_value(text: str) -> Any:
    """JSON ``text`` (``-``: read from stdin), strictly: NaN, Infinity and numbers that
    overflow a float are not JSON. Raises :class:`InvalidInputError` (one line)."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except ValueError as exc:
        raise InvalidInputError(f"JSON: not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInputError("JSON: nested too deeply to read") from None


@state_group.command("get")
@click.argument("key")
@store_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the entry: key, value, version, updated_at."
)
def state_get(key: str, store_url: str | None, as_json: bool) -> None:
    """Print the value under KEY as JSON; exit 2 when there is none.

    \b
    Examples:
      firecron state get orders/2027-01-04
      firecron state get orders/2027-01-04 --json
    """
    with _open_state(store_url) as state:
        entry = state.entry(key)
    if entry is None:
        raise NotFoundError(f"unknown state key {key!r}")
    emit_json(_entry_dict(entry) if as_json else entry.value)


@state_group.command("set")
@click.argument("key")
@click.argument("value", metavar="JSON")
@click.option(
    "--if-version",
    type=click.IntRange(min=0),
    metavar="N",
    help="Write only over version N (0: only if KEY does not exist); exit 1 otherwise.",
)
@store_option
@json_option
def state_set(
    key: str, value: str, if_version: int | None, store_url: str | None, as_json: bool
) -> None:
    """Write the JSON value under KEY and print its new version.

    JSON is parsed strictly (- reads it from stdin). The runs waiting on KEY are
    looked at with the new value at once, and those whose condition holds fire.
    With --if-version N the write is a compare-and-set: when KEY is not at version N
    (or, with 0, exists), nothing is written and the command exits 1 with one line.

    \b
    Examples:
      firecron state set orders/2027-01-04 '{"rows": 1200, "ready": true}'
      firecron state set lock:etl '"me"' --if-version 0
      echo '[1, 2]' | firecron state set batch/ids -
    """
    parsed = _parse_value(value)
    with _open_state(store_url) as state:
        entry = state.set(key, parsed, if_version=if_version)
    if as_json:
        emit_json(_entry_dict(entry))
    else:
        click.echo(entry.version)


@state_group.command("list")
@click.option("--prefix", default="", metavar="P", help="Only keys that begin with P.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most."
)
@store_option
@json_option
def state_list(prefix: str, limit: int, store_url: str | None, as_json: bool) -> None:
    """List entries in key order: key, version, last write and a short value.

    --json prints each entry whole (key, value, version, updated_at).

    \b
    Examples:
      firecron state list --prefix orders/
      firecron state list --json
    """
    with _open_state(store_url) as state:
        # One more than asked tells whether more follow, without a count.
        found = state.list(prefix, limit=limit + 1)
    entries, more = found[:limit], len(found) > limit
    if as_json:
        emit_json([_entry_dict(e) for e in entries])
        return
    if not entries:
        console.print(f"no state entries{f' under {prefix!r}' if prefix else ''}")
        return
    table(
        None,
        ["KEY", "VERSION", "UPDATED (UTC)", "VALUE"],
        [[e.key, e.version, rfc3339(e.updated_at), _short_json(e.value)] for e in entries],
    )
    if more:
        console.print(f"more: raise --limit (now {limit}) or narrow --prefix")


@state_group.command("delete")
@click.argument("key")
@click.option(
    "--if-version",
    type=click.IntRange(min=1),
    metavar="N",
    help="Delete only at version N; exit 1 otherwise.",
)
@store_option
def state_delete(key: str, if_version: int | None, store_url: str | None) -> None:
    """Delete the entry under KEY; exit 2 when there is none.

    The runs waiting on KEY are looked at at once, with null as the value.

    \b
    Example:
      firecron state delete orders/2027-01-04 --if-version 3
    """
    with _open_state(store_url) as state:
        deleted = state.delete(key, if_version=if_version)
    if not deleted:
        raise NotFoundError(f"unknown state key {key!r}")
    click.echo(f"deleted {key}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    try:
        code = cli.main(args=argv, prog_name="firecron", standalone_mode=False)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except ScheduleFileError as exc:
        for line in exc.errors:
            click.echo(f"{exc.source}: {line}", err=True)
        sys.exit(2)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except FirecronError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


from firecron import cli_logs as _cli_logs  # noqa: F401, E402
from firecron import cli_notify as _cli_notify  # noqa: F401, E402
from firecron import cli_ops as _cli_ops  # noqa: F401, E402

if __name__ == "__main__":
    main()
