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

import pytest

ROOT = Path(__file__).resolve().parent.parent

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


def load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    assert path.is_file(), f"{name}.json was not written"
    data = json.loads(path.read_text())
    assert data["benchmark"] == name
    assert {"cpus", "python", "packages"} <= data["machine"].keys()
    assert data["checks"], "no targets reported"
    for check in data["checks"]:
        assert {"target", "measured", "passed", "verdict", "backend"} <= check.keys()
    return data["figures"]


def assert_exactly_once(receipts: dict, n: int) -> None:
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
    assert {c["benchmark"] for c in summary["checks"]} == {
        "fanout",
        "held",
        "decoupling",
        "schedules_file",
    }


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
