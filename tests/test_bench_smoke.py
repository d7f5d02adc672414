"""Smoke test of the benchmarks: ``python -m bench`` at tiny sizes on SQLite.

It checks that every benchmark runs, writes its JSON with the expected keys, and that
every dispatch was received exactly once by the sink. No timing is asserted: the
machine may be shared, and the full run (``make bench``) is where figures come from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.__main__ import NAMES

ROOT = Path(__file__).resolve().parent.parent
# Every benchmark but scale, which has its own tests (tests/test_bench_scale_*.py): its
# second-precision part alone takes real minutes.
SMOKED = [name for name in NAMES if name != "scale"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            *(arg for name in SMOKED for arg in ("--only", name)),
            "--backends",
            "sqlite",
            "--schedules",
            "50",
            "--http-requests",
            "100",
            "--held",
            "5",
            "--hold-seconds",
            "3",
            "--ack-timeout",
            "1",
            "--jobs",
            "5",
            "--work-seconds",
            "1",
            "--file-schedules",
            "300",
            "--chain-tasks",
            "5",
            "--chain-repeats",
            "2",
            "--fan-tasks",
            "20",
            "--wait-trials",
            "5",
            "--waiting",
            "200",
            "--handoffs",
            "2",
            "--kills",
            "1",
            "--admin-schedules",
            "30",
            "--admin-runs",
            "200",
            "--admin-requests",
            "3",
            "--results-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary of targets" in proc.stdout
    return out


def load(results: Path, name: str) -> dict[str, Any]:
    path = results / f"{name}.json"
    assert path.is_file(), f"{name}.json was not written"
    data = json.loads(path.read_text())
    assert data["benchmark"] == name
    assert {"cpus", "python", "packages"} <= data["machine"].keys()
    assert data["checks"], "no targets reported"
    for check in data["checks"]:
        assert {"target", "measured", "passed", "verdict", "backend"} <= check.keys()
    figures: dict[str, Any] = data["figures"]
    return figures


def assert_exactly_once(receipts: dict[str, Any], n: int) -> None:
    assert receipts["expected"] == n
    assert receipts["received"] == n
    assert receipts["unique"] == n
    assert receipts["duplicates"] == receipts["missing"] == receipts["unexpected"] == 0
    assert receipts["exactly_once"] is True


def test_fanout(results: Path) -> None:
    figures = load(results, "fanout")
    r = figures["backends"]["sqlite"]
    assert r["fired"] == r["schedules"] == 50
    assert_exactly_once(r["receipts"], 50)
    for key in (
        "tick_wall_s",
        "fired_per_s",
        "reads_per_fired",
        "writes_per_fired",
        "percent_of_http_bound",
        "percent_of_store_claim_bound",
        "limiting_bound",
        "received_within_window",
    ):
        assert key in r, key
    assert {"bound_nominal_per_s", "bound_measured_latency_per_s"} <= r["http"].keys()
    assert r["http"]["bound_nominal_per_s"] == 1280
    assert {"claims_per_s", "claim_plus_outcome_per_s"} <= r["store_bound"].keys()


def test_held(results: Path) -> None:
    figures = load(results, "held")
    r = figures["backends"]["sqlite"]
    assert r["fired"] == 5
    assert r["outcomes"] == {"unacknowledged": 5}
    assert {"tick_wall_s", "target_s", "sink_peak_open"} <= r.keys()
    assert_exactly_once(r["receipts"], 5)


def test_decoupling(results: Path) -> None:
    figures = load(results, "decoupling")
    [case] = figures["cases"]
    assert case["jobs"] == 5
    assert_exactly_once(case["baseline"]["receipts"], 5)
    fc = case["firecron"]["sqlite"]
    assert fc["fired"] == 5
    assert {"tick_wall_s", "latest_start_s", "all_work_done_s"} <= fc.keys()
    assert_exactly_once(fc["receipts"], 5)


def test_summary(results: Path) -> None:
    summary = json.loads((results / "summary.json").read_text())
    assert summary["total"] == len(summary["checks"]) > 0
    assert {c["benchmark"] for c in summary["checks"]} == set(SMOKED)


def test_schedules_file(results: Path) -> None:
    figures = load(results, "schedules_file")
    assert figures["schedules"] == 300
    assert {"validate_s", "validate_peak_rss_mb", "ratios_to_targets"} <= figures.keys()
    assert figures["validate_peak_rss_mb"] > 0
    r = figures["backends"]["sqlite"]
    for key in ("apply_s", "apply_peak_rss_mb", "reapply_unchanged_s", "list_s"):
        assert r[key] > 0, key
    assert {"validate_s", "validate_mb", "apply_s_sqlite", "list_s_sqlite"} <= figures[
        "ratios_to_targets"
    ].keys()


def test_pipelines(results: Path) -> None:
    figures = load(results, "pipelines")
    chain = figures["chain"]["sqlite"]
    assert (chain["tasks_per_pipeline"], chain["pipelines"]) == (5, 2)
    assert chain["hops"] == len(chain["hops_ms"]) == 8  # 2 pipelines x 4 hops
    assert chain["hop_min_ms"] <= chain["hop_p50_ms"] <= chain["hop_p99_ms"] <= chain["hop_max_ms"]
    fan = figures["fan_out"]["sqlite"]
    assert fan["workers"]["tasks"] == 20
    assert fan["workers"]["start_to_join_start_s"] >= 0
    assert fan["task_runs"] == 21
    assert_exactly_once(fan["receipts"], 21)
    # One spawn creates every task run; each task marks the join, the join the pipeline run.
    assert fan["calls"]["spawn"] == 1
    assert fan["calls"]["mark_upstream"] == 21
    assert fan["start_to_join_dispatched_s"] >= 0
    base = fan["scheduled_plain_run"]
    assert base["runs"] == 21
    assert base["calls"]["claim"] == 21
    for key in ("reads_per_task_run", "writes_per_task_run", "queries_per_task_run"):
        assert fan[key] > 0, key
    targets = {c["target"] for c in load_checks(results, "pipelines")}
    assert any(t.startswith("hop p50") for t in targets)
    assert any(t.startswith("store work per task run") for t in targets)


def test_waits(results: Path) -> None:
    figures = load(results, "waits")
    r = figures["latency"]["sqlite"]
    assert r["trials"] == len(r["to_target_start_ms"]) == 5
    assert_exactly_once(r["receipts"], 5)
    assert r["to_target_start_p50_ms"] <= r["to_target_start_p99_ms"] <= r["to_target_start_max_ms"]
    # State.set releases and fires the key's waiters before it returns.
    assert r["target_started_before_set_returned"] == 5
    c = figures["cost"]["sqlite"]
    assert c["waiting_runs"] == 200
    # Waiting runs none of which is due cost a tick nothing: the idle tick's work.
    assert (c["tick"]["reads"], c["tick"]["queries"]) == (
        c["idle_tick"]["reads"],
        c["idle_tick"]["queries"],
    )
    assert c["write_queries"] == 1
    assert c["write_calls"]["waiting_on"] == 1
    assert c["released_run_state"] == "delivered"
    assert c["still_waiting"] == 199
    assert c["released_exactly_one"] is True
    assert_exactly_once(c["receipts"], 1)
    verdicts = {c["target"]: c["passed"] for c in load_checks(results, "waits")}
    assert any(t.startswith("release p99") for t in verdicts)
    assert verdicts["a write finds its waiters with one query"] is True


def test_continuous(results: Path) -> None:
    figures = load(results, "continuous")
    h = figures["handoff"]["sqlite"]
    assert h["handoffs"] == len(h["gaps_ms"]) == 2
    assert h["gap_min_ms"] <= h["gap_p50_ms"] <= h["gap_p99_ms"] <= h["gap_max_ms"]
    assert h["intervals"] == 3  # generations 1 to 3, each entered once
    assert (h["overlaps"], h["started_twice"], h["negative_gaps"]) == (0, [], 0)
    r = figures["recovery"]["sqlite"]
    assert r["kills"] == len(r["kill_log"]) == 1
    # Killed while it worked (it ends lost), or during its handoff (its end was recorded).
    assert r["killed_working_lost"] + r["killed_during_handoff"] == 1
    assert r["killed_unexpected_end"] == []
    assert (r["overlaps"], r["started_twice"], r["generations_skipped"]) == (0, [], 0)
    if r["killed_working_lost"]:
        # The successor starts only after the watchdog declared the killed one lost.
        assert r["kill_to_start_min_ms"] > r["kill_to_lost_max_ms"]
    targets = {c["target"] for c in load_checks(results, "continuous")}
    assert any(t.startswith("handoff gap p99") for t in targets)
    assert any(t.startswith("kill to successor start") for t in targets)


def test_admin(results: Path) -> None:
    figures = load(results, "admin")
    r = figures["backends"]["sqlite"]
    assert (r["schedules"], r["runs"]) == (30, 200)
    # One schedule in 100 targets a 3-task pipeline: job-00000, with 200 / 30 -> 7 runs.
    assert (r["pipeline_schedules"], r["task_runs"]) == (1, 21)
    assert sum(r["states"].values()) == 221
    assert {"running", "succeeded", "failed"} <= r["states"].keys()
    assert set(r["endpoints"]) == {"schedules page", "runs?limit=50", "timeline 24h"}
    for name, e in r["endpoints"].items():
        assert e["requests"] == len(e["times_ms"]) == 3, name
        assert e["min_ms"] <= e["p50_ms"] <= e["p95_ms"] <= e["max_ms"], name
        assert e["bytes"] > 0, name
    assert r["store_reads"]["schedules_page_run_queries"] == 30
    targets = {c["target"] for c in load_checks(results, "admin")}
    assert any(t.startswith("timeline 24h p95 <= 500 ms") for t in targets)
    assert len(targets) == 3


def test_continuous_judges_worker_intervals_pairwise(tmp_path: Path) -> None:
    from bench.continuous import overlaps, read_intervals, started_twice

    log = tmp_path / "intervals"
    log.write_text(
        "start 1 10.0 100\n"
        "end 1 12.0 100\n"
        "start 2 12.0 100\n"  # touches generation 1's end: not an overlap
        "end 2 14.0 100\n"
        "start 3 13.5 200\n"  # before 2 ended, in another process
        "end 3 15.0 200\n"
        "start 4 20.0 100\n"  # never ends: open until closed_at
        "start 3 30.0 300\n"  # generation 3 again
    )
    intervals = read_intervals(log)
    assert [(i.generation, i.end) for i in intervals] == [
        (1, 12.0),
        (2, 14.0),
        (3, 15.0),
        (4, None),
        (3, None),
    ]
    assert overlaps(intervals, closed_at=40.0) == [(2, 3), (4, 3)]
    assert started_twice(intervals) == [3]


def load_checks(results: Path, name: str) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = json.loads((results / f"{name}.json").read_text())["checks"]
    return checks


# -- the chaos suite (bench/chaos) ------------------------------------------------------


def test_chaos_counts_resends_apart_from_duplicates_and_losses() -> None:
    from bench.chaos._count import count_receipts

    expected = ["s-1@T", "s-2@T", "s-3@T", "s-4@T"]
    keys = [
        "s-1@T/1",  # once: fine
        "s-2@T/1",
        "s-2@T/1",  # the same key again: a re-send an idempotent target absorbs
        "s-3@T/1",
        "s-3@T/2",  # the same occurrence under a second key: a duplicate
        "other@T/1",  # not expected
    ]  # s-4 never arrived: a loss
    r = count_receipts(keys, expected)
    assert (r.received, r.resends, r.duplicates, r.losses, r.unexpected) == (6, 1, 1, 1, 1)
    assert r.examples["lost"] == ["s-4@T"]


def test_chaos_counts_overlapping_and_repeated_attempts() -> None:
    from bench.chaos._count import OVERLAP_TOLERANCE_S, count_attempts

    def line(event: str, run: str, attempt: int, pid: int, at: float) -> dict[str, object]:
        return {"event": event, "run": run, "attempt": attempt, "pid": pid, "at": at}

    lines = [
        # r1: attempt 1 runs on 5 s past attempt 2's start: one overlap.
        line("start", "r1", 1, 10, 0.0),
        line("start", "r1", 2, 20, 10.0),
        line("end", "r1", 1, 10, 15.0),
        line("end", "r1", 2, 20, 16.0),
        # r2: attempt 1 was killed (no end line) before attempt 2 started: no overlap.
        line("start", "r2", 1, 11, 0.0),
        line("start", "r2", 2, 21, 9.0),
        line("end", "r2", 2, 21, 12.0),
        # r3: attempt 1 ends within the tolerance of attempt 2's start; and it ran twice.
        line("start", "r3", 1, 12, 0.0),
        line("end", "r3", 1, 12, 5.0 + OVERLAP_TOLERANCE_S / 2),
        line("start", "r3", 2, 22, 5.0),
        line("end", "r3", 2, 22, 6.0),
        line("start", "r3", 2, 23, 7.0),
        line("end", "r3", 2, 23, 8.0),
    ]
    a = count_attempts(lines, killed_at={"11": 8.0})
    assert (a.executions, a.overlaps, a.duplicates, a.unfinished) == (7, 1, 1, 1)
    assert a.max_overlap_s == 5.0


def test_chaos_counts_tracebacks() -> None:
    from bench.chaos._count import count_tracebacks

    log = "ok\nTraceback (most recent call last):\n  x\nValueError\nTraceback (most recent call last):\n"
    assert count_tracebacks(log) == 2
    assert count_tracebacks("error: one line\n") == 0


def test_chaos_suite_runs_small(tmp_path: Path) -> None:
    """Two rounds of the SIGKILL experiment and a few fuzzed files, on SQLite."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--backends",
            "sqlite",
            "--only",
            "kill",
            "--only",
            "files",
            "--rounds",
            "2",
            "--due",
            "30",
            "--files",
            "3",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Chaos suite" in proc.stdout
    data = json.loads((tmp_path / "chaos.json").read_text())
    rows = {r["experiment"]: r for r in data["rows"]}
    kill = rows["dispatcher SIGKILL"]
    assert kill["tries"] == 60
    assert kill["details"]["received"] >= 60 - kill["losses"]
    for column in ("duplicates", "resends", "losses", "stuck", "tracebacks"):
        assert isinstance(kill[column], int), column
    files = rows["schedule-file fuzzing"]
    assert files["tries"] == 6  # validate and apply of each file
    assert isinstance(files["partial_applies"], int)
