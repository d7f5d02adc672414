"""``firecron cancel``, ``rerun`` and ``backfill``: the real command on a SQLite store.

Schedules and runs are stored through the store API; the command runs as a subprocess
(exit codes, stdout and stderr are what is checked). Targets are a local sink, so
every run ends ``delivered`` (or is refused) within the command.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from _cli import clean_env, run_cli
from _factories import make_run, store_schedule
from _sinks import Sink, serve
from firecron.core.runs import Run, RunState, RunTrigger, scheduled_run_id
from firecron.store.sqlite import SQLiteStore

HOUR = timedelta(hours=1)
ENV = clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "true"})


@pytest.fixture
def sink() -> Iterator[Sink]:
    with serve() as running:
        yield running


class Db:
    """A SQLite store file the commands and the test share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    async def put(self, now: datetime, **fields: Any) -> None:
        store = SQLiteStore(self.path)
        try:
            await store_schedule(store, now, **fields)
        finally:
            await store.close()

    async def add_run(self, run: Run) -> None:
        store = SQLiteStore(self.path)
        try:
            assert await store.create_run(run) is not None
        finally:
            await store.close()

    async def runs(self, schedule_id: str) -> list[Run]:
        store = SQLiteStore(self.path)
        try:
            return await store.list_runs(schedule_id=schedule_id, limit=100)
        finally:
            await store.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--store", self.url, env=ENV)


@pytest.fixture
def db(tmp_path: Path) -> Db:
    return Db(tmp_path / "ops.db")


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _refused(proc: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2 with exactly ``error: LINE`` on stderr and nothing on stdout."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == f"error: {line}\n"
    assert proc.stdout == ""


def _z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def test_backfill_dry_run_then_run_then_resume(db: Db, sink: Sink) -> None:
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)
    await db.put(now, id="hourly", cron="0 * * * *", target={"url": sink.url + "/h"})
    start, end = _z(top - 4 * HOUR), _z(top - 2 * HOUR)
    out = _ok(db.cli("backfill", "hourly", "--from", start, "--to", end, "--dry-run"))
    assert out == (
        f"backfill hourly: 3 occurrences from {start} to {end}: 3 to create, 0 existing"
        " (dry run: nothing written)\n"
    )
    assert sink.received == 0
    out = _ok(db.cli("backfill", "hourly", "--from", start, "--to", end))
    assert out == f"backfill hourly: 3 occurrences from {start} to {end}: 3 created, 0 existing\n"
    assert sink.received == 3
    wider = db.cli("backfill", "hourly", "--from", _z(top - 5 * HOUR), "--to", end, "--json")
    data = json.loads(_ok(wider))
    assert data["created"] == [scheduled_run_id("hourly", top - 5 * HOUR)]
    assert data["existing"] == [scheduled_run_id("hourly", top - k * HOUR) for k in (4, 3, 2)]
    assert set(data["existing_states"].values()) == {"delivered"}
    assert data["from"] == _z(top - 5 * HOUR)
    runs = await db.runs("hourly")
    assert len(runs) == 4
    assert {r.trigger for r in runs} == {RunTrigger.backfill}


async def test_backfill_reads_dates_in_the_schedule_zone(db: Db, sink: Sink) -> None:
    now = datetime.now(UTC)
    await db.put(
        now,
        id="daily",
        cron="0 2 * * *",
        timezone="Europe/Berlin",
        start_at=now - timedelta(days=30),
        target={"url": sink.url},
    )
    # Three whole days in Berlin, well in the past: CET (UTC+1) in winter, CEST in summer.
    first = (now - timedelta(days=10)).date()
    last = first + timedelta(days=2)
    out = _ok(db.cli("backfill", "daily", "--from", str(first), "--to", str(last), "--json"))
    data = json.loads(out)
    berlin = ZoneInfo("Europe/Berlin")
    midnight = datetime.combine(first, time(0), berlin)
    end = datetime.combine(last + timedelta(days=1), time(0), berlin) - timedelta(microseconds=1)
    assert data["from"] == _z(midnight.astimezone(UTC))
    assert data["to"] == _z(end.astimezone(UTC))
    assert data["planned"] == [
        _z(datetime.combine(first + timedelta(days=k), time(2), berlin).astimezone(UTC))
        for k in range(3)
    ]
    assert len(data["created"]) == 3


