"""``firecron state get/set/list/delete`` and the CLI's views of runs that wait on a key.

The real ``firecron`` command in a subprocess (tests/_cli.py), on a SQLite store made by
``apply``. Targets are real HTTP servers on 127.0.0.1 (tests/_sinks.py): a write through
``firecron state set`` releases a gated run, whose target then receives its POST before
the command returns. The last test runs the commands and a release on each store
(SQLite, and Firestore on the emulator).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _backend import Backend
from _cli import FIRECRON, clean_env, run_cli
from _factories import T0, make_run
from _poll import poll
from _sinks import serve
from firecron.core.models import PipelineSpec, Target
from firecron.core.pipelines import build_task_runs
from firecron.core.runs import RunState
from firecron.store import open_store

UNTIL = "value != null && value.rows > 0"


def firecron(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command with a clean ``FIRECRON_*`` environment; private targets allowed
    (the sinks are on 127.0.0.1)."""
    return run_cli(*args, env=clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "1", **(env or {})}))


def ok(*args: str) -> str:
    proc = firecron(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line ``proc`` failed with (exit ``code``, nothing on stdout, no traceback)."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    return line


def apply(tmp_path: Path, yaml: str) -> str:
    url = f"sqlite:///{tmp_path / 'store' / 'firecron.db'}"
    (tmp_path / "schedules.yaml").write_text(yaml)
    ok("apply", str(tmp_path / "schedules.yaml"), "--store", url)
    return url


def gated(target_url: str, key: str = "exports/{date}/{cust}", until: str = UNTIL) -> str:
    """A schedule gated on ``key`` (with a ``cust`` param) until it holds rows."""
    return (
        "schedules:\n"
        "  - id: load\n"
        "    params: {cust: acme}\n"
        "    wait:\n"
        f'      key: "{key}"\n'
        f'      until: "{until}"\n'
        "      every: 5m\n"
        "      timeout: 2h\n"
        f'    target: {{url: "{target_url}"}}\n'
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    return apply(tmp_path, "schedules: []\n")


# -- the state commands ------------------------------------------------------------------


def test_set_get_list_delete(store: str) -> None:
    assert ok("state", "set", "orders/2027-01-04", '{"rows": 1200}', "--store", store) == "1\n"
    assert ok("state", "set", "orders/2027-01-04", '{"rows": 1300}', "--store", store) == "2\n"
    assert ok("state", "set", "orders/2027-01-05", "[1, 2.5, null]", "--store", store) == "1\n"
    assert ok("state", "set", "other", '"x"', "--store", store) == "1\n"
    assert json.loads(ok("state", "get", "orders/2027-01-04", "--store", store)) == {"rows": 1300}
    entry = json.loads(ok("state", "get", "orders/2027-01-04", "--json", "--store", store))
    assert entry.keys() == {"key", "value", "version", "updated_at"}
    assert (entry["key"], entry["value"], entry["version"]) == (
        "orders/2027-01-04",
        {"rows": 1300},
        2,
    )
    assert entry["updated_at"].endswith("Z")

    listed = json.loads(ok("state", "list", "--prefix", "orders/", "--json", "--store", store))
    assert [(e["key"], e["value"], e["version"]) for e in listed] == [
        ("orders/2027-01-04", {"rows": 1300}, 2),
        ("orders/2027-01-05", [1, 2.5, None], 1),
    ]
    lines = ok("state", "list", "--store", store).splitlines()
    assert lines[0].split() == ["KEY", "VERSION", "UPDATED", "(UTC)", "VALUE"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["orders/2027-01-04", "2"],
        ["orders/2027-01-05", "1"],
        ["other", "1"],
    ]
    assert lines[1].split()[-1] == '{"rows":1300}'

    assert (
        ok("state", "delete", "orders/2027-01-04", "--store", store)
        == "deleted orders/2027-01-04\n"
    )
    assert [e["key"] for e in json.loads(ok("state", "list", "--json", "--store", store))] == [
        "orders/2027-01-05",
        "other",
    ]


def test_list_says_when_more_follow_and_when_there_is_nothing(store: str) -> None:
    assert ok("state", "list", "--store", store) == "no state entries\n"
    assert (
        ok("state", "list", "--prefix", "x/", "--store", store) == "no state entries under 'x/'\n"
    )
    for n in range(3):
        ok("state", "set", f"k{n}", str(n), "--store", store)
    lines = ok("state", "list", "--limit", "2", "--store", store).splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["k0", "k1"]
    assert lines[-1] == "more: raise --limit (now 2) or narrow --prefix"
    assert len(json.loads(ok("state", "list", "--limit", "2", "--json", "--store", store))) == 2


def test_a_long_value_is_cut_in_the_table_only(store: str) -> None:
    value = {"text": "x" * 200}
    ok("state", "set", "big", json.dumps(value), "--store", store)
    [_, row] = ok("state", "list", "--store", store).splitlines()
    assert row.split()[-1].endswith("...")
    assert len(row.split()[-1]) == 60
    assert json.loads(ok("state", "get", "big", "--store", store)) == value


def test_set_reads_the_value_from_stdin(store: str) -> None:
    proc = subprocess.run(
        [FIRECRON, "state", "set", "batch/ids", "-", "--store", store],
        input="[1, 2]\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "1\n", "")
    assert json.loads(ok("state", "get", "batch/ids", "--store", store)) == [1, 2]


def test_if_version_is_a_compare_and_set(store: str) -> None:
    assert ok("state", "set", "lock", '"a"', "--if-version", "0", "--store", store) == "1\n"
    # Create only: the key exists now.
    line = one_error(
        firecron("state", "set", "lock", '"b"', "--if-version", "0", "--store", store), 1
    )
    assert line == "error: state key 'lock' is at version 1 (create only)"
    line = one_error(
        firecron("state", "set", "lock", '"b"', "--if-version", "3", "--store", store), 1
    )
    assert line == "error: state key 'lock' is at version 1 (expected version 3)"
    assert ok("state", "set", "lock", '"b"', "--if-version", "1", "--store", store) == "2\n"
    line = one_error(firecron("state", "delete", "lock", "--if-version", "1", "--store", store), 1)
    assert line == "error: state key 'lock' is at version 2 (expected version 1)"
    assert json.loads(ok("state", "get", "lock", "--store", store)) == "b"
    ok("state", "delete", "lock", "--if-version", "2", "--store", store)
    assert one_error(firecron("state", "get", "lock", "--store", store), 2)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["get", "nope"], "error: unknown state key 'nope'"),
        (["delete", "nope"], "error: unknown state key 'nope'"),
        (
            ["get", "a b"],
            "error: state: key 'a b' holds ' ': keys are letters, digits and / _ . : -",
        ),
        (
            ["set", "a b", "1"],
            "error: state: key 'a b' holds ' ': keys are letters, digits and / _ . : -",
        ),
        (["set", "..", "1"], "error: state: key '..' is not allowed"),
        (
            ["set", "k", "{nope"],
            "error: JSON: not valid JSON: Expecting property name enclosed "
            "in double quotes: line 1 column 2 (char 1)",
        ),
        (["set", "k", "NaN"], "error: JSON: not valid JSON: NaN is not JSON"),
        (["set", "k", "[1e999]"], "error: JSON: not valid JSON: 1e999 is not a finite number"),
        (
            ["set", "k", "yes"],
            "error: JSON: not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        (
            ["set", "k", json.dumps("x" * 70_000)],
            "error: state 'k': value is 70,002 bytes of JSON; the limit is 65,536 (64 KiB)",
        ),
        (
            ["set", "k", "[" * 70 + "]" * 70],
            "error: state 'k': value is nested more than 64 levels deep",
        ),
        # Deeper than Python's JSON reader recurses: still one line, never a traceback.
        (["set", "k", "[" * 50_000 + "]" * 50_000], "error: JSON: nested too deeply to read"),
    ],
    ids=lambda a: " ".join(a)[:30] if isinstance(a, list) else None,
)
def test_bad_input_and_unknown_keys_exit_2_with_one_line(
    store: str, args: list[str], line: str
) -> None:
    assert one_error(firecron("state", *args, "--store", store), 2) == line
    assert json.loads(ok("state", "list", "--json", "--store", store)) == []


