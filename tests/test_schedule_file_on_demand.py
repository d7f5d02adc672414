"""On-demand schedules (none of cron, every or at) in the file and through the CLI.

They are valid, never due, named "on demand" by ``list`` and ``show``, and a re-apply
keeps their state. The fields that bound or delay occurrences are refused on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import run_cli
from firecron.core.schedule_file import parse_schedule_file

ON_DEMAND = """
schedules:
  - id: cleanup
    description: run after the nightly job
    target: {function: cleanup}
    params: {keep: 3}
  - id: nightly
    cron: "0 2 * * *"
    target: {function: nightly}
    then: [{schedule: cleanup, on: done}]
"""


def test_an_entry_without_a_trigger_is_on_demand() -> None:
    doc = parse_schedule_file(ON_DEMAND, "s.yaml")
    cleanup, nightly = doc.schedules
    assert cleanup.on_demand
    assert not nightly.on_demand


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (
            "start_at: 2027-01-01T00:00:00Z",
            "start_at: an on-demand schedule (no cron, every, at or frequency) has no occurrences to "
            "bound (add a trigger)",
        ),
        (
            "end_at: 2027-01-01T00:00:00Z",
            "end_at: an on-demand schedule (no cron, every, at or frequency) has no occurrences to "
            "bound (add a trigger)",
        ),
        (
            "jitter: 30s",
            "jitter: an on-demand schedule (no cron, every, at or frequency) has no occurrences to "
            "delay (add a trigger)",
        ),
        (
            "max_runs: 3",
            "max_runs: an on-demand schedule (no cron, every, at or frequency) has no occurrences to "
            "count (add a trigger)",
        ),
    ],
)
def test_fields_about_occurrences_are_refused_on_an_on_demand_schedule(
    body: str, line: str, tmp_path: Path
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"schedules:\n  - id: od\n    target: {{function: f}}\n    {body}\n")
    proc = run_cli("validate", str(path), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [f"{path}: schedules[0] (id=od): {line}"]


def _cli(tmp_path: Path, *args: str) -> str:
    store = f"sqlite:///{tmp_path / 'firecron.db'}"
    proc = run_cli(*args, "--store", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_list_show_and_reapply_of_an_on_demand_schedule(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(ON_DEMAND)
    assert "2 created" in _cli(tmp_path, "apply", str(path))

    listed = json.loads(_cli(tmp_path, "list", "--json"))["schedules"]
    row = next(r for r in listed if r["id"] == "cleanup")
    assert (row["trigger"], row["status"], row["next_fire_at"]) == ("on demand", "active", None)
    table = _cli(tmp_path, "list")
    [line] = [ln for ln in table.splitlines() if "cleanup" in ln]
    assert "on demand" in line
    assert "active" in line

    shown = _cli(tmp_path, "show", "cleanup")
    assert "on demand  —  runs only when triggered, chained or submitted from a worker" in shown
    assert "Next fire times: none (on demand)" in shown
    as_json = json.loads(_cli(tmp_path, "show", "cleanup", "--json"))
    assert as_json["description_of_trigger"] == (
        "runs only when triggered, chained or submitted from a worker"
    )
    assert as_json["next"] == []
    state = as_json["state"]

    # Re-applying the same file changes nothing and keeps the state as it was.
    assert "0 created, 0 updated, 2 unchanged" in _cli(tmp_path, "apply", str(path))
    assert json.loads(_cli(tmp_path, "show", "cleanup", "--json"))["state"] == state

    # A changed definition keeps the state too (nothing decides when it fires).
    path.write_text(ON_DEMAND.replace("keep: 3", "keep: 4"))
    assert "~ cleanup  (params)" in _cli(tmp_path, "apply", str(path))
    after = json.loads(_cli(tmp_path, "show", "cleanup", "--json"))
    assert after["spec"]["params"] == {"keep": 4}
    assert {k: v for k, v in after["state"].items() if k != "updated_at"} == {
        k: v for k, v in state.items() if k != "updated_at"
    }
