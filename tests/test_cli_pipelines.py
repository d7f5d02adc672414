"""``firecron pipelines``, ``graph``, and ``run``/``runs`` on pipeline and task runs: the real
command in a subprocess, on a SQLite store seeded with real records."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _cli import clean_env, run_cli
from _factories import T0, make_run, make_spec
from firecron import admin
from firecron.core.models import PipelineSpec, Target
from firecron.core.pipeline_graph import render_mermaid, render_text
from firecron.core.pipelines import build_task_runs
from firecron.core.runs import Attempt, Run, RunState, RunTrigger, task_run_id
from firecron.store import open_store

ETL = PipelineSpec.model_validate(
    {
        "id": "etl",
        "description": "Nightly ETL",
        "max_parallel": 2,
        "timeout": "1h",
        "tasks": [
            {"id": "extract_a", "target": {"function": "extract"}},
            {"id": "extract_b", "target": {"function": "extract"}},
            {"id": "join", "target": {"function": "join"}, "after": ["extract_a", "extract_b"]},
            {
                "id": "load",
                "target": {"url": "https://example.com/load"},
                "after": ["join"],
                "if": "params.full",
            },
            {
                "id": "alert",
                "notify": {"sink": "ops", "text": "etl {pipeline_run_id} failed"},
                "after": ["load"],
                "when": "any_failed",
            },
        ],
    }
)
PIPELINE_RUN = "etl-nightly@20270101T000000Z"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=clean_env())


def ok(*args: str) -> str:
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def _pipeline_run() -> Run:
    return make_run(
        "etl-nightly",
        T0,
        state=RunState.running,
        target=Target(pipeline="etl"),
        pipeline="etl",
        pipeline_spec=ETL,
        params={"full": True},
        started_at=T0,
        attempts=[Attempt(number=1, started_at=T0)],
    )


def _task_runs(pipeline_run: Run) -> list[Run]:
    """The task runs as they stand mid-way: one extract done, the other on its second try."""
    runs, _, _ = build_task_runs(pipeline_run, T0, pending_grace=timedelta(minutes=1))
    by_task = {r.task: r for r in runs}
    by_task["extract_a"] = by_task["extract_a"].model_copy(
        update={
            "state": RunState.succeeded,
            "started_at": T0 + timedelta(seconds=1),
            "ended_at": T0 + timedelta(seconds=13),
            "attempts": [Attempt(number=1, started_at=T0 + timedelta(seconds=1))],
            "output": {"rows": 10},
            "watch_at": None,
            "deadline_at": None,
        }
    )
    by_task["extract_b"] = by_task["extract_b"].model_copy(
        update={
            "state": RunState.running,
            "attempt": 2,
            "started_at": T0 + timedelta(seconds=30),
            "attempts": [Attempt(number=1), Attempt(number=2)],
            "error": "RuntimeError: flaky",
        }
    )
    return list(by_task.values())


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with two schedules running ``etl``, a plain one, and a pipeline run."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pipelines') / 'firecron.db'}"
    nightly = make_spec(
        "etl-nightly", every=None, cron="0 2 * * *", target={"pipeline": "etl"}, pipeline_spec=ETL
    )
    adhoc = make_spec("etl-adhoc", every=None, target={"pipeline": "etl"}, pipeline_spec=ETL)
    hello = make_spec("hello", target={"function": "hello"})
    pipeline_run = _pipeline_run()
    chained = make_run(
        "hello",
        T0 + timedelta(minutes=1),
        run_id="hello@cabc",
        trigger=RunTrigger.chained,
        target=Target(function="hello"),
        cause_run_id=PIPELINE_RUN,
    )

    async def seed() -> None:
        store = open_store(url)
        try:
            await admin.apply_schedules(
                store, [nightly, adhoc, hello], T0, prune=False, dry_run=False
            )
            for r in [pipeline_run, *_task_runs(pipeline_run), chained]:
                assert await store.create_run(r) is not None
        finally:
            await store.close()

    asyncio.run(seed())
    return url


# -- pipelines -----------------------------------------------------------------------


def test_pipelines_json_lists_each_pipeline_once_with_its_schedules(store_url: str) -> None:
    assert json.loads(ok("pipelines", "--json", "--store", store_url)) == [
        {
            "id": "etl",
            "description": "Nightly ETL",
            "task_count": 5,
            "tasks": ["extract_a", "extract_b", "join", "load", "alert"],
            "max_parallel": 2,
            "timeout": "1h",
            "schedules": ["etl-adhoc", "etl-nightly"],
        }
    ]


def test_pipelines_table(store_url: str) -> None:
    lines = ok("pipelines", "--store", store_url).splitlines()
    assert lines[0].split() == [
        "ID",
        "TASKS",
        "MAX",
        "PARALLEL",
        "TIMEOUT",
        "SCHEDULES",
        "DESCRIPTION",
    ]
    assert lines[1].split() == [
        "etl",
        "5",
        "2",
        "1h",
        "etl-adhoc,",
        "etl-nightly",
        "Nightly",
        "ETL",
    ]


def test_pipelines_of_a_store_without_any(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    async def seed() -> None:
        store = open_store(url)
        await admin.apply_schedules(store, [make_spec("hello")], T0, prune=False, dry_run=False)
        await store.close()

    asyncio.run(seed())
    assert ok("pipelines", "--json", "--store", url) == "[]\n"
    assert ok("pipelines", "--store", url).startswith("no pipelines")


def test_pipelines_pages_through_every_schedule(tmp_path: Path) -> None:
    # More schedules than one page (1000): the pipeline's only schedule comes last.
    url = f"sqlite:///{tmp_path / 'many.db'}"
    specs = [make_spec(f"s{n:04d}") for n in range(1000)]
    specs.append(make_spec("zz-etl", every=None, target={"pipeline": "etl"}, pipeline_spec=ETL))

    async def seed() -> None:
        store = open_store(url)
        await admin.apply_schedules(store, specs, T0, prune=False, dry_run=False)
        await store.close()

    asyncio.run(seed())
    [listed] = json.loads(ok("pipelines", "--json", "--store", url))
    assert listed["schedules"] == ["zz-etl"]


# -- graph ---------------------------------------------------------------------------


def test_graph_text_and_mermaid(store_url: str) -> None:
    assert ok("graph", "etl", "--store", store_url) == render_text(ETL)
    assert ok("graph", "etl", "--format", "mermaid", "--store", store_url) == render_mermaid(ETL)


def test_graph_of_an_unknown_pipeline_exits_2_with_one_line(store_url: str) -> None:
    proc = run("graph", "nope", "--store", store_url)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: unknown pipeline 'nope' in the store"]
    assert proc.stdout == ""
    proc = run("graph", "etl", "--format", "svg", "--store", store_url)
    assert proc.returncode == 2
    assert "'svg' is not one of 'text', 'mermaid'" in proc.stderr


@pytest.mark.parametrize("args", [["pipelines"], ["graph", "etl"]], ids=lambda a: a[0])
def test_read_only_pipeline_commands_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "none.db"
    proc = run(*args, "--store", f"sqlite:///{path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: no store at {path}: the file does not exist (firecron apply creates it)"
    ]
    assert not path.exists()


# -- run and runs --------------------------------------------------------------------


def test_run_json_of_a_pipeline_run_has_its_tasks(store_url: str) -> None:
    shown = json.loads(ok("run", PIPELINE_RUN, "--json", "--store", store_url))
    assert shown["id"] == PIPELINE_RUN
    assert shown["pipeline"] == "etl"
    tasks: dict[str, Any] = shown["tasks"]
    assert list(tasks) == ["extract_a", "extract_b", "join", "load", "alert"]
    assert tasks["extract_a"] == {
        "state": "succeeded",
        "run_id": task_run_id(PIPELINE_RUN, "extract_a"),
        "attempt": 1,
        "started_at": "2027-01-01T00:00:01Z",
        "ended_at": "2027-01-01T00:00:13Z",
        "error": None,
    }
    assert tasks["extract_b"]["state"] == "running"
    assert tasks["extract_b"]["attempt"] == 2
    assert tasks["extract_b"]["ended_at"] is None
    # Not sent yet: no attempt to count.
    assert tasks["join"] == {
        "state": "waiting",
        "run_id": task_run_id(PIPELINE_RUN, "join"),
        "attempt": None,
        "started_at": None,
        "ended_at": None,
        "error": None,
    }


def test_run_of_a_pipeline_run_shows_its_task_tree(store_url: str) -> None:
    out = ok("run", PIPELINE_RUN, "--store", store_url)
    assert "pipeline:etl" in out
    lines = [line.rstrip() for line in out.splitlines()]
    start = lines.index("Tasks (etl)")
    header, *rows = lines[start + 1 : start + 7]
    assert header.split() == ["TASK", "STATE", "ATTEMPT", "DURATION", "ERROR"]
    # Indented by depth: the text before each task id is its depth in spaces.
    indents = {row.split()[0]: len(row) - len(row.lstrip()) for row in rows}
    assert indents == {"extract_a": 0, "extract_b": 0, "join": 2, "load": 4, "alert": 6}
    assert rows[0].split() == ["extract_a", "succeeded", "1/3", "12s", "-"]
    assert rows[1].split()[:3] == ["extract_b", "running", "2/3"]
    assert rows[1].endswith("RuntimeError: flaky")
    assert rows[4].split() == ["alert", "waiting", "-", "-", "-"]


def test_run_of_a_task_run_names_its_pipeline(store_url: str) -> None:
    out = ok("run", task_run_id(PIPELINE_RUN, "alert"), "--store", store_url)
    fields = {line.split(maxsplit=1)[0]: line for line in out.splitlines() if line.strip()}
    assert fields["target"].split() == ["target", "notify:ops"]
    assert fields["task"].split() == ["task", "alert"]
    assert "pipeline run" in out
    assert PIPELINE_RUN in out
    # Its cause is its pipeline run, already shown as such.
    assert "caused by" not in out
    assert "Tasks (" not in out


def test_run_of_a_chained_run_names_its_cause(store_url: str) -> None:
    out = ok("run", "hello@cabc", "--store", store_url)
    caused = [line for line in out.splitlines() if line.startswith("caused by")]
    assert [line.split()[-1] for line in caused] == [PIPELINE_RUN]


def test_runs_json_items_carry_the_orchestration_fields(store_url: str) -> None:
    listed = json.loads(ok("runs", "--json", "--limit", "50", "--store", store_url))
    by_id = {r["id"]: r for r in listed}
    keys = {"trigger", "pipeline", "task", "parent_run_id", "cause_run_id"}
    assert all(keys <= set(r) for r in listed)
    task = by_id[task_run_id(PIPELINE_RUN, "join")]
    assert {k: task[k] for k in keys} == {
        "trigger": "pipeline",
        "pipeline": "etl",
        "task": "join",
        "parent_run_id": PIPELINE_RUN,
        "cause_run_id": PIPELINE_RUN,
    }
    assert by_id["hello@cabc"]["trigger"] == "chained"
    assert by_id["hello@cabc"]["cause_run_id"] == PIPELINE_RUN
    assert by_id[PIPELINE_RUN]["pipeline"] == "etl"
    assert by_id[PIPELINE_RUN]["task"] is None


def test_runs_table_describes_every_kind_of_target(store_url: str) -> None:
    out = ok("runs", "--limit", "50", "--store", store_url)
    targets = {line.split()[0]: line.split()[3] for line in out.splitlines()[1:]}
    assert targets[PIPELINE_RUN] == "pipeline:etl"
    assert targets[task_run_id(PIPELINE_RUN, "alert")] == "notify:ops"
    assert targets[task_run_id(PIPELINE_RUN, "load")] == "https://example.com/load"
    assert targets[task_run_id(PIPELINE_RUN, "join")] == "function:join"


def test_list_and_show_describe_a_pipeline_target(store_url: str) -> None:
    listed = json.loads(ok("list", "--json", "--store", store_url))["schedules"]
    assert {s["id"]: s["target"] for s in listed} == {
        "etl-adhoc": "pipeline:etl",
        "etl-nightly": "pipeline:etl",
        "hello": "function:hello",
    }
    shown = ok("show", "etl-nightly", "--store", store_url)
    [target] = [line for line in shown.splitlines() if line.startswith("target")]
    # No auth: a pipeline is not a POST.
    assert target.split() == ["target", "pipeline:etl"]
    shown = ok("show", "hello", "--store", store_url)
    [target] = [line for line in shown.splitlines() if line.startswith("target")]
    assert target.split() == ["target", "function:hello", "(auth:", "default)"]


# -- from a schedules file -----------------------------------------------------------

FILE = """\
notifications:
  sinks:
    ops: {type: log}