@pytest.mark.parametrize(
    "args", [["set", "k", "1", "--if-version", "-1"], ["delete", "k", "--if-version", "0"]]
)
def test_if_version_out_of_range_is_a_usage_error(store: str, args: list[str]) -> None:
    proc = firecron("state", *args, "--store", store)
    assert proc.returncode == 2
    assert "--if-version" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- waits: released by the CLI, shown by runs and run ------------------------------------


def _run(store: str, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok("run", run_id, "--json", "--store", store))
    return found


def _rows(text: str) -> dict[str, str]:
    """``firecron run``'s FIELD/VALUE table as a dict (fields are one or two words)."""
    rows: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines()[1:]:
        field, _, value = line.partition("  ")
        rows[field.strip()] = value.strip()
    return rows


def test_a_gated_trigger_waits_and_a_cli_write_releases_it(tmp_path: Path) -> None:
    with serve(status=200) as sink:
        store = apply(tmp_path, gated(f"{sink.url}/hook"))
        proc = firecron("trigger", "load", "--store", store)
        assert proc.returncode == 0, proc.stderr
        [run_id] = proc.stdout.splitlines()
        # {date}: the run's occurrence's date in the schedule's zone (UTC here).
        key = f"exports/{_run(store, run_id)['scheduled_for'][:10]}/acme"
        assert proc.stderr.splitlines() == [f"state: waiting on {key}"]
        assert sink.received == 0

        # runs --state waiting: the key and the condition.
        [header, row] = ok("runs", "--state", "waiting", "--store", store).splitlines()
        assert header.split()[-2:] == ["KEY", "UNTIL"]
        assert row.startswith(run_id)
        assert f"{key}  {UNTIL}" in row
        [listed] = json.loads(ok("runs", "--state", "waiting", "--json", "--store", store))
        assert listed["wait_key"] == key
        assert listed["wait"]["until"] == UNTIL
        assert listed["wait_until"].endswith("Z")

        waiting = _rows(ok("run", run_id, "--store", store))
        assert waiting["state"] == "waiting"
        assert waiting["wait key"] == key
        assert waiting["wait until"] == f"{UNTIL}  (looked at every 5m)"
        assert waiting["last value"] == "null"  # the trigger looked once: no key yet
        data = _run(store, run_id)
        assert waiting["last looked"] == data["wait_checked_at"]
        assert waiting["next check"] == data["deadline_at"]
        assert waiting["times out"] == data["wait_until"]

        # A value the condition refuses: still waiting, the value seen is recorded.
        assert ok("state", "set", key, '{"rows": 0}', "--store", store) == "1\n"
        assert sink.received == 0
        assert _rows(ok("run", run_id, "--store", store))["last value"] == '{"rows":0}'

        # One that holds: released and fired before `state set` returns.
        assert ok("state", "set", key, '{"rows": 12}', "--store", store) == "2\n"
        assert sink.received == 1
    assert sink.requests[0].path == "/hook"
    released = _rows(ok("run", run_id, "--store", store))
    assert released["state"] == "delivered"
    assert released["wait key"] == key  # rendered again: the index field is cleared
    assert released["last value"] == '{"rows":12}'
    assert released["next check"] == "-"
    assert ok("runs", "--state", "waiting", "--store", store) == "no runs\n"
    # The listing of ended runs has no wait columns.
    assert "UNTIL" not in ok("runs", "--store", store).splitlines()[0]


