"""``make smoke``: prove that a deploy works, one step per ``python -m firecron._smoke STEP``.

The Makefile runs three steps, so that ``make -n smoke`` shows every command:

- ``scheduler -- gcloud scheduler jobs run ...``: force a tick;
- ``logs -- gcloud logging read FILTER --format=json ...``: poll the dispatch service's
  (and the scheduler job's) logs until the newest decisive entry is a tick summary
  (``dispatch: {"due": ...}``, logged by ``_dispatch_http.py``) or a failure;
- ``hello --store URL --firecron PATH``: apply a one-shot ``hello`` schedule due in 30 s
  and poll ``firecron runs --json`` until its run has ended.

Each step prints one line with its time, and a failure names its likely cause (ingress,
audience, IAM, the Firestore database, or a missing deploy) and exits 1. The decisions
(:func:`scheduler_verdict`, :func:`logs_verdict`, :func:`apply_verdict`,
:func:`runs_verdict`) are pure functions of a command's output, tested on recorded
Cloud Logging entries (tests/data/smoke/); only :func:`main` runs commands and waits.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CAUSES",
    "Verdict",
    "apply_verdict",
    "entry_text",
    "logs_verdict",
    "main",
    "one_shot_yaml",
    "runs_verdict",
    "scheduler_verdict",
]

Cause = Literal[
    "ingress", "audience", "iam", "firestore", "not_deployed", "dispatch", "worker", "stalled"
]

CAUSES: dict[Cause, str] = {
    "ingress": "ingress: the scheduler must call dispatch at its run.app URL "
    "(Cloud Run counts only those requests from Cloud Scheduler as internal)",
    "audience": "audience: the scheduler's OIDC audience must be dispatch's run.app URL, "
    "and FIRECRON_DISPATCH_AUDIENCE the same",
    "iam": "IAM: a service account lacks a role (run.invoker on dispatch for the "
    "scheduler's, datastore.user for the dispatcher's), or your gcloud account lacks rights",
    "firestore": "Firestore database: FIRECRON_STORE names a database that does not exist "
    "or is not in native mode (check firestore_database and create_firestore_database)",
    "not_deployed": "not deployed: run make deploy first, with the same PROJECT and REGION",
    "dispatch": "dispatch: the function failed; make logs PROJECT=... REGION=... shows why",
    "worker": "worker: the hello function failed; make logs ... FUNCTION=hello shows why",
    "stalled": "nothing decided in time: is the scheduler job paused (gcloud scheduler jobs "
    "describe), and do make logs and make logs FUNCTION=hello show the ticks?",
}
"""The likely cause of each failure, as the one line printed after the step's error."""

HELLO_DELAY = timedelta(seconds=30)
"""How far ahead the one-shot ``hello`` schedule is due."""

_SUMMARY = re.compile(r"dispatch: (\{.*\"due\".*\})")
_AUD = re.compile(r"\baud(ience)?\b", re.IGNORECASE)
_END_STATES = {"succeeded", "failed", "timed_out", "lost", "cancelled", "delivered"}


@dataclass(frozen=True)
class Verdict:
    """A step's outcome: ``ok``, or the likely ``cause`` and the ``detail`` that shows it."""

    ok: bool
    detail: str
    cause: Cause | None = None

    def line(self, step: str, seconds: float) -> str:
        """The one line ``make smoke`` prints for this step."""
        if self.ok:
            return f"smoke: {step} ok in {seconds:.1f} s: {self.detail}"
        cause = CAUSES[self.cause] if self.cause else "unknown"
        return f"smoke: {step} FAILED after {seconds:.1f} s: {self.detail}; likely cause: {cause}"


def _first_line(text: str, limit: int = 300) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _cause_of_error(text: str) -> Cause | None:
    """The cause named by a Google API or gcloud error text, or ``None``."""
    upper = text.upper()
    if "PERMISSION_DENIED" in upper or "PERMISSIONDENIED" in upper or re.search(r"\b403\b", text):
        return "iam"
    if "NOT_FOUND" in upper or "NOTFOUND" in upper or "DOES NOT EXIST" in upper:
        return "firestore" if "DATABASE" in upper else "not_deployed"
    if "FAILED_PRECONDITION" in upper and "DATASTORE MODE" in upper:
        return "firestore"
    return None


def scheduler_verdict(returncode: int, stderr: str) -> Verdict:
    """Judge ``gcloud scheduler jobs run``: it only queues a tick, so 0 is ok."""
    if returncode == 0:
        return Verdict(True, "tick queued")
    detail = _first_line(stderr) or f"gcloud exited with {returncode}"
    cause = _cause_of_error(stderr)
    # A missing job is a missing deploy (or another REGION), never a database.
    return Verdict(False, detail, "not_deployed" if cause == "firestore" else cause)


def entry_text(entry: dict[str, Any]) -> str:
    """A LogEntry's message: ``textPayload``, or ``jsonPayload.message`` (or its JSON)."""
    text = entry.get("textPayload")
    if isinstance(text, str):
        return text
    payload = entry.get("jsonPayload")
    if isinstance(payload, dict):
        message = payload.get("message")
        return message if isinstance(message, str) else json.dumps(payload, sort_keys=True)
    return ""


