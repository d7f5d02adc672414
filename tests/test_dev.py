"""``firecron dev`` as a user runs it: a subprocess, real workers, real ticks, SIGTERM.

Covered: scheduled runs succeed and fail as they should and SIGTERM stops it cleanly;
a taken port and a source that does not load are one line each (exit 2); the piped
view does not print again, after a restart, the runs the last start printed; and a
running stack serves a worker added to its source file (reload), surviving an edit
that breaks the file.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from _devstack import FIRECRON, clean_env, dev_stack, firecron, poll, runs

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