async def test_backfill_refusals_exit_2_with_one_line(db: Db) -> None:
    now = datetime.now(UTC)
    await db.put(
        now, id="often", every="1s", start_at=now - 5 * HOUR, target={"url": "https://e.x"}
    )
    await db.put(now, id="adhoc", target={"url": "https://e.x"})
    _refused(
        db.cli("backfill", "often", "--from", "2026-11-02", "--to", "2026-11-01"),
        "--to 2026-11-01 is before --from 2026-11-02",
    )
    proc = db.cli("backfill", "often", "--from", _z(now - 4 * HOUR), "--to", _z(now - HOUR))
    assert proc.returncode == 2
    assert "holds more than 10,000 occurrences" in proc.stderr
    assert proc.stderr.count("\n") == 1
    _refused(
        db.cli("backfill", "adhoc", "--from", "2026-11-01", "--to", "2026-11-02"),
        "schedule 'adhoc' is on demand: it has no occurrences to backfill",
    )
    _refused(
        db.cli("backfill", "nope", "--from", "2026-11-01", "--to", "2026-11-02"),
        "unknown schedule 'nope'",
    )
    proc = db.cli("backfill", "often", "--from", "2026-11-31", "--to", "2026-12-01")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --from: invalid date '2026-11-31'")
    assert await db.runs("often") == []


async def test_cancel_prints_the_end_and_refuses_an_ended_run(db: Db) -> None:
    now = datetime.now(UTC)
    await db.add_run(make_run("job", now, state=RunState.queued, run_id="job@q", blocked_by="x"))
    assert _ok(db.cli("cancel", "job@q", "--reason", "not today")) == "job@q: cancelled\n"
    _refused(db.cli("cancel", "job@q"), "run job@q already ended (cancelled)")
    _refused(db.cli("cancel", "job@nope"), "unknown run 'job@nope'")
    [run] = await db.runs("job")
    assert run.error == "not today"


async def test_rerun_prints_the_new_run_and_exits_1_when_it_cannot_be_sent(
    db: Db, sink: Sink
) -> None:
    now = datetime.now(UTC)
    await db.put(now, id="hook", target={"url": sink.url + "/hook"}, params={"a": 1})
    await db.add_run(
        make_run("hook", now, state=RunState.delivered, run_id="hook@old", params={"a": 1, "b": 2})
    )
    proc = db.cli("rerun", "hook@old", "--param", "b=3", "--json")
    data = json.loads(_ok(proc))
    assert data["params"] == {"a": 1, "b": 3}
    assert data["cause_run_id"] == "hook@old"
    assert data["state"] == "delivered"
    assert sink.received == 1
    with serve(status=400) as bad:
        await db.put(now, id="refused", target={"url": bad.url})
        await db.add_run(make_run("refused", now, state=RunState.failed, run_id="refused@old"))
        proc = db.cli("rerun", "refused@old")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: run refused@m")
    assert "could not be sent" in proc.stderr
    _refused(db.cli("rerun", "hook@nope"), "unknown run 'hook@nope'")


async def test_rerun_from_a_task_of_a_pipeline_run(db: Db, sink: Sink) -> None:
    now = datetime.now(UTC)
    url = sink.url
    await db.put(
        now,
        id="etl",
        pipeline={
            "id": "two",
            "tasks": [
                {"id": "extract", "target": {"url": f"{url}/extract"}},
                {"id": "load", "target": {"url": f"{url}/load"}, "after": ["extract"]},
            ],
        },
    )
    old = json.loads(_ok(run_cli("trigger", "etl", "--json", "--store", db.url, env=ENV)))
    assert old["state"] == "succeeded"
    proc = db.cli("rerun", old["id"], "--from", "load")
    new_id = _ok(proc).strip()
    assert proc.stderr == "state: succeeded\n"
    assert [r.path for r in sink.requests] == ["/extract", "/load", "/load"]
    [new] = [r for r in await db.runs("etl") if r.id == new_id]
    assert new.cause_run_id == old["id"]
    _refused(
        db.cli("rerun", old["id"], "--from", "nope"),
        "from_task: pipeline 'two' has no task 'nope' (its tasks: extract, load)",
    )


@pytest.mark.parametrize("command", ["cancel", "rerun", "backfill"])
def test_help_explains_with_examples(command: str) -> None:
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    assert "Example" in proc.stdout
    assert f"firecron {command} " in proc.stdout