def test_trigger_no_wait_skips_the_gate(tmp_path: Path) -> None:
    with serve(status=200) as sink:
        store = apply(tmp_path, gated(f"{sink.url}/hook"))
        proc = firecron("trigger", "load", "--no-wait", "--store", store)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines() == ["state: delivered"]
        assert sink.received == 1
    data = _run(store, proc.stdout.strip())
    assert (data["state"], data["wait"], data["wait_key"]) == ("delivered", None, None)


def test_trigger_of_a_gate_that_holds_already_fires_at_once(tmp_path: Path) -> None:
    with serve(status=200) as sink:
        store = apply(tmp_path, gated(f"{sink.url}/hook", key="exports/{cust}"))
        ok("state", "set", "exports/acme", '{"rows": 5}', "--store", store)
        proc = firecron("trigger", "load", "--store", store)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines() == ["state: delivered"]
        assert sink.received == 1


def test_trigger_wait_follows_a_run_through_its_wait(tmp_path: Path) -> None:
    with serve(status=200) as sink:
        store = apply(tmp_path, gated(f"{sink.url}/hook"))
        follower = subprocess.Popen(
            [FIRECRON, "trigger", "load", "--wait", "--wait-timeout", "2m", "--store", store],
            env=clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "1"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            [waiting] = poll(
                lambda: json.loads(ok("runs", "--state", "waiting", "--json", "--store", store)),
                lambda found: len(found) == 1,
                what="the triggered run waiting on its key",
            )
            ok("state", "set", waiting["wait_key"], '{"rows": 1}', "--store", store)
            out, err = follower.communicate(timeout=120)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
        assert follower.returncode == 0, err
        assert err.splitlines() == ["state: delivered"]
        assert out.strip().startswith("load@m")
        assert sink.received == 1


def test_a_wait_whose_condition_errors_fails_the_trigger_with_one_line(tmp_path: Path) -> None:
    # The key is missing: value is null, and null.rows is an error in CEL.
    store = apply(tmp_path, gated("https://example.com/hook", until="value.rows > 0"))
    line = one_error(firecron("trigger", "load", "--store", store), 1)
    assert line.startswith("error: run load@m"), line
    assert " failed: wait on exports/" in line
    assert "/acme until value.rows > 0: No such overload" in line


def test_state_help_lists_the_four_commands() -> None:
    out = ok("state", "--help")
    assert {"get", "set", "list", "delete"} <= {
        line.split()[0] for line in out.split("Commands:")[1].strip().splitlines()
    }
    for command in ("get", "set", "list", "delete"):
        assert "Example" in ok("state", command, "--help"), command


# -- on both stores ----------------------------------------------------------------------


def test_the_state_commands_and_a_cli_release_on_each_store(
    backend: Backend, tmp_path: Path
) -> None:
    """The four commands, a version conflict, and a gated run released by `state set`,
    on SQLite and on Firestore (the emulator)."""
    env = backend.env()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env)

    def cli_ok(*args: str) -> str:
        proc = cli(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    with serve(status=200) as sink:
        path = tmp_path / "schedules.yaml"
        path.write_text(gated(f"{sink.url}/hook", key="exports/{cust}"))
        cli_ok("apply", str(path))
        assert cli_ok("state", "set", "exports/other", "1") == "1\n"
        assert cli_ok("state", "set", "exports/other", "2", "--if-version", "1") == "2\n"
        line = one_error(cli("state", "set", "exports/other", "3", "--if-version", "1"), 1)
        assert line.startswith("error: state key 'exports/other' ")
        assert "version 2" in line

        run_id = cli_ok("trigger", "load").strip()
        assert [r["id"] for r in json.loads(cli_ok("runs", "--state", "waiting", "--json"))] == [
            run_id
        ]
        assert cli_ok("state", "set", "exports/acme", '{"rows": 3}') == "1\n"
        assert sink.received == 1
    run = json.loads(cli_ok("run", run_id, "--json"))
    assert (run["state"], run["wait_key"], run["wait_value"]) == ("delivered", None, {"rows": 3})

    listed = json.loads(cli_ok("state", "list", "--prefix", "exports/", "--json"))
    assert [(e["key"], e["value"], e["version"]) for e in listed] == [
        ("exports/acme", {"rows": 3}, 1),
        ("exports/other", 2, 2),
    ]
    assert cli_ok("state", "delete", "exports/other") == "deleted exports/other\n"
    assert one_error(cli("state", "get", "exports/other"), 2) == (
        "error: unknown state key 'exports/other'"
    )
    assert json.loads(cli_ok("state", "get", "exports/acme")) == {"rows": 3}


def test_a_pipeline_wait_task_waiting_on_its_key_in_run_and_runs(tmp_path: Path) -> None:
    """A seeded pipeline run whose wait task waits on its key: the task tree, the task
    run's own view, and the waiting runs listing."""
    spec = PipelineSpec.model_validate(
        {
            "id": "etl",
            "tasks": [
                {"id": "ready", "wait": {"key": "orders/{date}", "until": UNTIL}},
                {"id": "load", "target": {"function": "load"}, "after": ["ready"]},
            ],
        }
    )
    parent = make_run(
        "etl-nightly",
        T0,
        state=RunState.running,
        target=Target(pipeline="etl"),
        pipeline="etl",
        pipeline_spec=spec,
    )
    tasks, _, _ = build_task_runs(parent, T0, pending_grace=timedelta(minutes=1))
    ready = next(t for t in tasks if t.task == "ready")
    wait = spec.task("ready").wait
    assert wait is not None
    looked = T0 + timedelta(seconds=1)
    ready_waiting = ready.model_copy(
        update={
            "wait": wait,
            "wait_key": "orders/2027-01-01",
            "wait_value": None,
            "wait_checked_at": looked,
            "wait_until": T0 + timedelta(hours=6),
            "deadline_at": looked + timedelta(seconds=30),
        }
    )
    url = f"sqlite:///{tmp_path / 'seeded.db'}"

    async def seed() -> None:
        store = open_store(url)
        try:
            for r in [parent, *(ready_waiting if t is ready else t for t in tasks)]:
                assert await store.create_run(r) is not None
        finally:
            await store.close()

    asyncio.run(seed())
    tree = ok("run", parent.id, "--store", url).split("Tasks (etl)")[1].splitlines()
    assert tree[2].split() == ["ready", "waiting", "on", "orders/2027-01-01", "-", "-", "-"]
    assert tree[3].split()[:2] == ["load", "waiting"]  # on its upstream task: no key

    shown = _rows(ok("run", ready.id, "--store", url))
    assert shown["wait key"] == "orders/2027-01-01"
    assert shown["wait until"] == f"{UNTIL}  (looked at every 30s)"
    assert shown["last value"] == "null"
    assert shown["last looked"] == "2027-01-01T00:00:01Z"
    assert shown["next check"] == "2027-01-01T00:00:31Z"
    assert shown["times out"] == "2027-01-01T06:00:00Z"

    # Both task runs are `waiting`; only the one on a key has a KEY and an UNTIL.
    rows = {
        line.split()[0]: line
        for line in ok("runs", "--state", "waiting", "--store", url).splitlines()[1:]
    }
    assert rows.keys() == {ready.id, f"{parent.id}.load"}
    assert rows[ready.id].rstrip().endswith(f"orders/2027-01-01  {UNTIL}")
    assert rows[f"{parent.id}.load"].split()[-3:] == ["-", "-", "-"]  # error, key, until
