"""The ``cancel``, ``rerun`` and ``backfill`` commands (registered on :data:`firecron.cli.cli`).

Thin, like the rest of the CLI: they parse, call :mod:`firecron.operations`, and print.
Exit codes as everywhere: 0 ok, 1 operational failure (a run that could not be sent),
2 invalid input or unknown id, with one line on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import click

from firecron import operations
from firecron._output import emit_json, rfc3339
from firecron.cli import (
    _apply_progress,
    _now,
    _parse_params,
    _quiet_library_logs,
    _run_dict,
    _settings,
    _state_text,
    _trigger_failure,
    _with_store,
    cli,
    json_option,
    store_option,
)
from firecron.core.backfill import parse_bound
from firecron.core.runs import Run
from firecron.dispatch import Dispatcher
from firecron.errors import FirecronError, InvalidInputError, NotFoundError
from firecron.settings import Settings
from firecron.store import Store

__all__ = ["backfill_cmd", "cancel_cmd", "rerun_cmd"]


def _signed_settings(store_url: str | None) -> Settings:
    """The settings of a command that fires runs: signed like ``firecron trigger``'s (the
    dev stack's secret when none is configured), without event log lines on stdout."""
    from firecron._dev_secret import with_dev_secret

    settings = with_dev_secret(_settings(store_url), create=False)
    return replace(settings, event_log=False)


def _with_dispatcher(store_url: str | None, fn: Callable[[Dispatcher], Any]) -> Any:
    """Run ``fn`` with a dispatcher on the configured store (never creating a store)."""
    settings = _signed_settings(store_url)
    _quiet_library_logs()

    async def go(store: Store) -> Any:
        dispatcher = Dispatcher(store, settings)
        try:
            return await fn(dispatcher)
        finally:
            await dispatcher.aclose()

    return _with_store(store_url, go, create=False)


@cli.command("cancel")
@click.argument("run_id")
@click.option(
    "--reason",
    default="cancelled by an operator",
    show_default=True,
    help="Recorded as the run's error.",
)
@store_option
@json_option
def cancel_cmd(run_id: str, reason: str, store_url: str | None, as_json: bool) -> None:
    """Cancel a run that has not ended, and print what happened to it.

    A pending, dispatched, queued, waiting or retry_wait run ends cancelled at once. A
    running run is asked to stop through its next heartbeat reply (ctx.cancelled turns
    true): it ends cancelled when its worker stops, or when the worker stops answering
    for its heartbeat timeout. Cancelling a pipeline run cancels its open tasks;
    cancelling a continuous schedule's generation also pauses the schedule, so no next
    generation starts until `firecron resume`. A run that already ended is exit 2.

    \b
    Examples:
      firecron cancel nightly-report@20270104T020000Z
      firecron cancel daily-etl@m20270104T101500Z-1a2b3c --reason "bad input file"
    """

    async def go(dispatcher: Dispatcher) -> Run:
        return await operations.cancel_run(
            dispatcher.store, run_id, _now(), reason=reason, dispatcher=dispatcher
        )

    run = _with_dispatcher(store_url, go)
    if as_json:
        emit_json(_run_dict(run))
        return
    if run.is_terminal:
        click.echo(f"{run.id}: {run.state.value}")
    else:
        click.echo(f"{run.id}: cancel requested ({run.state.value}); it ends when its worker stops")
    if run.generation is not None:
        click.echo(
            f"schedule {run.schedule_id} is paused: `firecron resume {run.schedule_id}`"
            " starts the next generation",
            err=True,
        )