pipelines:
  - id: etl
    description: Nightly ETL
    max_parallel: 2
    timeout: 1h
    tasks:
      - {id: extract_a, target: {function: extract}}
      - {id: extract_b, target: {function: extract}}
      - {id: join, target: {function: join}, after: [extract_a, extract_b]}
      - {id: load, target: {url: "https://example.com/load"}, after: [join], if: "params.full"}
      - id: alert
        notify: {sink: ops, text: "etl {pipeline_run_id} failed"}
        after: [load]
        when: any_failed
  - id: spare
    tasks:
      - {id: only, target: {function: hello}}
schedules:
  - id: etl-nightly
    cron: "0 2 * * *"
    target: {pipeline: etl}
"""


@pytest.fixture
def schedules_file(tmp_path: Path) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(FILE)
    return path


def test_pipelines_of_a_file_include_those_no_schedule_targets(
    schedules_file: Path, tmp_path: Path
) -> None:
    listed = json.loads(ok("pipelines", "--file", str(schedules_file), "--json"))
    assert [(p["id"], p["schedules"], p["task_count"]) for p in listed] == [
        ("etl", ["etl-nightly"], 5),
        ("spare", [], 1),
    ]
    # The file is read, the store never opened (none exists here).
    assert not (tmp_path / ".firecron").exists()


def test_graph_of_a_file(schedules_file: Path) -> None:
    # The file's etl is ETL, written as YAML (plus its notify sink's resolved config).
    assert ok("graph", "etl", "--file", str(schedules_file)) == render_text(ETL)
    mermaid = ok("graph", "etl", "--format", "mermaid", "--file", str(schedules_file))
    assert mermaid == render_mermaid(ETL)
    assert ok("graph", "spare", "--file", str(schedules_file)).splitlines() == [
        "spare: 1 task",
        "  only  function:hello",
    ]
    proc = run("graph", "nope", "--file", str(schedules_file))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: unknown pipeline 'nope' in {schedules_file}"]


def test_pipelines_of_an_invalid_file_exit_2_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(FILE.replace("after: [join]", "after: [ghost]"))
    for args in (["pipelines"], ["graph", "etl"]):
        proc = run(*args, "--file", str(path))
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1
        assert "ghost" in proc.stderr
