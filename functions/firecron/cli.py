"""The ``firecron`` command line. Thin: it parses, calls the services, and prints.

Exit codes: 0 ok, 1 operational failure, 2 invalid input or unknown id. Errors are
one line on stderr (a schedules file prints one line per problem), never a traceback.
Shell completion uses click's mechanism, e.g. ``eval "$(_FIRECRON_COMPLETE=bash_source firecron)"``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from firecron import admin
from firecron._output import console, emit_json, err_console, rfc3339, table
from firecron.core import planning
from firecron.core.durations import format_duration as fd
from firecron.core.models import StoredSchedule
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file
from firecron.core.triggers import parse_instant, parse_spec, validate_timezone
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


def _with_store(store_url: str | None, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run ``fn`` on it, close it."""
    settings = _settings(store_url)

    async def go() -> T:
        store = open_store(settings.store_url, settings.namespace)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _read_schedule_file(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_schedule_file(text, source=path)


store_option = click.option("--store", "store_url", metavar="URL", help=_STORE_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


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


@cli.command("next")
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
    (@hourly @daily @weekly @monthly @yearly), "every 15m", or "at RFC3339".

    \b
    Examples:
      firecron next "30 2 * * *" --tz Europe/Berlin --after 2027-03-27T00:00:00Z -n 3
      firecron next "every 15m" -n 4 --json
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

    \b
    Example:
      firecron validate schedules.yaml
    """
    doc = _read_schedule_file(file)
    n = len(doc.schedules)
    click.echo(f"ok: {file}: {n} schedule{'s' if n != 1 else ''}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--prune", is_flag=True, help="Delete stored schedules that the file does not list.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@store_option
def apply(file: str, prune: bool, dry_run: bool, store_url: str | None) -> None:
    """Make the store match a schedules file, printing a plan line per schedule.

    + created, ~ changed, = unchanged, - deleted (only with --prune). Nothing is
    written when any entry is invalid. Re-applying an unchanged file changes nothing
    and keeps next fire times and counters.

    \b
    Example:
      firecron apply schedules.yaml --dry-run
    """
    doc = _read_schedule_file(file)
    lines = _with_store(
        store_url,
        lambda s: admin.apply_schedules(s, doc.schedules, _now(), prune=prune, dry_run=dry_run),
    )
    for line in lines:
        extra = f"  ({', '.join(line.changed_fields)})" if line.changed_fields else ""
        click.echo(f"{line.action.value} {line.schedule_id}{extra}")
    counts = {a: sum(1 for ln in lines if ln.action is a) for a in admin.ApplyAction}
    verb = "would be" if dry_run else "were"
    click.echo(
        f"{counts[admin.ApplyAction.create]} created, {counts[admin.ApplyAction.change]} changed, "
        f"{counts[admin.ApplyAction.unchanged]} unchanged, {counts[admin.ApplyAction.delete]} "
        f"deleted{' (dry run: nothing ' + verb + ' written)' if dry_run else ''}"
    )


def _trigger_text(s: StoredSchedule) -> str:
    spec = s.spec
    if spec.cron is not None:
        return f"cron {spec.cron}"
    if spec.every is not None:
        return f"every {fd(spec.every)}"
    return f"at {rfc3339(spec.at)}"


def _target_text(s: StoredSchedule) -> str:
    t = s.spec.target
    return f"function:{t.function}" if t.function else f"{t.url}{' (worker)' if t.worker else ''}"


def _summary(s: StoredSchedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "status": s.status,
        "trigger": _trigger_text(s),
        "timezone": s.spec.timezone,
        "target": _target_text(s),
        "next_fire_at": rfc3339(s.state.next_fire_at),
        "last_run_id": s.state.last_run_id,
        "run_count": s.state.run_count,
        "description": s.spec.description,
        "labels": s.spec.labels,
    }


@cli.command("list")
@store_option
@json_option
def list_cmd(store_url: str | None, as_json: bool) -> None:
    """List schedules with their status and next fire time.

    \b
    Example:
      firecron list --json
    """
    schedules = _with_store(store_url, lambda s: s.list_schedules())
    rows = [_summary(s) for s in schedules]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no schedules (add some with: firecron apply schedules.yaml)")
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


async def _get(store: Store, schedule_id: str) -> StoredSchedule:
    found = await store.get_schedule(schedule_id)
    if found is None:
        raise NotFoundError(f"unknown schedule {schedule_id!r}")
    return found


@cli.command()
@click.argument("schedule_id", metavar="ID")
@store_option
@json_option
def show(schedule_id: str, store_url: str | None, as_json: bool) -> None:
    """Show a schedule: definition, state, next 5 fire times, and what the trigger means.

    \b
    Example:
      firecron show nightly-report
    """
    stored = _with_store(store_url, lambda s: _get(s, schedule_id))
    trigger = planning.trigger_of(stored.spec)
    upcoming: list[datetime] = []
    if stored.state.next_occurrence is not None:
        upcoming = [stored.state.next_occurrence]
        upcoming += trigger.occurrences(stored.state.next_occurrence, 4)
        if stored.spec.max_runs is not None:
            upcoming = upcoming[: max(0, stored.spec.max_runs - stored.state.run_count)]
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
                "next": [
                    {"utc": rfc3339(t), "local": t.astimezone(zone).isoformat()} for t in upcoming
                ],
            }
        )
        return
    spec, state = stored.spec, stored.state
    rows: list[list[Any]] = [
        ["id", spec.id],
        ["description", spec.description or None],
        ["status", stored.status],
        ["trigger", f"{_trigger_text(stored)}  —  {trigger.describe()}"],
        ["timezone", spec.timezone],
        ["target", _target_text(stored) + f" (auth: {spec.target.auth.value})"],
        ["params", spec.params or None],
        [
            "overlap / misfire",
            f"{spec.overlap.value} / {spec.misfire.policy.value} within {fd(spec.misfire.grace)}",
        ],
        [
            "retry",
            f"{spec.retry.max_attempts} attempts, backoff {fd(spec.retry.backoff)} "
            f"x{spec.retry.multiplier:g} up to {fd(spec.retry.max_backoff)}",
        ],
        ["expected_duration", fd(spec.expected_duration) if spec.expected_duration else None],
        ["timeout", fd(spec.timeout) if spec.timeout else None],
        ["jitter", fd(spec.jitter) if spec.jitter else None],
        ["labels", ", ".join(f"{k}={v}" for k, v in spec.labels.items()) or None],
        [
            "runs / skipped / missed",
            f"{state.run_count} / {state.skipped_count} / {state.missed_count}",
        ],
        ["last run", state.last_run_id],
    ]
    table(None, ["FIELD", "VALUE"], rows)
    console.print()
    table(
        "Next fire times",
        ["LOCAL", "UTC"],
        [[t.astimezone(zone).isoformat(), rfc3339(t)] for t in upcoming],
    )


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


if __name__ == "__main__":
    main()