@cli.command("rerun")
@click.argument("run_id")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="Override a parameter of the old run (VALUE is JSON or a string). Repeatable.",
)
@click.option(
    "--from",
    "from_task",
    metavar="TASK",
    help="On a pipeline run: re-run TASK and the tasks below it, reusing the others' outputs.",
)
@store_option
@json_option
def rerun_cmd(
    run_id: str,
    params: tuple[str, ...],
    from_task: str | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Run a run again: a new manual run of its schedule with the same params, and print its id.

    The new run has the old run's parameters, overridden by --param, and its
    cause_run_id is the old run. It uses the schedule as it is defined now. With
    --from TASK on a pipeline run that has ended, the new pipeline run re-runs TASK
    and every task downstream of it; the other tasks are not run again: their runs are
    created already ended, with the old outputs (reused_from names the old task run).
    Re-running a task run is re-running its pipeline run from that task.

    Exit code 1 when the new run could not be sent, as for `firecron trigger`.

    \b
    Examples:
      firecron rerun nightly-report@20270104T020000Z
      firecron rerun nightly-report@20270104T020000Z --param day=2027-01-03
      firecron rerun daily-etl@20270104T020000Z --from load
    """
    overrides = _parse_params(params)

    async def go(dispatcher: Dispatcher) -> Run:
        fired = await operations.rerun(dispatcher, run_id, params=overrides, from_task=from_task)
        # A worker records its start before it answers: the store has the real state.
        return await dispatcher.store.get_run(fired.id) or fired

    run = _with_dispatcher(store_url, go)
    failure = _trigger_failure(run)
    if as_json:
        emit_json(_run_dict(run))
    elif failure is None:
        click.echo(run.id)
        click.echo(f"state: {_state_text(run)}", err=True)
    if failure is not None:
        raise FirecronError(failure)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None] | None]:
    """`apply`'s progress bar on stderr (a terminal only; else None), as one phase."""
    with _apply_progress() as phases:
        if phases is None:
            yield None
            return

        def report(done: int, total: int) -> None:
            phases("backfilling", done, total)

        yield report


def _summary_line(report: operations.BackfillReport) -> str:
    states: dict[str, int] = {}
    for run_id in report.existing:
        state = report.existing_states.get(run_id)
        key = state.value if state is not None else "?"
        states[key] = states.get(key, 0) + 1
    shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    existing = f"{len(report.existing)} existing" + (f" ({shown})" if shown else "")
    span = f"{rfc3339(report.start)} to {rfc3339(report.end)}"
    head = f"backfill {report.schedule_id}: {len(report.planned)} occurrences from {span}"
    if report.dry_run:
        body = f"{len(report.to_create)} to create, {existing} (dry run: nothing written)"
    else:
        body = f"{len(report.created)} created, {existing}"
    later = ""
    if report.later:
        later = f"; {len(report.later)} later ones are left to the schedule"
    return f"{head}: {body}{later}"


@cli.command("backfill")
@click.argument("schedule_id", metavar="ID")
@click.option(
    "--from", "start_text", required=True, metavar="T", help="First instant (RFC 3339 or a date)."
)
@click.option(
    "--to",
    "end_text",
    required=True,
    metavar="T",
    help="Last instant, included (RFC 3339 or a date).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be created and write nothing.")
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N runs of the range active at once; waits for ends before firing more.",
)
@store_option
@json_option
def backfill_cmd(
    schedule_id: str,
    start_text: str,
    end_text: str,
    dry_run: bool,
    max_parallel: int | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Fire one run per past occurrence of a schedule in a range, then print a summary line.

    Each run has trigger: backfill and the occurrence's normal run id, so an occurrence
    that already has a run (fired, skipped, missed, or by an earlier backfill) is
    reported and not doubled: running the same command again completes what an
    interrupted one left. Pipelines are backfilled as pipeline runs. Backfilled runs
    ignore the overlap policy and do not change the schedule's counters. Occurrences
    the schedule fires itself (at or after its next fire time) are left to it.

    T is RFC 3339 (2027-01-04T10:00:00Z), a wall time in the schedule's zone
    (2027-01-04T10:00), or a date: --from DATE starts at its midnight, --to DATE ends
    at the end of that day. A range with more than 10,000 occurrences, --to before
    --from, and an on-demand or continuous schedule are refused (exit 2). With
    --max-parallel N, the command waits for runs to end so that at most N are active.
    On a terminal, a progress bar shows on stderr. Exit code 1 when a run could not be
    sent (its retries follow its retry policy).

    \b
    Examples:
      firecron backfill nightly-report --from 2027-01-01 --to 2027-01-31 --dry-run
      firecron backfill daily-etl --from 2027-01-01 --to 2027-01-07 --max-parallel 2
      firecron backfill hourly --from 2027-01-04T00:00:00Z --to 2027-01-04T12:00:00Z
    """

    async def go(dispatcher: Dispatcher) -> operations.BackfillReport:
        stored = await dispatcher.store.get_schedule(schedule_id)
        if stored is None:
            raise NotFoundError(f"unknown schedule {schedule_id!r}")
        zone = stored.spec.timezone
        start = _bound("--from", start_text, zone, end=False)
        end = _bound("--to", end_text, zone, end=True)
        if end < start:
            raise InvalidInputError(f"--to {end_text} is before --from {start_text}")
        with _progress_bar() as progress:
            return await operations.backfill(
                dispatcher,
                schedule_id,
                start,
                end,
                dry_run=dry_run,
                max_parallel=max_parallel,
                progress=progress,
            )

    report = _with_dispatcher(store_url, go)
    if as_json:
        emit_json(
            {
                "schedule_id": report.schedule_id,
                "from": report.start,
                "to": report.end,
                "planned": report.planned,
                "created": report.created,
                "to_create": report.to_create,
                "existing": report.existing,
                "existing_states": {k: v.value for k, v in report.existing_states.items()},
                "later": report.later,
                "unsent": report.unsent,
                "dry_run": report.dry_run,
            }
        )
    else:
        click.echo(_summary_line(report))
    if report.unsent:
        raise FirecronError(
            f"{len(report.unsent)} backfilled run(s) could not be sent, first"
            f" {report.unsent[0]}: see `firecron run {report.unsent[0]}`"
        )


def _bound(option: str, text: str, zone: str, *, end: bool) -> datetime:
    try:
        return parse_bound(text, zone, end=end)
    except ValueError as exc:
        raise InvalidInputError(f"{option}: {exc}") from None
