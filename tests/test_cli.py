"""The real ``firecron`` command in a subprocess: output, exit codes, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _cli import FIRECRON, clean_env, run_cli
from _poll import poll

GOOD = """\
schedules:
  - id: hello
    every: 10s
    target: {function: hello}
    params: {name: firecron}
  - id: nightly
    description: Nightly report
    cron: "30 2 * * *"
    timezone: Europe/Berlin
    target: {url: "https://example.com/hook"}
"""


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=clean_env(env))


def assert_user_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def list_json(store_url: str) -> list[dict[str, Any]]:
    """The schedules of ``firecron list --json`` (one page: these tests store a few)."""
    listed = json.loads(run("list", "--json", "--store", store_url).stdout)
    assert listed["next_after"] is None
    schedules: list[dict[str, Any]] = listed["schedules"]
    return schedules


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(GOOD)
    return path


@pytest.mark.parametrize(
    ("spec", "tz", "after", "expected"),
    [
        # Fixed-time job in the spring gap: once, at the first instant after the gap.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2027-03-27T12:00:00Z",
            ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            "2027-03-13T12:00:00Z",
            ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"],
        ),
        # Fixed-time job in the repeated hour: once, at the first occurrence.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2027-10-30T12:00:00Z",
            ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2027-11-06T12:00:00Z",
            ["2027-11-07T01:30:00-04:00", "2027-11-08T01:30:00-05:00"],
        ),
        # Wildcard job: the gap is not run, the repeated hour runs again.
        (
            "30 * * * *",
            "Europe/Berlin",
            "2027-03-28T00:00:00Z",
            ["2027-03-28T01:30:00+01:00", "2027-03-28T03:30:00+02:00"],
        ),
        (
            "30 * * * *",
            "America/New_York",
            "2027-11-07T05:00:00Z",
            ["2027-11-07T01:30:00-04:00", "2027-11-07T01:30:00-05:00"],
        ),
    ],
)
def test_next_follows_the_dst_rules(spec: str, tz: str, after: str, expected: list[str]) -> None:
    proc = run("next", spec, "--tz", tz, "--after", after, "-n", str(len(expected)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected


def test_next_json() -> None:
    proc = run("next", "every 15m", "--after", "2027-01-01T00:07:00Z", "-n", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"utc": "2027-01-01T00:15:00Z", "local": "2027-01-01T00:15:00+00:00"},
        {"utc": "2027-01-01T00:30:00Z", "local": "2027-01-01T00:30:00+00:00"},
    ]


def test_next_at_and_macros() -> None:
    proc = run("next", "at 2027-06-01T12:00:00+02:00", "--after", "2027-01-01T00:00:00Z", "-n", "3")
    assert proc.stdout.split() == ["2027-06-01T10:00:00+00:00"]
    proc = run(
        "next", "@daily", "--tz", "Europe/Berlin", "--after", "2027-01-01T00:00:00Z", "-n", "1"
    )
    assert proc.stdout.split() == ["2027-01-02T00:00:00+01:00"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["next", "61 * * * *"], "61"),
        (["next", "* * *"], "SPEC"),
        (["next", "every 10 parsecs"], "SPEC"),
        (["next", "@fortnightly"], "@fortnightly"),
        (["next", "0 * * * *", "--tz", "Mars/Olympus"], "Mars/Olympus"),
        (["next", "0 * * * *", "--after", "yesterday"], "--after"),
        (["next", "0 * * * *", "-n", "0"], "-n"),
        (["bogus"], "No such command"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], fragment: str) -> None:
    assert_user_error(run(*args), fragment)


def test_validate(good_file: Path, tmp_path: Path) -> None:
    proc = run("validate", str(good_file))
    assert proc.returncode == 0
    assert "2 schedules" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.replace('"30 2 * * *"', '"30 25 * * *"').replace("every: 10s", "every: 10x")
    )
    proc = run("validate", str(bad))
    assert_user_error(proc, "schedules[1] (id=nightly): cron:")
    assert "schedules[0] (id=hello): every: invalid duration '10x'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2
    assert_user_error(run("validate", str(tmp_path / "missing.yaml")), "no such file")


def test_apply_plan_lines_idempotence_and_prune(
    good_file: Path, store_url: str, tmp_path: Path
) -> None:
    proc = run("apply", str(good_file), "--dry-run", "--store", store_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["+ hello", "+ nightly"]
    assert list_json(store_url) == []

    assert run("apply", str(good_file), "--store", store_url).returncode == 0
    before = {s["id"]: s for s in list_json(store_url)}
    assert set(before) == {"hello", "nightly"}

    proc = run("apply", str(good_file), "--store", store_url)
    assert proc.stdout.splitlines()[:2] == ["= hello", "= nightly"]
    after = {s["id"]: s for s in list_json(store_url)}
    assert after == before  # next fire times and counters kept

    changed = tmp_path / "changed.yaml"
    changed.write_text(GOOD.split("  - id: nightly")[0].replace("name: firecron", "name: you"))
    proc = run("apply", str(changed), "--store", store_url)
    assert proc.stdout.splitlines()[0] == "~ hello  (params)"
    assert "- nightly" not in proc.stdout
    proc = run("apply", str(changed), "--prune", "--store", store_url)
    assert "- nightly" in proc.stdout.splitlines()
    assert [s["id"] for s in list_json(store_url)] == ["hello"]


def test_apply_writes_nothing_when_any_entry_is_invalid(
    good_file: Path, store_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "  - id: broken\n    every: 1m\n    target: {url: ftp://x}\n")
    assert_user_error(
        run("apply", str(bad), "--store", store_url), "schedules[2] (id=broken): target"
    )
    # Not even an empty store was created (and `list` does not create one).
    assert_user_error(run("list", "--json", "--store", store_url), "no store at")


def test_show(good_file: Path, store_url: str) -> None:
    run("apply", str(good_file), "--store", store_url)
    proc = run("show", "nightly", "--json", "--store", store_url)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["spec"]["cron"] == "30 2 * * *"
    assert data["status"] == "active"
    assert len(data["next"]) == 5
    assert all(
        n["local"].endswith(("+01:00", "+02:00")) and "T02:30:00" in n["local"]
        for n in data["next"]
    )
    assert "02:30" in data["description_of_trigger"]
    table_out = run("show", "nightly", "--store", store_url).stdout
    assert "Nightly report" in table_out
    assert "Next fire times" in table_out
    assert_user_error(run("show", "nope", "--store", store_url), "unknown schedule 'nope'")


def test_store_errors(tmp_path: Path) -> None:
    assert_user_error(run("list", "--store", "postgres://x"), "invalid store URL")
    (tmp_path / "dir.db").mkdir()
    proc = run("list", "--store", f"sqlite:///{tmp_path / 'dir.db'}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_bad_environment_is_a_user_error() -> None:
    assert_user_error(run("list", env={"FIRECRON_CONCURRENCY": "many"}), "FIRECRON_CONCURRENCY")


def test_default_store_is_under_dot_firecron(tmp_path: Path, good_file: Path) -> None:
    assert run("apply", str(good_file), cwd=tmp_path).returncode == 0
    assert (tmp_path / ".firecron" / "firecron.db").exists()


def test_every_command_has_help_with_an_example() -> None:
    top = run("--help")
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].strip().splitlines()]
    assert {
        "next",
        "validate",
        "apply",
        "list",
        "show",
        "pause",
        "resume",
        "delete",
        "trigger",
        "runs",
        "run",
        "tick",
        "dev",
        "pipelines",
        "graph",
        "state",
    } <= set(commands)
    for command in commands:
        proc = run(command, "--help")
        assert proc.returncode == 0
        assert "Example" in proc.stdout, command


def test_pause_resume_delete(good_file: Path, store_url: str) -> None:
    run("apply", str(good_file), "--store", store_url)
    proc = run("pause", "hello", "--json", "--store", store_url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "paused"
    assert json.loads(proc.stdout)["next_fire_at"] is None
    # Re-applying the file keeps the pause.
    run("apply", str(good_file), "--store", store_url)
    listed = {s["id"]: s for s in list_json(store_url)}
    assert listed["hello"]["status"] == "paused"
    resumed = json.loads(run("resume", "hello", "--json", "--store", store_url).stdout)
    assert resumed["status"] == "active"
    assert resumed["next_fire_at"] is not None
    assert run("delete", "nightly", "--store", store_url).stdout.strip() == "deleted nightly"
    assert_user_error(run("delete", "nightly", "--store", store_url), "unknown schedule 'nightly'")
    assert_user_error(run("pause", "nope", "--store", store_url), "unknown schedule 'nope'")


def test_apply_json(good_file: Path, store_url: str) -> None:
    proc = run("apply", str(good_file), "--json", "--store", store_url)
    assert json.loads(proc.stdout) == {
        "created": ["hello", "nightly"],
        "updated": [],
        "unchanged": [],
        "deleted": [],
        "changed_fields": {},
        "dry_run": False,
    }


def test_shell_completion_uses_clicks_mechanism() -> None:
    proc = run(env={"_FIRECRON_COMPLETE": "bash_source"})
    assert proc.returncode == 0
    assert "_firecron_completion" in proc.stdout
    proc = subprocess.run(
        [FIRECRON],
        env={
            **os.environ,
            "_FIRECRON_COMPLETE": "bash_complete",
            "COMP_WORDS": "firecron pa",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert "pause" in proc.stdout


def test_events_and_run_show_recorded_events(tmp_path: Path) -> None:
    import asyncio

    from _factories import T0, make_run
    from firecron.core.events import EventType, Route, WebhookSink
    from firecron.core.lifecycle import make_event
    from firecron.core.runs import RunState
    from firecron.store import open_store

    url = f"sqlite:///{tmp_path / 'ev.db'}"
    hook = Route(
        sink_name="ops",
        types=(),
        sink=WebhookSink(type="webhook", url="https://hooks.example.com/x"),
    )
    failed_run = make_run(
        "evjob", T0, state=RunState.failed, error="RuntimeError: boom", notify=[hook]
    )
    failed = make_event(failed_run, EventType.run_failed, T0, failed_run.notify)
    skipped = make_event(
        make_run("other", T0, state=RunState.skipped), EventType.run_skipped, T0, []
    )
    other = make_run("other", T0, state=RunState.skipped, events=[skipped])

    async def seed() -> None:
        store = open_store(url)
        await store.create_run(failed_run.model_copy(update={"events": [failed]}))
        await store.create_run(other)
        await store.close()

    asyncio.run(seed())
    listed = json.loads(run_("events", "--json", "--store", url))
    assert {e["type"] for e in listed} == {"dev.firecron.run.failed", "dev.firecron.run.skipped"}
    only = json.loads(run_("events", "--json", "--type", "run.failed", "--store", url))
    assert [e["id"] for e in only] == [failed.id]
    assert only[0]["deliveries"][0]["sink"] == "ops"
    assert only[0]["deliveries"][0]["state"] == "pending"
    shown = run("run", failed_run.id, "--store", url)
    assert "Events" in shown.stdout
    assert "run.failed" in shown.stdout
    assert "ops: pending" in shown.stdout


def run_(*args: str) -> str:
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_tick_takes_one_shard(good_file: Path, store_url: str) -> None:
    run("apply", str(good_file), "--store", store_url)
    for index in range(2):
        proc = run("tick", "--shard", f"{index}/2", "--json", "--store", store_url)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["shard"] == f"{index}/2"
    plain = run("tick", "--store", store_url)
    assert plain.returncode == 0, plain.stderr
    assert "shard" not in plain.stdout
    assert "; shard 1/3" in run("tick", "--shard", "1/3", "--store", store_url).stdout
    assert_user_error(
        run("tick", "--shard", "2/2", "--store", store_url), "shard: index must be 0 to 1, got 2"
    )
    assert_user_error(
        run("tick", "--shard", "x", "--store", store_url),
        "shard: expected I/N (such as 0/4), got 'x'",
    )


def test_tick_json_prints_one_json_document_even_when_runs_emit_events(
    tmp_path: Path, store_url: str
) -> None:
    # Due every second, at a loopback port where nothing listens: each send fails, and a
    # plain tick logs its event on stdout (where Cloud Logging reads it).
    schedules = tmp_path / "due.yaml"
    schedules.write_text(
        "schedules:\n"
        "  - id: doomed\n"
        "    cron: '* * * * * *'\n"
        "    target: {url: 'https://127.0.0.1:9/hook'}\n"
    )
    private = {"FIRECRON_ALLOW_PRIVATE_TARGETS": "1"}
    assert run("apply", str(schedules), "--store", store_url, env=private).returncode == 0

    def tick() -> dict[str, Any]:
        proc = run("tick", "--json", "--store", store_url, env=private)
        summary: dict[str, Any] = json.loads(proc.stdout)  # the whole of stdout
        return summary

    summary = poll(tick, lambda s: s["fired"] + s["claimed"] >= 1, what="a tick that fired")
    assert summary["events"], summary
