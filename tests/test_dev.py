"""``firecron dev`` as a user runs it: a subprocess, real workers, real ticks, SIGTERM.

Covered: scheduled runs succeed and fail as they should and SIGTERM stops it cleanly;
a taken port and a source that does not load are one line each (exit 2); the piped
view does not print again, after a restart, the runs the last start printed; a
running stack serves a worker added to its source file (reload), surviving an edit
that breaks the file; and the view shows a pipeline run as one line with its tasks'
states (on a seeded store), never its task runs.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from _devstack import FIRECRON, clean_env, dev_stack, firecron, poll, runs
from _factories import T0, make_run
from firecron.core.models import PipelineSpec, Target, WaitSpec
from firecron.core.pipelines import build_task_runs
from firecron.core.runs import Run, RunState
from firecron.dev import DevStack, Recent, recent_runs, state_text, task_states, waiting_runs
from firecron.settings import Settings
from firecron.store import open_store

ROOT = Path(__file__).resolve().parents[1]

SCHEDULES = """\
schedules:
  - id: hello-fast
    every: 1s
    target: {function: hello}
    params: {name: dev}
  - id: failing
    every: 3s
    target: {function: fail}
    retry: {max_attempts: 2, backoff: 1s}
"""


def test_dev_runs_workers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "schedules.yaml").write_text(SCHEDULES)
    with dev_stack(tmp_path, "--schedules", "schedules.yaml") as dev:

        def both() -> list[dict[str, object]]:
            seen = runs(tmp_path)  # from the default store, as the README says
            succeeded = [
                r for r in seen if r["schedule_id"] == "hello-fast" and r["state"] == "succeeded"
            ]
            failed = [r for r in seen if r["schedule_id"] == "failing" and r["state"] == "failed"]
            return failed if succeeded else []

        failed = poll(both, what="hello-fast succeeded and failing failed", dev=dev)
        assert failed[0]["attempt"] == 2
        code = dev.stop()
    output = dev.output()
    assert code == 0, output
    assert "hello-fast@" in output
    assert "succeeded" in output  # plain log lines when stdout is not a terminal
    assert "firecron dev: stopped" in output
    assert "Traceback" not in output


def test_dev_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [FIRECRON, "dev", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert f"port {port} is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import firecron\n\n\ndef broken(:\n    pass\n", r"bad\.py:4: SyntaxError: "),
        (
            "import firecron\n\nx = 1\nraise RuntimeError('boom')\n",
            r"bad\.py:4: .*RuntimeError: boom",
        ),
    ],
    ids=["syntax-error", "raises-on-import"],
)
def test_a_source_that_does_not_load_is_one_line(
    tmp_path: Path, source: str, expected: str
) -> None:
    (tmp_path / "bad.py").write_text(source)
    proc = firecron(tmp_path, "dev", "--source", "bad.py", "--port", "1", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / ".firecron").exists()  # nothing was started or created


def test_a_restart_does_not_print_old_runs_again(tmp_path: Path) -> None:
    (tmp_path / "schedules.yaml").write_text(SCHEDULES.split("  - id: failing")[0])

    def succeeded() -> list[str]:
        return [r["id"] for r in runs(tmp_path, "hello-fast") if r["state"] == "succeeded"]

    with dev_stack(tmp_path, "--schedules", "schedules.yaml") as first:
        poll(lambda: len(succeeded()) >= 3, what="three hello-fast runs succeeded", dev=first)
        assert first.stop() == 0
    # Finished before the restart: nothing can change them any more. (A run in flight at
    # the stop may rightly be printed again, when the watchdog recovers it.)
    old = set(succeeded())

    with dev_stack(tmp_path) as second:
        poll(
            lambda: any(f"{r} succeeded" in second.output() for r in set(succeeded()) - old),
            what="a run made after the restart was printed",
            dev=second,
        )
        assert second.stop() == 0
    printed = second.output()
    assert not [run_id for run_id in old if run_id in printed], printed


WORD_COUNT = '''

@firecron.worker
def word_count(ctx: firecron.RunContext) -> dict[str, int]:
    """Counts the words of params["text"]."""
    return {"words": len(str(ctx.params.get("text", "")).split())}
'''

COUNT_WORDS = """\
schedules:
  - id: count-words
    every: 1s
    target: {function: word_count}
    params: {text: "one two three"}
