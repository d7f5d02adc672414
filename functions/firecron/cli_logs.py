"""``firecron logs RUN_ID [--attempt N] [--follow]``: a run's captured log lines.

Registered on :data:`firecron.cli.cli` by one import at the bottom of ``cli.py``.
The lines are those the worker SDK stored beside the run (``Store.get_logs``: at most
256 KiB per attempt, then a marker line). On a Firestore store the command also prints,
on stderr, the Logs Explorer query that finds every record a deployed worker wrote for
the run (Cloud Logging keeps them uncapped).
"""

from __future__ import annotations

import asyncio
import json
from typing import Final
from urllib.parse import quote

import click

from firecron._output import err_console
from firecron.cli import _settings, cli, json_option, store_option
from firecron.core.logs import LogLine
from firecron.core.render import rfc3339
from firecron.core.runs import Run
from firecron.errors import NotFoundError
from firecron.store import Store, open_store

__all__ = ["FOLLOW_INTERVAL_S", "logs_explorer_query", "logs_explorer_url"]

FOLLOW_INTERVAL_S: Final = 1.0
"""Seconds between two reads of ``--follow``."""


def logs_explorer_query(run_id: str) -> str:
    """The Logs Explorer query of every record deployed workers logged for ``run_id``."""
    return f'resource.type="cloud_run_revision" labels.firecron_run_id="{_quoted(run_id)}"'


def logs_explorer_url(project: str, run_id: str) -> str:
    """The Cloud Console link that opens :func:`logs_explorer_query` in ``project``."""
    return (
        "https://console.cloud.google.com/logs/query;query="
        f"{quote(logs_explorer_query(run_id), safe='')}?project={quote(project, safe='')}"
    )


def _quoted(text: str) -> str:
    # The query language's string escapes: a run id holding a quote stays one string.
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _firestore_project(store_url: str) -> str | None:
    """The project of a ``firestore://PROJECT[/DATABASE]`` URL, else None."""
    if not store_url.startswith("firestore://"):
        return None
    return store_url.removeprefix("firestore://").strip("/").partition("/")[0] or None


def _text(line: LogLine) -> str:
    return f"{rfc3339(line.at)} #{line.attempt} {line.level:<8} {line.logger}: {line.message}"


def _print(line: LogLine, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(line.model_dump(mode="json"), ensure_ascii=False))
    else:
        click.echo(_text(line))


def _attempt_over(run: Run, attempt: int) -> bool:
    """True once attempt ``attempt`` of ``run`` can log nothing more: the run has ended or
    moved on to a later attempt (the SDK stores every line before it records an end)."""
    return run.is_terminal or run.attempt > attempt


async def _follow(
    store: Store, run_id: str, attempt: int | None, as_json: bool, follow: bool
) -> None:
    run = await store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    # A cursor per attempt: lines are numbered 1, 2, ... within each.
    seen: dict[int, int] = {}
    while True:
        # Whether the run (or the attempt) was over is read BEFORE its lines: lines
        # read after an end was seen are complete, since they were stored before it.
        over = _attempt_over(run, attempt) if attempt is not None else run.is_terminal
        attempts = [attempt] if attempt is not None else range(1, run.attempt + 1)
        for number in attempts:
            for line in await store.get_logs(run_id, number, after=seen.get(number, 0)):
                _print(line, as_json)
                seen[number] = line.seq
        if not follow or over:
            return
        await asyncio.sleep(FOLLOW_INTERVAL_S)
        fresh = await store.get_run(run_id)
        if fresh is None:
            return  # deleted meanwhile (retention): nothing more will come
        run = fresh


@cli.command("logs")
@click.argument("run_id")
@click.option(
    "--attempt",
    type=click.IntRange(1),
    metavar="N",
    help="Only this attempt's lines (default: every attempt, in order).",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new lines until the run (or --attempt) has ended.",
)
@store_option
@json_option
def logs_cmd(
    run_id: str, attempt: int | None, follow: bool, store_url: str | None, as_json: bool
) -> None:
    """Print a run's captured log lines: what the worker logged with `logging` (in the
    function's thread) and `ctx.log`, per attempt, at most 256 KiB an attempt.

    One line per record: TIME #ATTEMPT LEVEL LOGGER: MESSAGE (--json: one JSON object
    per line). For a pipeline, pass a task's run id (`firecron run` lists them). On a
    Firestore store, stderr also shows the Logs Explorer query of the full logs that
    deployed workers write to Cloud Logging.

    \b
    Examples:
      firecron logs hello@20270101T090000Z
      firecron logs etl@20270101T020000Z --attempt 2 --follow
    """
    settings = _settings(store_url)
    project = _firestore_project(settings.store_url)
    if project is not None:
        err_console.print(
            f"full logs of deployed workers (Logs Explorer): {logs_explorer_query(run_id)}\n"
            f"  {logs_explorer_url(project, run_id)}",
            soft_wrap=True,
            markup=False,
        )

    async def go() -> None:
        store = open_store(settings.store_url, settings.namespace, create=False)
        try:
            await _follow(store, run_id, attempt, as_json, follow)
        finally:
            await store.close()

    asyncio.run(go())
