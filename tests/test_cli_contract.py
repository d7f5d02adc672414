"""The CLI's contract, through the real ``firecron`` entry point in a subprocess.

- ``trigger`` exits 1 with one line when its run could not be sent or has failed, and
  prints nothing else (no structured log lines, no logger warnings).
- Read-only commands (and the state commands) never create a store: a SQLite path that
  does not exist is exit 2 with one line naming it, and the path is still absent afterwards.
- ``show`` prints params as JSON and a schedule with no next fire time as one line;
  ``run`` shows no ACK/SENT columns, and table cells are text, never rich markup.
- ``next`` takes a SPEC that begins with ``-`` after ``--``, and says so.

Targets are real HTTP servers on 127.0.0.1 (tests/_sinks.py) and a port with nothing
listening.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from _cli import clean_env, run_cli
from _sinks import closed_port, serve


def firecron(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command with a clean ``FIRECRON_*`` environment (plus ``env``); the
    targets are on 127.0.0.1, so private targets are allowed."""
    return run_cli(
        *args, cwd=cwd, env=clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "1", **(env or {})})
    )


def apply(tmp_path: Path, yaml: str) -> str:
    """Apply ``yaml`` to a new SQLite store under ``tmp_path``; its URL."""
    url = f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"
    (tmp_path / "schedules.yaml").write_text(yaml)
    proc = firecron("apply", str(tmp_path / "schedules.yaml"), "--store", url)
    assert proc.returncode == 0, proc.stderr
    return url


def url_schedule(url: str, *, retries: int = 3) -> str:
    return (
        "schedules:\n"
        "  - id: hook\n"
        "    every: 1h\n"
        f'    target: {{url: "{url}"}}\n'
        f"    retry: {{max_attempts: {retries}}}\n"
    )


# -- trigger ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retries", "fragment"),
    [
        # Retryable: the run waits for its next attempt, but nothing was sent now.
        (500, 3, "HTTP 500; attempt 2 of 3 at "),
        # Permanent: the run failed at once.
        (404, 3, "HTTP 404"),
        # Retryable, with no attempt left: failed.
        (503, 1, "HTTP 503"),
    ],
)
def test_trigger_exits_1_with_one_line_when_the_target_answers_an_error(
    tmp_path: Path, status: int, retries: int, fragment: str
) -> None:
    with serve(status=status) as sink:
        store = apply(tmp_path, url_schedule(f"{sink.url}/hook", retries=retries))
        proc = firecron("trigger", "hook", "--store", store)
        assert len(sink.requests) == 1
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: run hook@m")
    assert " could not be sent: POST http://127.0.0.1:" in line
    assert fragment in line
    if retries == 1 or status == 404:
        assert "attempt 2" not in line


def test_trigger_exits_1_when_nothing_listens(tmp_path: Path) -> None:
    store = apply(tmp_path, url_schedule(f"http://127.0.0.1:{closed_port()}/hook"))
    proc = firecron("trigger", "hook", "--store", store)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "could not be sent" in line
    assert "connection failed" in line
    # The run is recorded as the line says.
    [run] = json.loads(firecron("runs", "--json", "--store", store).stdout)
    assert line.startswith(f"error: run {run['id']} could not be sent")
    assert run["state"] == "retry_wait"


def test_trigger_json_still_prints_the_run_when_it_fails(tmp_path: Path) -> None:
    with serve(status=404) as sink:
        store = apply(tmp_path, url_schedule(f"{sink.url}/hook"))
        proc = firecron("trigger", "hook", "--json", "--store", store)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["state"] == "failed"
    assert len(proc.stderr.splitlines()) == 1


def test_trigger_success_prints_the_run_id_only(tmp_path: Path) -> None:
    with serve(status=200) as sink:
        store = apply(tmp_path, url_schedule(f"{sink.url}/hook"))
        # The event log is on by default; trigger's stdout is still the run id alone.
        proc = firecron("trigger", "hook", "--store", store, env={"FIRECRON_EVENT_LOG": "1"})
    assert proc.returncode == 0, proc.stderr
    [run_id] = proc.stdout.splitlines()
    assert run_id.startswith("hook@m")
    assert proc.stderr.splitlines() == ["state: delivered"]