"""


def test_a_running_stack_serves_a_worker_added_to_its_source(tmp_path: Path) -> None:
    source = tmp_path / "functions" / "main.py"
    source.parent.mkdir()
    shutil.copy(ROOT / "functions" / "main.py", source)
    (tmp_path / "schedules.yaml").write_text(COUNT_WORDS)
    env = clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "1"})
    with dev_stack(tmp_path, "--source", "functions/main.py") as dev:
        with source.open("a") as out:
            out.write(WORD_COUNT)
        poll(lambda: "/word_count" in dev.output(), what="the stack reloaded its source", dev=dev)
        firecron(
            tmp_path, "apply", "schedules.yaml", env={**env, "FIRECRON_FUNCTIONS_BASE_URL": dev.url}
        )
        done = poll(
            lambda: [r for r in runs(tmp_path, "count-words") if r["state"] == "succeeded"],
            what="a count-words run succeeded",
            dev=dev,
        )
        assert done[0]["output"] == {"words": 3}
        assert not [r for r in runs(tmp_path, "count-words") if r["state"] == "failed"]

        # A broken edit keeps the previous workers serving, and says where it broke.
        good = source.read_text()
        seen = len(dev.output())  # a half-written append may have failed a reload already
        source.write_text(good + "\ndef broken(:\n")
        report = poll(
            lambda: dev.output()[seen:] if "reload failed" in dev.output()[seen:] else "",
            what="the broken edit was reported",
            dev=dev,
        )
        assert f"main.py:{len(good.splitlines()) + 2}: SyntaxError" in report
        before = {r["id"] for r in runs(tmp_path, "count-words")}
        poll(
            lambda: [
                r
                for r in runs(tmp_path, "count-words")
                if r["id"] not in before and r["state"] == "succeeded"
            ],
            what="count-words still succeeds after the broken edit",
            dev=dev,
        )
        assert dev.stop() == 0
    assert "Traceback" not in dev.output()


PIPELINE = """\
pipelines:
  - id: etl
    tasks:
      - {id: extract_a, target: {function: hello}}
      - {id: extract_b, target: {function: hello}}
      - {id: join, target: {function: hello}, after: [extract_a, extract_b]}
      - {id: load, target: {function: hello}, after: [join], if: "params.full"}
schedules:
  - id: etl-every
    every: 2s
    target: {pipeline: etl}
    params: {full: false}
