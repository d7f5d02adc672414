"""``make smoke``'s decisions (firecron._smoke) on recorded Cloud Logging entries, and
the Makefile's ``smoke`` and ``deploy`` steps as ``make -n`` prints them.

``make smoke`` itself needs a deployed project, so it cannot run here. The samples in
tests/data/smoke/ are ``gcloud logging read --format=json`` output in the LogEntry
format (``textPayload``, ``jsonPayload``, ``httpRequest.status``, ``resource.labels``),
newest first, one file per outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _cli import FIRECRON, clean_env, run_cli
from firecron import _smoke
from firecron._smoke import (
    CAUSES,
    Verdict,
    apply_verdict,
    logs_verdict,
    one_shot_yaml,
    runs_verdict,
    scheduler_verdict,
)
from firecron.core.schedule_file import parse_schedule_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "data" / "smoke"


def sample(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((SAMPLES / f"{name}.json").read_text())
    return entries


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("ok", None),
        ("audience_401", "audience"),
        ("ingress_403", "ingress"),
        ("ingress_404", "ingress"),
        ("iam_403", "iam"),
        ("firestore_not_found", "firestore"),
    ],
    # Ids name the sample only: an id ending "-firestore]" reads as the Firestore store
    # backend to tests/test_emulator_marker.py, and these need no emulator.
    ids=lambda value: (
        f"cause={value}" if value in ("firestore", "iam", "ingress", "audience") else None
    ),
)
def test_each_recorded_outcome_names_its_cause(name: str, cause: str | None) -> None:
    verdict = logs_verdict(sample(name))
    assert verdict is not None
    assert verdict.ok is (cause is None)
    assert verdict.cause == cause
    # gcloud's order does not matter: the timestamps decide.
    assert logs_verdict(list(reversed(sample(name)))) == verdict


def test_the_tick_summary_is_the_proof() -> None:
    verdict = logs_verdict(sample("ok"))
    assert verdict is not None
    assert verdict.detail == 'tick summary {"due": 1, "claimed": 1, "fired": 1, "watched": 0}'


def test_a_newer_failure_wins_over_an_older_summary() -> None:
    older_ok = [{**e, "timestamp": "2026-11-30T06:00:00Z"} for e in sample("ok")]
    verdict = logs_verdict(sample("iam_403") + older_ok)
    assert verdict is not None
    assert verdict.cause == "iam"


def test_entries_from_before_the_window_prove_nothing() -> None:
    summary_at = datetime(2026, 11, 30, 7, 1, 2, 385000, tzinfo=UTC)
    assert logs_verdict(sample("ok"), summary_at) is not None
    assert logs_verdict(sample("ok"), summary_at + timedelta(milliseconds=10)) is None
    # Nanosecond timestamps order by time, not as text ("02.5Z" sorts before "02Z").
    a, b = sample("iam_403")[1], sample("ok")[2]
    a["timestamp"], b["timestamp"] = "2026-11-30T07:01:02Z", "2026-11-30T07:01:02.500000001Z"
    verdict = logs_verdict([a, b])
    assert verdict is not None
    assert verdict.ok


def test_cloud_runs_own_401_is_the_audience_and_nothing_yet_decides_nothing() -> None:
    request_only = [e for e in sample("audience_401") if "httpRequest" in e]
    platform = [e for e in request_only if e["resource"]["type"] == "cloud_run_revision"]
    verdict = logs_verdict(platform)
    assert verdict is not None
    assert verdict.cause == "audience"
    assert logs_verdict([]) is None
    answered = [e for e in sample("ok") if e.get("httpRequest", {}).get("status") == 200]
    assert len(answered) == 2
    assert logs_verdict(answered) is None


def test_a_refused_caller_that_is_not_the_audience_is_iam() -> None:
    entry = sample("audience_401")[-1]
    assert "refused caller" in entry["textPayload"]
    entry["textPayload"] = "dispatch: refused caller: token is not from the configured caller"
    verdict = logs_verdict([entry])
    assert verdict is not None
    assert verdict.cause == "iam"


def test_the_failure_line_names_the_likely_cause_in_one_line() -> None:
    verdict = logs_verdict(sample("firestore_not_found"))
    assert verdict is not None
    line = verdict.line("logs", 2.25)
    assert "\n" not in line
    assert line.startswith("smoke: logs FAILED after 2.2 s: dispatch: tick failed: ")
    assert line.endswith(f"likely cause: {CAUSES['firestore']}")
    assert Verdict(True, "tick queued").line("scheduler", 0.5) == (
        "smoke: scheduler ok in 0.5 s: tick queued"
    )


@pytest.mark.parametrize(
    ("returncode", "stderr", "ok", "cause"),
    [
        (0, "", True, None),
        (
            1,
            "ERROR: (gcloud.scheduler.jobs.run) NOT_FOUND: Job not found.",
            False,
            "not_deployed",
        ),
        (
            1,
            "ERROR: (gcloud.scheduler.jobs.run) PERMISSION_DENIED: The principal (user:a@b.c) "
            'lacks IAM permission "cloudscheduler.jobs.run"',
            False,
            "iam",
        ),
    ],
)
def test_the_forced_tick(returncode: int, stderr: str, ok: bool, cause: str | None) -> None:
    verdict = scheduler_verdict(returncode, stderr)
    assert (verdict.ok, verdict.cause) == (ok, cause)


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        (
            "error: firestore get failed: NotFound: 404 The database smoke does not exist "
            "for project my-project",
            "firestore",
        ),
        (
            "error: firestore get failed: PermissionDenied: 403 Missing or insufficient "
            "permissions.",
            "iam",
        ),
    ],
    ids=lambda value: f"cause={value}" if value in ("firestore", "iam") else None,
)
def test_the_apply_failure_names_its_cause(output: str, cause: str) -> None:
    verdict = apply_verdict(1, output)
    assert not verdict.ok
    assert verdict.cause == cause
    assert verdict.detail == output


def test_the_run_decides_only_once_it_has_ended() -> None:
    assert runs_verdict([]) is None
    assert runs_verdict([{"id": "r1", "state": "running"}]) is None
    done = runs_verdict([{"id": "r1", "state": "succeeded"}])
    assert done is not None
    assert done.ok
    failed = runs_verdict([{"id": "r1", "state": "failed", "error": "boom"}])
    assert failed == Verdict(False, "run r1 ended failed: boom", "worker")


def test_the_one_shot_schedule_is_a_valid_hello_due_at_its_instant() -> None:
    now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    text = one_shot_yaml("smoke-hello-x", now + _smoke.HELLO_DELAY)
    parsed = parse_schedule_file(text, now=now)
    (spec,) = parsed.schedules
    assert spec.id == "smoke-hello-x"
    assert spec.at == now + timedelta(seconds=30)
    assert spec.target.function == "hello"


def run_smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firecron._smoke", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_the_logs_step_runs_its_command_and_judges_its_json() -> None:
    # The samples are from a fixed past day: a window reaching back to them takes them.
    ok = run_smoke("logs", "--window", "1e9", "--", "cat", str(SAMPLES / "ok.json"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("smoke: logs ok in ")
    refused = run_smoke("logs", "--window", "1e9", "--", "cat", str(SAMPLES / "ingress_404.json"))
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(CAUSES["ingress"])
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_hello_step_applies_its_schedule_to_a_real_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'smoke.db'}"
    # No dispatcher runs here, so no run ends: the step times out after its apply.
    done = run_smoke("hello", "--store", store, "--firecron", FIRECRON, "--timeout", "0")
    assert done.returncode == 1
    assert "smoke: hello applied smoke-hello-" in done.stdout
    assert "no ended run of smoke-hello-" in done.stderr
    assert done.stderr.strip().endswith(CAUSES["stalled"])
    listed = run_cli("list", "--store", store, "--json", check=True)
    (schedule,) = json.loads(listed.stdout)["schedules"]
    assert schedule["id"].startswith("smoke-hello-")


def make_n(target: str, *args: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_n_smoke_shows_each_step() -> None:
    lines = make_n("smoke", "PROJECT=p", "REGION=r")
    steps = [line for line in lines if "firecron._smoke" in line]
    assert len(steps) == 3
    scheduler, logs, hello = steps
    assert "scheduler -- gcloud scheduler jobs run firecron-tick --location r --project p" in (
        scheduler
    )
    assert "logs -- gcloud logging read " in logs
    assert 'resource.labels.service_name="dispatch"' in logs
    assert 'resource.labels.job_id="firecron-tick"' in logs
    assert "--project p --freshness 5m" in logs
    assert "--format json" in logs
    assert "hello --store 'firestore://p' --firecron .venv/bin/firecron" in hello


def test_make_n_smoke_follows_the_database_and_the_namespace() -> None:
    lines = make_n("smoke", "PROJECT=p", "REGION=r", "DATABASE=crons", "FIRECRON_NAMESPACE=a_b")
    assert any("jobs run a-b-tick" in line for line in lines)
    assert any(
        line.startswith("FIRECRON_NAMESPACE=a_b ") and "--store 'firestore://p/crons'" in line
        for line in lines
    )


def test_make_n_deploy_detects_an_existing_database() -> None:
    (apply,) = [line for line in make_n("deploy", "PROJECT=p", "REGION=r") if " apply " in line]
    assert "gcloud firestore databases describe --database='(default)' --project=p" in apply
    assert "-var create_firestore_database=false" in apply
    named = make_n("deploy", "PROJECT=p", "REGION=r", "DATABASE=crons")
    (apply,) = [line for line in named if " apply " in line]
    assert "-var 'firestore_database=crons'" in apply
    assert "--database='crons'" in apply
    # A choice of the user's own is kept, and nothing is detected.
    own = make_n("deploy", "PROJECT=p", "REGION=r", "TF_ARGS=-var create_firestore_database=true")
    (apply,) = [line for line in own if " apply " in line]
    assert "describe" not in apply
    assert apply.endswith("-var create_firestore_database=true")


@pytest.mark.parametrize(
    ("args", "missing"), [(["REGION=r"], "PROJECT"), (["PROJECT=p"], "REGION")]
)
def test_make_smoke_without_a_variable_says_so_in_one_line(args: list[str], missing: str) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"error: {missing} is required: make smoke ")