def _status(entry: dict[str, Any]) -> int | None:
    request = entry.get("httpRequest")
    if isinstance(request, dict):
        status = request.get("status")
        if isinstance(status, int):
            return status
    return None


def _entry_verdict(entry: dict[str, Any]) -> Verdict | None:
    """The verdict one LogEntry decides, or ``None`` when it decides nothing."""
    text = entry_text(entry)
    summary = _SUMMARY.search(text)
    if summary:
        return Verdict(True, f"tick summary {summary.group(1)}")
    status = _status(entry)
    lowered = text.lower()
    if "refused caller" in lowered:
        # dispatch's own OIDC check; a token from another identity is a caller problem.
        cause: Cause = "iam" if "caller" in lowered and not _AUD.search(text) else "audience"
        return Verdict(False, f"dispatch refused the tick: {_first_line(text)}", cause)
    if status == 401:
        # Cloud Run refuses a token whose aud is neither its run.app URL nor a custom audience.
        return Verdict(False, f"HTTP 401: {_first_line(text) or 'unauthenticated'}", "audience")
    if "tick failed" in lowered or "bad configuration" in lowered:
        return Verdict(False, _first_line(text), _cause_of_error(text) or "dispatch")
    if status == 403:
        # Cloud Run's own refusal of an invoker without run.invoker says so; any other
        # 403 on the scheduler's call is ingress refusing a request it counts as external.
        iam = "not authorized" in lowered or "permission" in lowered
        detail = _first_line(text) or "forbidden"
        return Verdict(False, f"HTTP 403: {detail}", "iam" if iam else "ingress")
    if status == 404:
        return Verdict(False, f"HTTP 404: {_first_line(text) or 'not found'}", "ingress")
    if status is not None and status >= 500 and text:
        cause = _cause_of_error(text) or "dispatch"
        return Verdict(False, f"HTTP {status}: {_first_line(text)}", cause)
    return None


def _scheduler_entry_verdict(entry: dict[str, Any]) -> Verdict | None:
    """The verdict of the scheduler job's own attempt log, used when dispatch's decide none.

    Its ``status`` names the HTTP answer's code (PERMISSION_DENIED for any 403), so it
    cannot tell IAM from ingress itself; a 403 or 404 that left no decisive entry in
    dispatch's logs never reached the service, which is what ingress refusing does.
    """
    status = _status(entry)
    if status is None or status < 400:
        return None
    payload = entry.get("jsonPayload")
    url = payload.get("url", "") if isinstance(payload, dict) else ""
    detail = f"the scheduler's call to {url or 'dispatch'} got HTTP {status}"
    if status == 401:
        return Verdict(False, detail, "audience")
    if status in (403, 404):
        return Verdict(False, detail, "ingress")
    return Verdict(False, detail, "dispatch")


def logs_verdict(
    entries: Sequence[dict[str, Any]], not_before: datetime | None = None
) -> Verdict | None:
    """Judge ``gcloud logging read --format=json`` output; ``None``: nothing decisive yet.

    dispatch's own entries (Cloud Run's request log and the function's lines) decide
    first, the newest decisive one winning, so that a tick summary after a failure means
    the failure was fixed; entries are sorted by ``timestamp`` here, whatever gcloud's
    order. Only when none decides do the scheduler job's attempt logs. Entries older
    than ``not_before`` (aware), or without a timestamp, are ignored: a summary from
    before the deploy proves nothing about it.
    """
    floor = not_before or datetime.min.replace(tzinfo=UTC)
    stamped = [(t, e) for e in entries if (t := _timestamp(e)) is not None and t >= floor]
    ordered = [e for _, e in sorted(stamped, key=lambda te: te[0], reverse=True)]
    scheduler = [e for e in ordered if _resource_type(e) == "cloud_scheduler_job"]
    service = [e for e in ordered if _resource_type(e) != "cloud_scheduler_job"]
    for entry in service:
        verdict = _entry_verdict(entry)
        if verdict is not None:
            return verdict
    for entry in scheduler:
        verdict = _scheduler_entry_verdict(entry)
        if verdict is not None:
            return verdict
    return None


def _timestamp(entry: dict[str, Any]) -> datetime | None:
    value = entry.get("timestamp")
    if not isinstance(value, str):
        return None
    try:
        # RFC 3339 with Z and up to nanoseconds, which fromisoformat truncates to micro.
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _resource_type(entry: dict[str, Any]) -> str:
    resource = entry.get("resource")
    kind = resource.get("type") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) else ""


def apply_verdict(returncode: int, output: str) -> Verdict:
    """Judge ``firecron apply`` of the one-shot schedule."""
    if returncode == 0:
        return Verdict(True, "one-shot hello schedule applied")
    cause = _cause_of_error(output)
    return Verdict(False, _first_line(output) or f"firecron exited with {returncode}", cause)