"""


def test_the_piped_view_shows_a_pipeline_run_as_one_line_with_its_tasks(tmp_path: Path) -> None:
    (tmp_path / "schedules.yaml").write_text(PIPELINE)
    done = "extract_a:succeeded extract_b:succeeded join:succeeded load:skipped"

    def ended() -> str:
        lines = dev.output().splitlines()
        return next((ln for ln in lines if " succeeded " in ln and done in ln), "")

    with dev_stack(tmp_path, "--schedules", "schedules.yaml") as dev:
        line = poll(ended, what="a pipeline run's line with every task ended", dev=dev)
        assert dev.stop() == 0
    assert re.fullmatch(rf"\d\d:\d\d:\d\d etl-every@\w+ succeeded attempt 1  {done}", line)
    # The task runs are in the store, but the view names them only on their pipeline's line.
    stored = {r["id"] for r in runs(tmp_path, "etl-every")}
    pipeline_run = line.split()[1]
    assert f"{pipeline_run}.join" in stored
    for printed in dev.output().splitlines():
        assert not re.match(r"\d\d:\d\d:\d\d \S+\.(extract_a|extract_b|join|load) ", printed)
    assert "Traceback" not in dev.output()


# -- the view of pipeline runs (on a seeded store, without a stack) -------------------


def _seeded_pipeline_store(url: str, *, tasks: int = 3, plain: int = 2) -> None:
    """A pipeline run of ``tasks`` chained tasks (the first succeeded, the next running),
    created before ``plain`` plain runs of another schedule."""
    spec = PipelineSpec.model_validate(
        {
            "id": "etl",
            "tasks": [
                {
                    "id": f"t{n:03d}",
                    "target": {"function": "hello"},
                    "after": [f"t{n - 1:03d}"] if n else [],
                }
                for n in range(tasks)
            ],
        }
    )
    pipeline_run = make_run(
        "etl",
        T0,
        state=RunState.running,
        target=Target(pipeline="etl"),
        pipeline="etl",
        pipeline_spec=spec,
    )
    task_runs, _, _ = build_task_runs(pipeline_run, T0, pending_grace=timedelta(minutes=1))
    later = T0 + timedelta(seconds=5)
    task_runs[0] = task_runs[0].model_copy(
        update={"state": RunState.succeeded, "updated_at": later, "watch_at": None}
    )
    if tasks > 1:
        task_runs[1] = task_runs[1].model_copy(update={"state": RunState.running})
    plains = [
        make_run("hello", T0 + timedelta(minutes=1 + n), state=RunState.succeeded)
        for n in range(plain)
    ]

    async def seed() -> None:
        store = open_store(url)
        try:
            for r in [pipeline_run, *task_runs, *plains]:
                assert await store.create_run(r) is not None
        finally:
            await store.close()

    asyncio.run(seed())


def _recent(url: str, count: int = 12) -> Recent:

    async def read() -> Recent:
        store = open_store(url, create=False)
        try:
            return await recent_runs(store, count)
        finally:
            await store.close()

    return asyncio.run(read())


def test_recent_runs_list_a_pipeline_run_once_with_its_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'view.db'}"
    _seeded_pipeline_store(url, tasks=3, plain=2)
    recent = _recent(url)
    assert [run.id for run, _ in recent] == [
        "hello@20270101T000200Z",
        "hello@20270101T000100Z",
        "etl@20270101T000000Z",
    ]
    _, tasks = recent[2]
    assert task_states(tasks) == "t000:succeeded t001:running t002:waiting"
    assert [t for _, t in recent[:2]] == [[], []]


def test_task_runs_do_not_crowd_out_the_other_runs(tmp_path: Path) -> None:
    # 60 task runs are newer than the two runs listed with them: the page grows.
    url = f"sqlite:///{tmp_path / 'crowd.db'}"
    _seeded_pipeline_store(url, tasks=60, plain=0)

    async def older() -> None:
        store = open_store(url, create=False)
        await store.create_run(make_run("hello", T0 - timedelta(days=1), state=RunState.failed))
        await store.close()

    asyncio.run(older())
    recent = _recent(url, count=2)
    assert [run.id for run, _ in recent] == ["etl@20270101T000000Z", "hello@20261231T000000Z"]
    # More tasks than a line can name: counts per state.
    assert task_states(recent[0][1]) == "60 tasks: succeeded 1, running 1, waiting 58"


def test_the_piped_view_prints_a_pipeline_run_as_one_line_per_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'piped.db'}"
    _seeded_pipeline_store(url, tasks=3, plain=0)
    out = io.StringIO()
    stack = DevStack(
        Settings().with_store(url),
        None,
        port=1,
        source=tmp_path / "main.py",
        console=Console(file=out, width=300),
    )
    recent = _recent(url)
    stack._print_changes(recent)
    stack._print_changes(recent)  # nothing changed: nothing printed
    [run, tasks] = recent[0]
    when = datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC).astimezone().strftime("%H:%M:%S")
    assert out.getvalue().splitlines() == [
        f"{when} etl@20270101T000000Z running attempt 1  t000:succeeded t001:running t002:waiting"
    ]
    # A task's change alone prints the pipeline run again; its task runs never appear.
    tasks[1] = tasks[1].model_copy(update={"state": RunState.succeeded})
    stack._print_changes([(run, tasks)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("t000:succeeded t001:succeeded t002:waiting")
    assert not [line for line in lines if ".t00" in line]


# -- the view of runs waiting on a state key ---------------------------------------------


def _gated_run() -> Run:
    """A run waiting on ``orders/2027-01-01`` that has looked once and seen a value."""
    return make_run(
        "load",
        T0 + timedelta(minutes=5),
        state=RunState.waiting,
        wait=WaitSpec(key="orders/{date}", until="value.rows > 0"),
        wait_key="orders/2027-01-01",
        wait_value={"rows": 0},
        wait_checked_at=T0 + timedelta(minutes=5),
        wait_until=T0 + timedelta(hours=6, minutes=5),
        deadline_at=T0 + timedelta(minutes=5, seconds=30),
    )


def test_the_views_show_a_run_waiting_on_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'waits.db'}"
    # Its pipeline's tasks wait too, on their upstream tasks: no key, not listed as waits.
    _seeded_pipeline_store(url, tasks=3, plain=0)
    gated = _gated_run()

    async def seed_and_read() -> list[Run]:
        store = open_store(url, create=False)
        try:
            assert await store.create_run(gated) is not None
            return await waiting_runs(store)
        finally:
            await store.close()

    waiting = asyncio.run(seed_and_read())
    assert [r.id for r in waiting] == [gated.id]
    assert state_text(waiting[0]) == "waiting on orders/2027-01-01"

    out = io.StringIO()
    stack = DevStack(
        Settings().with_store(url),
        None,
        port=1,
        source=tmp_path / "main.py",
        console=Console(file=out, width=300),
    )
    recent = _recent(url)
    stack._print_changes(recent)
    when = gated.updated_at.astimezone().strftime("%H:%M:%S")
    assert (
        f"{when} {gated.id} waiting on orders/2027-01-01 attempt 1" in out.getvalue().splitlines()
    )

    live = io.StringIO()
    Console(file=live, width=300).print(stack._view([], recent, waiting))
    lines = [line.rstrip() for line in live.getvalue().splitlines()]
    start = lines.index("Waiting on state")
    assert lines[start + 1].split() == [
        "RUN",
        "KEY",
        "UNTIL",
        "LAST",
        "VALUE",
        "NEXT",
        "CHECK",
        "IN",
        "TIMES",
        "OUT",
        "IN",
    ]
    row = lines[start + 2]
    assert row.split()[:2] == [gated.id, "orders/2027-01-01"]
    assert "value.rows > 0" in row
    assert '{"rows":0}' in row
    # The recent runs show it waiting on its key too; without waits, no such table.
    assert any(gated.id in line and "waiting on orders/2027-01-01" in line for line in lines)
    quiet = io.StringIO()
    Console(file=quiet, width=300).print(stack._view([], recent, []))
    assert "Waiting on state" not in quiet.getvalue()


def test_the_dev_stack_links_notifications_to_its_own_console(tmp_path: Path) -> None:
    def stack(settings: Settings) -> DevStack:
        return DevStack(
            settings,
            None,
            port=8123,
            source=tmp_path / "main.py",
            console=Console(file=io.StringIO()),
        )

    assert stack(Settings()).settings.console_url == "http://127.0.0.1:8123"
    own = Settings(console_url="https://console.example.com")
    assert stack(own).settings.console_url == "https://console.example.com"