def test_trigger_of_a_worker_reports_the_state_the_worker_recorded(tmp_path: Path) -> None:
    """A worker target that streams its 202 (the run stays ``dispatched``: no SDK here)."""
    with serve(status=202, stream=True) as sink:
        store = apply(
            tmp_path,
            "schedules:\n  - id: w\n    every: 1h\n"
            f'    target: {{url: "{sink.url}/w", worker: true}}\n',
        )
        proc = firecron("trigger", "w", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["state: dispatched"]


# -- read-only commands never create a store ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "x"],
        ["runs"],
        ["run", "x@y"],
        ["events"],
        ["trigger", "x"],
        ["pause", "x"],
        ["resume", "x"],
        ["delete", "x"],
        # Writes too: a state write to a store that does not exist is a mistyped URL.
        ["state", "get", "k"],
        ["state", "set", "k", "1"],
        ["state", "list"],
        ["state", "delete", "k"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
@pytest.mark.parametrize("parent_exists", [True, False], ids=["file", "dir"])
def test_commands_that_need_a_store_do_not_create_one(
    tmp_path: Path, args: list[str], parent_exists: bool
) -> None:
    parent = tmp_path if parent_exists else tmp_path / "missing"
    path = parent / "firecron.db"
    proc = firecron(*args, "--store", f"sqlite:///{path}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: no store at {path}: the file does not exist (firecron apply creates it)"
    ]
    assert not path.exists()
    assert parent.exists() == parent_exists
    assert list(tmp_path.iterdir()) == []


def test_the_default_store_is_not_created_by_a_read_only_command(tmp_path: Path) -> None:
    proc = firecron("list", cwd=tmp_path)
    assert proc.returncode == 2
    assert ".firecron/firecron.db" in proc.stderr
    assert not (tmp_path / ".firecron").exists()


def test_read_only_commands_work_on_an_existing_store(tmp_path: Path) -> None:
    store = apply(tmp_path, url_schedule("https://example.com/hook"))
    assert json.loads(firecron("runs", "--json", "--store", store).stdout) == []
    listed = json.loads(firecron("list", "--json", "--store", store).stdout)
    assert [s["id"] for s in listed["schedules"]] == ["hook"]


# -- show and run ------------------------------------------------------------------------

SHOWN = """\
schedules:
  - id: off
    cron: "0 9 * * *"
    enabled: false
    params: {a: 1, b: [true, null], c: "x [bold]y[/bold]"}
    target: {url: "https://example.com/hook"}
  - id: on
    cron: "0 9 * * *"
    target: {url: "https://example.com/hook"}
"""


def test_show_prints_params_as_json(tmp_path: Path) -> None:
    store = apply(tmp_path, SHOWN)
    out = firecron("show", "off", "--store", store).stdout
    [params] = [line for line in out.splitlines() if line.startswith("params")]
    shown = params.removeprefix("params").strip()
    assert json.loads(shown) == {"a": 1, "b": [True, None], "c": "x [bold]y[/bold]"}


@pytest.mark.parametrize(
    ("setup", "expected"),
    [([], "Next fire times: none (disabled)"), (["pause"], "Next fire times: none (paused)")],
)
def test_show_without_next_fire_times_says_why(
    tmp_path: Path, setup: list[str], expected: str
) -> None:
    store = apply(tmp_path, SHOWN)
    schedule = "off" if not setup else "on"
    for command in setup:
        assert firecron(command, schedule, "--store", store).returncode == 0
    proc = firecron("show", schedule, "--store", store)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip().splitlines()
    assert lines[-1] == expected
    assert "LOCAL" not in proc.stdout  # no empty table with a folded title
    assert json.loads(firecron("show", schedule, "--json", "--store", store).stdout)["next"] == []


def test_show_of_an_active_schedule_lists_its_next_fire_times(tmp_path: Path) -> None:
    store = apply(tmp_path, SHOWN)
    out = firecron("show", "on", "--store", store).stdout
    assert "Next fire times" in out
    assert sum("T09:00:00" in line for line in out.splitlines()) == 5


def test_run_attempts_have_no_ack_or_sent_column(tmp_path: Path) -> None:
    store = apply(tmp_path, url_schedule(f"http://127.0.0.1:{closed_port()}/hook"))
    firecron("trigger", "hook", "--store", store)
    [run] = json.loads(firecron("runs", "--json", "--store", store).stdout)
    out = firecron("run", run["id"], "--store", store).stdout
    header = next(line for line in out.splitlines() if line.startswith("#"))
    # No ACK or SENT column; SENDS counts the sends of each attempt (re-sends included).
    assert header.split() == ["#", "STARTED", "ENDED", "OUTCOME", "SENDS", "ERROR"]
    # The error of the attempt, brackets included, is printed as it is.
    assert "[Errno 111]" in out


# -- next ---------------------------------------------------------------------------------


def test_next_takes_a_spec_beginning_with_dash_after_double_dash() -> None:
    proc = firecron("next", "-n", "2", "--", "-1 * * * *")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: SPEC: invalid cron expression '-1 * * * *': minute field has invalid element '-1'"
    ]
    proc = firecron("next", "-n", "2", "--tz", "Europe/Berlin", "--", "5 4 * * *")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_next_without_double_dash_points_to_it() -> None:
    proc = firecron("next", "-1 * * * *")
    assert proc.returncode == 2
    assert "SPEC '-1 * * * *' begins with '-': put it after '--'" in proc.stderr
    assert "Traceback" not in proc.stderr
    # A real unknown option is still reported as one.
    assert "No such option '--bogus'" in firecron("next", "--bogus", "x").stderr


def test_next_help_says_how_to_pass_a_spec_beginning_with_dash() -> None:
    out = firecron("next", "--help").stdout
    assert 'firecron next -n 3 -- "$SPEC"' in out
    assert 'when it may begin with "-"' in out


def test_trigger_of_a_real_worker_prints_the_state_the_worker_recorded(tmp_path: Path) -> None:
    """The SDK records the start before it answers, so the send's record loses that race:
    trigger reads the run back instead of printing the stale ``pending``."""
    from _workers import serve_worker, worker_env

    app = Path(__file__).parent / "_worker_app.py"
    url = f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"
    with serve_worker("sleepy", env=worker_env(url), source=app) as worker:
        store = apply(
            tmp_path,
            "schedules:\n  - id: s\n    every: 1h\n    params: {seconds: 0.1}\n"
            f'    target: {{url: "{worker.url}", worker: true}}\n',
        )
        assert store == url
        proc = firecron("trigger", "s", "--store", store)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line in ("state: running", "state: succeeded")


# -- trigger --wait and tick follow and sign like the dev stack ----------------------------


def worker_schedule(sid: str, url: str, *, retries: int = 1, every: str = "1h") -> str:
    return (
        f"schedules:\n  - id: {sid}\n    every: {every}\n"
        f'    target: {{url: "{url}", worker: true}}\n'
        f"    retry: {{max_attempts: {retries}}}\n"
    )


@pytest.mark.parametrize(
    ("target", "code", "fragment"),
    [
        ("hello", 0, None),
        ("fail", 1, "ended failed after 1 attempt(s): RuntimeError: this worker always fails"),
    ],
)
def test_trigger_wait_follows_a_worker_run_to_its_end(
    tmp_path: Path, target: str, code: int, fragment: str | None
) -> None:
    """Without --wait a failing worker still exits 0 (it acknowledged before working)."""
    from _workers import serve_worker, worker_env

    url = f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"
    with serve_worker(target, env=worker_env(url), log_dir=tmp_path / "logs") as worker:
        store = apply(tmp_path, worker_schedule("w", worker.url))
        proc = firecron("trigger", "w", "--wait", "--store", store)
    assert proc.returncode == code, proc.stdout + proc.stderr
    if fragment is None:
        assert proc.stderr.splitlines() == ["state: succeeded"]
    else:
        [line] = proc.stderr.splitlines()
        assert line.startswith("error: run w@m"), line
        assert fragment in line, line


def test_trigger_wait_gives_up_after_its_timeout(tmp_path: Path) -> None:
    with serve(status=202, stream=True) as sink:  # acknowledges, never starts the run
        store = apply(tmp_path, worker_schedule("w", f"{sink.url}/w"))
        proc = firecron("trigger", "w", "--wait", "--wait-timeout", "1s", "--store", store)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.endswith("is still dispatched after 1s"), line


def test_trigger_wait_timeout_must_be_a_duration(tmp_path: Path) -> None:
    store = apply(tmp_path, url_schedule("https://example.com/hook"))
    proc = firecron("trigger", "hook", "--wait", "--wait-timeout", "soon", "--store", store)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: --wait-timeout: "), line


def test_tick_signs_with_the_dev_secret_of_its_store(tmp_path: Path) -> None:
    """`firecron tick` beside a dev stack signs like the stack, so its workers accept it."""
    from _workers import serve_worker, worker_env
    from firecron._dev_secret import with_dev_secret
    from firecron.settings import Settings

    url = f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"
    (tmp_path / "store").mkdir()
    secret = with_dev_secret(Settings(store_url=url), create=True).signing_secrets
    with serve_worker("hello", env=worker_env(url, secrets=secret), log_dir=tmp_path) as worker:
        # A one-shot applied 10 s after its instant is due at once (within its misfire
        # grace), so the very next tick fires it, whatever the clock's second.
        due = (datetime.now(UTC) - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        yaml = worker_schedule("w", worker.url).replace("every: 1h", f"at: {due}")
        store = apply(tmp_path, yaml)
        proc = firecron("tick", "--json", "--store", store)
        assert proc.returncode == 0, proc.stderr
        [run] = json.loads(firecron("runs", "--json", "--store", store).stdout)
        # 401 (unsigned) would be a permanent failure; signed, the worker took it.
        assert run["state"] in ("running", "succeeded"), run