def runs_verdict(runs: Sequence[dict[str, Any]]) -> Verdict | None:
    """Judge ``firecron runs --schedule ID --json``; ``None`` while no run has ended."""
    for run in runs:
        state = run.get("state")
        if state == "succeeded":
            return Verdict(True, f"run {run.get('id')} succeeded")
        if state in _END_STATES:
            error = run.get("error") or "no error recorded"
            return Verdict(False, f"run {run.get('id')} ended {state}: {error}", "worker")
    return None


def one_shot_yaml(schedule_id: str, at: datetime) -> str:
    """A schedules file with one ``hello`` run due at ``at`` (aware)."""
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        "schedules:\n"
        f"  - id: {schedule_id}\n"
        "    description: make smoke's one-shot proof of a deploy\n"
        f'    at: "{when}"\n'
        "    target: {function: hello}\n"
        "    params: {name: smoke}\n"
    )


# --- The commands and the waiting: everything below runs processes. ----------------------

_POLL_EVERY_S = 5.0


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        # The commands are the Makefile's own (gcloud, firecron), never user input.
        return subprocess.run(list(command), capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        return subprocess.CompletedProcess(list(command), 127, "", f"{command[0]}: {exc}")


def _poll(attempt: Callable[[], Verdict | None], timeout_s: float, waiting_for: str) -> Verdict:
    deadline = time.monotonic() + timeout_s
    while True:
        verdict = attempt()
        if verdict is not None:
            return verdict
        if time.monotonic() >= deadline:
            return Verdict(False, f"no {waiting_for} within {timeout_s:.0f} s", "stalled")
        time.sleep(_POLL_EVERY_S)


def _step_scheduler(command: Sequence[str]) -> Verdict:
    done = _run(command)
    return scheduler_verdict(done.returncode, done.stderr)


def _step_logs(command: Sequence[str], timeout_s: float, window_s: float) -> Verdict:
    not_before = datetime.now(UTC) - timedelta(seconds=window_s)

    def attempt() -> Verdict | None:
        done = _run(command)
        if done.returncode != 0:
            iam = _cause_of_error(done.stderr) == "iam"
            return Verdict(False, _first_line(done.stderr), "iam" if iam else None)
        try:
            entries = json.loads(done.stdout or "[]")
        except json.JSONDecodeError:
            return Verdict(False, "gcloud logging read did not print JSON")
        return logs_verdict(entries if isinstance(entries, list) else [], not_before)

    return _poll(attempt, timeout_s, "tick summary or failure in dispatch's logs")


def _step_hello(firecron: str, store: str, timeout_s: float) -> Verdict:
    now = datetime.now(UTC)
    schedule_id = f"smoke-hello-{now.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smoke.yaml"
        path.write_text(one_shot_yaml(schedule_id, now + HELLO_DELAY), encoding="utf-8")
        done = _run([firecron, "apply", str(path), "--store", store])
    applied = apply_verdict(done.returncode, done.stderr or done.stdout)
    if not applied.ok:
        return applied
    print(f"smoke: hello applied {schedule_id}, due in {HELLO_DELAY.seconds} s", flush=True)

    def attempt() -> Verdict | None:
        listed = _run([firecron, "runs", "--schedule", schedule_id, "--store", store, "--json"])
        if listed.returncode != 0:
            return apply_verdict(listed.returncode, listed.stderr)
        runs = json.loads(listed.stdout or "[]")
        return runs_verdict(runs if isinstance(runs, list) else [])

    return _poll(attempt, timeout_s, f"ended run of {schedule_id}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m firecron._smoke", description=__doc__)
    steps = parser.add_subparsers(dest="step", required=True)
    sched = steps.add_parser("scheduler", help="run the command after --: force a tick")
    sched.add_argument("command", nargs=argparse.REMAINDER)
    logs = steps.add_parser("logs", help="poll the command after --: gcloud logging read")
    logs.add_argument("--timeout", type=float, default=120.0)
    logs.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="ignore entries older than this many seconds before the step (default 60)",
    )
    logs.add_argument("command", nargs=argparse.REMAINDER)
    hello = steps.add_parser("hello", help="apply a one-shot hello schedule, wait for its run")
    hello.add_argument("--store", required=True)
    hello.add_argument("--firecron", default="firecron")
    hello.add_argument("--timeout", type=float, default=180.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one step; 0 when it proved its part, 1 on a failure, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    command = [c for c in getattr(args, "command", []) if c != "--"]
    if args.step != "hello" and not command:
        print(f"error: smoke {args.step} needs a command after --", file=sys.stderr)
        return 2
    started = time.monotonic()
    if args.step == "scheduler":
        verdict = _step_scheduler(command)
    elif args.step == "logs":
        verdict = _step_logs(command, args.timeout, args.window)
    else:
        verdict = _step_hello(args.firecron, args.store, args.timeout)
    line = verdict.line(args.step, time.monotonic() - started)
    print(line, file=sys.stdout if verdict.ok else sys.stderr, flush=True)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
