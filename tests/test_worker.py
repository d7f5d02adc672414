"""The worker SDK end to end: real functions-framework processes, a real SQLite store.

``functions/main.py`` (``hello``, ``sleep``, ``fail``) and ``tests/_worker_app.py``
(``sleepy`` with a short heartbeat, ``bad_output``) are served by the real
``functions-framework`` in subprocesses sharing one database file with the test. Runs
are created directly in the store and delivered as the dispatcher would: signed POSTs
of the dispatch body. Waiting is a bounded poll of the store (``_poll.wait_run``),
never a sleep or a timed assertion.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import httpx
import pytest

from _factories import make_run
from _faults import UpdatesFail
from _loop import loop_thread
from _poll import poll, wait_run
from _workers import TEST_SOURCE, WorkerProcess, serve_worker, serve_workers, worker_env
from firecron.core import lifecycle
from firecron.core.lifecycle import Change
from firecron.core.models import RetryPolicy, Target
from firecron.core.runs import Run, RunState, RunTrigger
from firecron.dispatch import Dispatcher
from firecron.errors import StoreError
from firecron.settings import Settings
from firecron.store.sqlite import SQLiteStore
from firecron.transport.signing import signature_headers

SECRET = "whsec_ZmlyZWNyb24td29ya2VyLXRlc3Qtc2VjcmV0"
MAIN_TARGETS = ["hello", "sleep", "fail"]
TEST_TARGETS = ["sleepy", "bad_output"]


@dataclass
class Stack:
    """The served workers and the database they share."""

    db_path: Path
    workers: dict[str, WorkerProcess]
    env: dict[str, str]
    log_dir: Path

    def url(self, target: str) -> str:
        return self.workers[target].url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("worker")
    db_path = tmp / "x.db"
    env = worker_env(f"sqlite:///{db_path}", secrets=[SECRET])
    with (
        serve_workers(MAIN_TARGETS, env=env, log_dir=tmp) as main_workers,
        serve_workers(TEST_TARGETS, env=env, source=TEST_SOURCE, log_dir=tmp) as test_workers,
    ):
        stack = Stack(db_path, {**main_workers, **test_workers}, env, tmp)
        yield stack
        dead = [w for w in stack.workers.values() if not w.alive]
        for worker in dead:
            sys.stderr.write(worker.logs())
        assert not dead, f"worker processes died: {[w.target for w in dead]}"


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(stack.db_path)
    yield store
    await store.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0)) as c:
        yield c


def _now() -> datetime:
    return datetime.now(UTC)


async def new_run(db: SQLiteStore, function: str, **overrides: Any) -> Run:
    """A pending attempt-1 run of the worker ``function``, stored."""
    schedule_id = f"{function.replace('_', '-')}-{uuid4().hex[:10]}"
    created = await db.create_run(
        make_run(schedule_id, target=Target(function=function), **overrides)
    )
    assert created is not None
    return created


def body_of(run: Run, *, attempt: int | None = None) -> bytes:
    """The dispatch body of ``run``'s current attempt, compact JSON as the dispatcher sends."""
    number = run.attempt if attempt is None else attempt
    payload = {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": run.scheduled_for.isoformat().replace("+00:00", "Z"),
        "attempt": number,
        "trigger": (RunTrigger.retry if number > 1 else run.trigger).value,
        "params": run.params,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed(
    run: Run,
    *,
    attempt: int | None = None,
    secrets: tuple[str, ...] = (SECRET,),
    at: datetime | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a delivery of ``run`` (its current attempt unless given)."""
    body = body_of(run, attempt=attempt)
    key = f"{run.id}/{run.attempt if attempt is None else attempt}"
    headers = {
        "content-type": "application/json",
        "idempotency-key": key,
        **signature_headers(key, at or _now(), body, secrets),
    }
    return headers, body


async def deliver(
    client: httpx.AsyncClient, url: str, run: Run, **kwargs: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a signed delivery and read the whole answer (for 202: until the run ended)."""
    headers, body = signed(run, **kwargs)
    response = await client.post(url, content=body, headers=headers)
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return response, lines


# --- the SDK as a library (no server) ---------------------------------------------


def test_package_exports_the_sdk() -> None:
    import firecron

    # Importing the submodule explicitly must not rebind the package's `worker`.
    importlib.import_module("firecron.worker")
    assert firecron.__all__ == [
        "FENCE_HEADER",
        "AsyncClient",
        "Client",
        "Fenced",
        "RunContext",
        "State",
        "trigger",
        "worker",
    ]
    assert callable(firecron.worker)
    assert firecron.worker is sys.modules["firecron.worker"].worker
    assert firecron.RunContext is sys.modules["firecron.worker"].RunContext


def test_decorator_registers_and_keeps_the_name() -> None:
    import firecron
    from firecron.worker import declared_in

    def job(ctx: firecron.RunContext) -> None:
        return None

    bare = firecron.worker(job)
    configured = firecron.worker(heartbeat_interval=timedelta(seconds=5))(job)
    declared = declared_in(sys.modules[__name__])
    # Bare: no interval of its own (a fifth of each run's lease).
    for handler, interval in ((bare, None), (configured, timedelta(seconds=5))):
        assert handler.__name__ == "job"
        [entry] = [d for d in declared if d.handler is handler]
        assert (entry.name, entry.heartbeat_interval) == ("job", interval)
    firecron.worker(heartbeat_interval=timedelta(seconds=100))  # a third of the 5-minute lease
    for bad in (timedelta(0), timedelta(seconds=-1), timedelta(seconds=101)):
        with pytest.raises(ValueError, match="heartbeat_interval"):
            firecron.worker(heartbeat_interval=bad)


def test_standalone_context_for_unit_tests() -> None:
    from firecron import RunContext

    ctx = RunContext(
        run_id="r",
        schedule_id="s",
        scheduled_for=datetime(2027, 1, 1, tzinfo=UTC),
        params={"token": "hunter2"},
    )
    ctx.heartbeat()  # no execution behind it: does nothing
    assert not ctx.cancelled
    assert ctx.attempt == 1
    assert ctx.trigger is RunTrigger.schedule
    assert "hunter2" not in repr(ctx)


def test_output_limit_is_64_kib_of_compact_json() -> None:
    from firecron.worker import MAX_OUTPUT_BYTES, _encode_output

    overhead = len('{"b":""}')
    fits = _encode_output({"b": "x" * (MAX_OUTPUT_BYTES - overhead)})
    assert fits.error is None
    too_big = _encode_output({"b": "x" * (MAX_OUTPUT_BYTES - overhead + 1)})
    assert too_big.error is not None
    assert too_big.error.startswith("output too large")
    assert not too_big.retry
    assert _encode_output((1, 2)).output == [1, 2]
    assert _encode_output(float("nan")).error is not None


# --- served workers ---------------------------------------------------------------


async def test_hello_succeeds_and_records_its_output(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    run = await new_run(db, "hello", params={"name": "firecron"})
    response, lines = await deliver(client, stack.url("hello"), run)

    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert lines[0] == {"run_id": run.id, "state": "running"}
    assert lines[-1] == {"run_id": run.id, "state": "succeeded", "recorded": True}
    stored = await db.get_run(run.id)
    assert stored is not None
    assert stored.state is RunState.succeeded
    assert stored.output == {"greeting": "hello firecron"}
    assert stored.error is None
    assert stored.watch_at is None
    assert stored.started_at is not None
    assert stored.ended_at is not None
    assert [(a.number, a.outcome) for a in stored.attempts] == [(1, RunState.succeeded)]
    assert stored.attempts[0].started_at == stored.started_at


async def test_protocol_errors(stack: Stack, db: SQLiteStore, client: httpx.AsyncClient) -> None:
    url = stack.url("hello")
    assert (await client.get(url)).status_code == 405

    run = await new_run(db, "hello")
    headers, _ = signed(run)
    garbage = b'{"run_id": 1}'
    key = headers["webhook-id"]
    bad = {**headers, **signature_headers(key, _now(), garbage, [SECRET])}
    response = await client.post(url, content=garbage, headers=bad)
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid body")

    ghost = run.model_copy(update={"id": run.id + "-ghost"})
    response, _ = await deliver(client, url, ghost)
    assert response.status_code == 404
    assert "unknown run" in response.json()["error"]

    # A valid signature over a body naming another attempt than its webhook-id.
    body = body_of(run, attempt=2)
    mismatched = {**headers, **signature_headers(key, _now(), body, [SECRET])}
    response = await client.post(url, content=body, headers=mismatched)
    assert response.status_code == 400
    assert "webhook-id" in response.json()["error"]

    stored = await db.get_run(run.id)
    assert stored == run  # nothing was written


async def test_ack_is_early_and_the_run_survives_the_disconnect(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    run = await new_run(db, "sleep", params={"seconds": 4})
    headers, body = signed(run)
    async with client.stream("POST", stack.url("sleep"), content=body, headers=headers) as resp:
        # Status and headers are here; the body is still being produced.
        assert resp.status_code == 202
        running = await db.get_run(run.id)
        assert running is not None
        assert running.state is RunState.running
        assert running.heartbeat_at is not None
        assert running.ended_at is None

        # A second delivery of the same attempt while it runs is acknowledged, not run.
        response, _ = await deliver(client, stack.url("sleep"), run)
        assert response.status_code == 200
        assert response.json()["status"] == "duplicate"
        assert response.json()["state"] == "running"
    # Leaving the block closed the connection, as the dispatcher does after the ack.

    done = await wait_run(db, run.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    assert done.output == {"slept": 4.0}
    assert len(done.attempts) == 1


async def test_a_cloud_tasks_delivery_is_answered_once_the_end_is_recorded(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    run = await new_run(db, "hello", params={"name": "tasks"})
    headers, body = signed(run)
    headers["X-CloudTasks-TaskName"] = "some-task"
    response = await client.post(stack.url("hello"), content=body, headers=headers)
    # No early 202: the answer is the final line, and the end is already stored.
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"run_id": run.id, "state": "succeeded", "recorded": True}
    stored = await db.get_run(run.id)
    assert stored is not None
    assert stored.state is RunState.succeeded
    assert stored.output == {"greeting": "hello tasks"}


async def test_duplicate_after_the_end_is_not_executed(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    run = await new_run(db, "hello")
    response, _ = await deliver(client, stack.url("hello"), run)
    assert response.status_code == 202
    finished = await db.get_run(run.id)
    assert finished is not None
    assert finished.state is RunState.succeeded

    response, lines = await deliver(client, stack.url("hello"), run)  # fresh signature
    assert response.status_code == 200
    assert lines == [{"status": "duplicate", "run_id": run.id, "attempt": 1, "state": "succeeded"}]
    again = await db.get_run(run.id)
    assert again == finished
    assert again is not None
    assert again.version == finished.version


async def test_failure_retries_then_fails(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    url = stack.url("fail")
    run = await new_run(db, "fail", params={"message": "boom"}, retry=RetryPolicy(max_attempts=2))
    response, lines = await deliver(client, url, run)
    assert response.status_code == 202
    assert lines[-1]["state"] == "retry_wait"
    first = await db.get_run(run.id)
    assert first is not None
    assert first.state is RunState.retry_wait
    assert first.error == "RuntimeError: boom"
    assert first.retry_at is not None
    assert first.watch_at == first.retry_at
    assert [(a.number, a.outcome, a.error) for a in first.attempts] == [
        (1, RunState.failed, "RuntimeError: boom")
    ]

    # The watchdog's retry: attempt 2 becomes pending.
    change = lifecycle.next_attempt(first, _now(), lifecycle.RunTimeouts())
    second = await db.update_run(first.id, change.expect, change.changes, current=first)
    assert second is not None
    assert second.attempt == 2

    # A late delivery of attempt 1 is stale: acknowledged, not run.
    response, _ = await deliver(client, url, second, attempt=1)
    assert response.status_code == 200
    assert response.json() == {
        "status": "duplicate",
        "run_id": run.id,
        "attempt": 2,
        "state": "pending",
    }

    response, lines = await deliver(client, url, second)
    assert response.status_code == 202
    assert lines[-1] == {"run_id": run.id, "state": "failed", "recorded": True}
    final = await db.get_run(run.id)
    assert final is not None
    assert final.state is RunState.failed
    assert final.error == "RuntimeError: boom"
    assert final.ended_at is not None
    assert final.watch_at is None
    assert [(a.number, a.outcome) for a in final.attempts] == [
        (1, RunState.failed),
        (2, RunState.failed),
    ]


async def test_bad_signatures_are_refused_and_nothing_runs(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    url = stack.url("hello")
    run = await new_run(db, "hello")
    headers, body = signed(run)
    forged = base64.b64encode(b"\0" * 32).decode()
    expired_headers, _ = signed(run, at=_now() - timedelta(minutes=6))
    wrong_headers, _ = signed(run, secrets=("whsec_bm90LXRoZS1zZWNyZXQ=",))
    cases = {
        "unsigned": {k: v for k, v in headers.items() if not k.startswith("webhook-")},
        "forged": {**headers, "webhook-signature": f"v1,{forged}"},
        "expired": expired_headers,
        "wrong secret": wrong_headers,
    }
    for case, case_headers in cases.items():
        response = await client.post(url, content=body, headers=case_headers)
        assert response.status_code == 401, case
        error = response.json()["error"]
        assert error, case
        assert "\n" not in error, case
        assert SECRET not in error, case
    assert await db.get_run(run.id) == run  # still pending, untouched

    # The real request runs; a replay of its exact bytes is acknowledged and dropped.
    response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 202
    assert response.text.splitlines()[-1] == json.dumps(
        {"run_id": run.id, "state": "succeeded", "recorded": True}, separators=(",", ":")
    )
    finished = await db.get_run(run.id)
    replay = await client.post(url, content=body, headers=headers)
    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"
    after = await db.get_run(run.id)
    assert after is not None
    assert finished is not None
    assert after.version == finished.version
    assert len(after.attempts) == 1


LEASE = timedelta(seconds=3)
"""A run's ``heartbeat_timeout`` short enough that ``sleepy`` renews its lease within
seconds (about every 1.8 s: when 1.2 s of it are left), not only reads its run."""


async def test_cancel_request_stops_a_long_worker(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient
) -> None:
    run = await new_run(db, "sleepy", params={"seconds": 600}, heartbeat_timeout=LEASE)
    headers, body = signed(run)
    async with client.stream("POST", stack.url("sleepy"), content=body, headers=headers) as resp:
        assert resp.status_code == 202
    running = await db.get_run(run.id)
    assert running is not None
    assert running.heartbeat_at is not None
    # Renewals flow (check-ins every 0.3 s) before the watchdog's cancel arrives.
    first_beat = running.heartbeat_at
    await wait_run(db, run.id, lambda r: r.heartbeat_at is not None and r.heartbeat_at > first_beat)

    cancelled = await db.update_run(
        run.id, [RunState.running], {"cancel_requested": True, "updated_at": _now()}
    )
    assert cancelled is not None

    done = await wait_run(db, run.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    assert isinstance(done.output, dict)
    assert done.output["cancelled"] is True
    assert isinstance(done.output["slept"], float)
    assert done.output["slept"] < 600  # stopped early, long before its 10 minutes


async def test_killed_worker_leaves_a_running_run_that_the_watchdog_declares_lost(
    stack: Stack, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # A database of its own: the watchdog pass below must see this run only.
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    db = SQLiteStore(tmp_path / "killed.db")
    try:
        run = await new_run(db, "sleepy", params={"seconds": 600}, heartbeat_timeout=LEASE)
        env = worker_env(url, secrets=[SECRET])
        with serve_worker("sleepy", env=env, source=TEST_SOURCE, log_dir=tmp_path) as proc:
            headers, body = signed(run)
            async with client.stream("POST", proc.url, content=body, headers=headers) as resp:
                assert resp.status_code == 202
            started = await db.get_run(run.id)
            assert started is not None
            assert started.heartbeat_at is not None
            first_beat = started.heartbeat_at
            await wait_run(
                db, run.id, lambda r: r.heartbeat_at is not None and r.heartbeat_at > first_beat
            )
            proc.kill()  # returns once none of its processes is left to write
            assert not proc.alive
        stale = await db.get_run(run.id)
        assert stale is not None
        assert stale.state is RunState.running
        assert stale.heartbeat_at is not None
        assert stale.ended_at is None

        # The watchdog's pass once the lease has run out (the last renewal is older than
        # the run's heartbeat_timeout): the attempt is lost and retried. Its
        # compare-and-set is on the version read here, so it would not apply had
        # anything written the run since.
        settings = Settings(store_url=url, signing_secrets=(SECRET,), allow_private_targets=True)
        d = Dispatcher(db, settings)
        try:
            summary = await d.tick(stale.heartbeat_at + LEASE)
        finally:
            await d.aclose()
        assert summary.events["run.retrying"] == 1
        lost = await db.get_run(run.id)
        assert lost is not None
        assert lost.state is RunState.retry_wait
        assert [(a.number, a.outcome) for a in lost.attempts] == [(1, RunState.lost)]
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("huge", "output too large: 65,547 bytes of JSON, the limit is 65,536 (64 KiB)"),
        ("set", "output is not JSON-serialisable: TypeError: Object of type set"),
    ],
)
async def test_unstorable_output_fails_the_run(
    stack: Stack, db: SQLiteStore, client: httpx.AsyncClient, kind: str, error: str
) -> None:
    run = await new_run(db, "bad_output", params={"kind": kind})
    response, lines = await deliver(client, stack.url("bad_output"), run)
    assert response.status_code == 202
    assert lines[-1]["state"] == "failed"
    stored = await db.get_run(run.id)
    assert stored is not None
    # Failed at once, not retried: running it again would produce the same output.
    assert stored.state is RunState.failed
    assert stored.attempt == 1
    assert stored.retry.max_attempts == 3
    assert stored.error is not None
    assert stored.error.startswith(error)
    assert stored.output is None


# --- attempts of one run never overlap ----------------------------------------------


def _dispatcher(db: SQLiteStore, db_path: Path, worker: WorkerProcess) -> Dispatcher:
    """A dispatcher on ``db`` whose function targets resolve to ``worker``."""
    settings = Settings(
        store_url=f"sqlite:///{db_path}",
        signing_secrets=(SECRET,),
        allow_private_targets=True,
        functions_base_url=worker.url,
        ack_timeout=timedelta(seconds=5),
    )
    return Dispatcher(db, settings)


async def _start_and_beat(client: httpx.AsyncClient, url: str, db: SQLiteStore, run: Run) -> Run:
    """Deliver ``run``'s current attempt to ``url`` and wait until it has heartbeaten."""
    headers, body = signed(run)
    async with client.stream("POST", url, content=body, headers=headers) as resp:
        assert resp.status_code == 202
    started = await wait_run(db, run.id, lambda r: r.heartbeat_at is not None)
    first_beat = started.heartbeat_at
    assert first_beat is not None
    return await wait_run(
        db, run.id, lambda r: r.heartbeat_at is not None and r.heartbeat_at > first_beat
    )


async def test_a_timed_out_attempt_is_retried_only_once_it_has_stopped(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db_path = tmp_path / "timeout.db"
    db = SQLiteStore(db_path)
    try:
        run = await new_run(
            db,
            "sleepy",
            params={"seconds": 600},
            timeout=timedelta(seconds=1),
            retry=RetryPolicy(max_attempts=2, backoff=timedelta(seconds=1)),
            heartbeat_timeout=LEASE,
        )
        env = worker_env(f"sqlite:///{db_path}", secrets=[SECRET])
        with serve_worker("sleepy", env=env, source=TEST_SOURCE, log_dir=tmp_path) as proc:
            d = _dispatcher(db, db_path, proc)
            try:
                await _start_and_beat(client, proc.url, db, run)
                # A heartbeat past the timeout: the attempt is alive and overdue.
                running = await wait_run(
                    db,
                    run.id,
                    lambda r: (
                        r.started_at is not None
                        and r.heartbeat_at is not None
                        and r.heartbeat_at >= r.started_at + timedelta(seconds=1)
                    ),
                )
                assert running.heartbeat_at is not None
                # The watchdog's pass then: a cancel request, and no retry yet.
                summary = await d.tick(running.heartbeat_at)
                assert summary.watched == 1
                assert summary.fired == 0
                assert not summary.events  # neither retrying nor timed out: still running
                # The worker sees the request in a heartbeat reply, its function returns,
                # and it records the end: this is what lets the retry go.
                stopped = await wait_run(db, run.id, lambda r: r.state is RunState.retry_wait)
                [first] = stopped.attempts
                assert first.outcome is RunState.timed_out
                assert first.error == "timed out after 1s"  # recorded by the worker
                assert first.ended_at is not None
                assert first.ended_at > running.heartbeat_at
                assert stopped.retry_at is not None
                retry = await d.tick(stopped.retry_at)
                assert retry.fired == 1
                second = await wait_run(
                    db, run.id, lambda r: r.attempt == 2 and r.started_at is not None
                )
            finally:
                await d.aclose()
        assert second.started_at is not None
        # Attempt 2 began after attempt 1 had ended: they never overlapped.
        assert second.started_at >= first.ended_at
        assert second.attempts[0] == first
    finally:
        await db.close()


async def test_a_frozen_attempt_resumed_after_its_retry_records_nothing(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db_path = tmp_path / "frozen.db"
    db = SQLiteStore(db_path)
    try:
        run = await new_run(
            db,
            "sleepy",
            params={"seconds": 600},
            retry=RetryPolicy(max_attempts=2, backoff=timedelta(seconds=1)),
            heartbeat_timeout=LEASE,
        )
        env = worker_env(f"sqlite:///{db_path}", secrets=[SECRET])
        with (
            serve_worker("sleepy", env=env, source=TEST_SOURCE, log_dir=tmp_path) as old,
            serve_worker("sleepy", env=env, source=TEST_SOURCE, log_dir=tmp_path) as new,
        ):
            d = _dispatcher(db, db_path, new)  # the retry goes to the other instance
            try:
                running = await _start_and_beat(client, old.url, db, run)
                # Freeze the first instance (as a throttled or paused one would be).
                os.killpg(old.process.pid, signal.SIGSTOP)
                try:
                    assert running.heartbeat_at is not None
                    lost_at = running.heartbeat_at + LEASE
                    assert (await d.tick(lost_at)).events["run.retrying"] == 1
                    waiting = await db.get_run(run.id)
                    assert waiting is not None
                    assert waiting.retry_at is not None
                    assert (await d.tick(waiting.retry_at)).fired == 1
                    second = await wait_run(
                        db,
                        run.id,
                        lambda r: (
                            r.attempt == 2
                            and r.heartbeat_at is not None
                            and r.started_at is not None
                            and r.heartbeat_at > r.started_at
                        ),
                    )
                finally:
                    os.killpg(old.process.pid, signal.SIGCONT)
                # The resumed attempt learns at its next check-in that it is stale, its
                # function stops (ctx.cancelled), and its end is refused.
                poll(
                    old.logs,
                    lambda text: f"the end of run {run.id} attempt 1 was not recorded" in text,
                    what="the stale attempt's refused end in the first worker's log",
                )
                assert f"run {run.id} attempt 1 is no longer running here" in old.logs()
                # Attempt 2 is untouched by attempt 1: still running, its own record.
                now = await db.get_run(run.id)
                assert now is not None
                assert (now.state, now.attempt, now.output) == (RunState.running, 2, None)
                assert now.started_at == second.started_at
                assert [(a.number, a.outcome) for a in now.attempts] == [
                    (1, RunState.lost),
                    (2, None),
                ]
                # Its deadline follows its own renewals only.
                assert now.heartbeat_at is not None
                assert now.deadline_at == now.heartbeat_at + LEASE
            finally:
                await d.aclose()
    finally:
        await db.close()


def test_a_failed_heartbeat_never_stops_the_heartbeats(tmp_path: Path) -> None:
    from firecron.outbox import Deliverer
    from firecron.store.base import Store
    from firecron.worker import RunContext, _Execution, _Runtime

    async def open_db() -> SQLiteStore:
        return SQLiteStore(tmp_path / "beat.db")

    with loop_thread() as (loop, call):
        db = call(open_db())
        try:
            run = call(db.create_run(make_run("beat", target=Target(function="sleepy"))))
            change = lifecycle.start(run, _now(), lifecycle.RunTimeouts())
            started = call(db.update_run(run.id, change.expect, change.changes, current=run))
            flaky = UpdatesFail(db, failures=1)
            runtime = _Runtime(
                Settings(), cast(Store, flaky), loop, os.getpid(), cast(Deliverer, None)
            )
            ctx = RunContext(
                run_id=run.id, schedule_id=run.schedule_id, scheduled_for=run.scheduled_for
            )
            execution = _Execution(runtime, lambda c: None, ctx, started, timedelta(seconds=1))
            execution.beat()  # the store refuses it: logged, never raised into the function
            assert not ctx.cancelled
            execution.beat()  # the next one goes through
            beaten = call(db.get_run(run.id))
            assert beaten.heartbeat_at > started.heartbeat_at
            assert not ctx.cancelled
        finally:
            call(db.close())


# --- the registry of declared workers ----------------------------------------------


def test_a_source_executed_again_declares_only_its_new_workers(tmp_path: Path) -> None:
    """``firecron dev`` executes the source again on every change: the registry then
    answers for the new execution only, with no entries left from the earlier one."""
    from firecron.dev import _load, find_workers
    from firecron.worker import declared_in

    source = tmp_path / "main.py"
    declare = "@firecron.worker\ndef {0}(ctx: firecron.RunContext) -> None:\n    return None\n"
    source.write_text("import firecron\n" + declare.format("a") + declare.format("b"))
    first = _load(source)
    assert [d.name for d in declared_in(first)] == ["a", "b"]
    source.write_text("import firecron\n" + declare.format("b") + "alias = b\n")
    second = _load(source)
    assert [d.name for d in declared_in(second)] == ["b"]
    assert declared_in(first) == []  # an earlier execution is never served
    # dev serves the names the module binds to its workers.
    assert find_workers(source) == ["alias", "b"]
    source.write_text("import firecron\n")
    assert find_workers(source) == []


# --- recording the end, in process --------------------------------------------------


@dataclass
class _InProcess:
    """A SQLite store on a loop thread, and a started attempt-1 run of ``sleepy``."""

    db: SQLiteStore
    loop: asyncio.AbstractEventLoop
    started: Run

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[_InProcess]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def open_db() -> SQLiteStore:
        return SQLiteStore(tmp_path / "end.db")

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    db: SQLiteStore = call(open_db())
    try:
        run = call(db.create_run(make_run("end", target=Target(function="sleepy"))))
        change = lifecycle.start(run, _now(), lifecycle.RunTimeouts())
        started = call(db.update_run(run.id, change.expect, change.changes, current=run))
        yield _InProcess(db, loop, started)
    finally:
        call(db.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class _EndInterference:
    """A real store that, on the worker's end write (a change of state), first lets
    ``before_end`` run and then, once, commits the write and raises anyway.

    Another writer ending the run at the same instant, and a write that commits but
    reports an error, are faults the real backends cannot produce on demand.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.before_end: Callable[[], Awaitable[object]] | None = None
        self.raise_after_commit = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_run(self, *args: Any, **kwargs: Any) -> Run | None:
        ending = "state" in args[2]
        if ending and self.before_end is not None:
            before_end, self.before_end = self.before_end, None
            await before_end()
        written = await self._store.update_run(*args, **kwargs)
        if ending and self.raise_after_commit:
            self.raise_after_commit = False
            raise StoreError("connection reset after the commit")
        return written


def _execution_on(env: _InProcess, store: _EndInterference) -> Any:
    """An execution of ``env.started`` on ``store``, stamping at a fixed clock."""
    from firecron.outbox import Deliverer
    from firecron.store.base import Store
    from firecron.worker import RunContext, _Execution, _Runtime

    fixed = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    runtime = _Runtime(
        Settings(), cast(Store, store), env.loop, os.getpid(), cast(Deliverer, None), lambda: fixed
    )
    run = env.started
    ctx = RunContext(run_id=run.id, schedule_id=run.schedule_id, scheduled_for=run.scheduled_for)
    execution = _Execution(runtime, lambda c: None, ctx, run, timedelta(seconds=1))
    return runtime, execution


def test_an_end_written_by_another_writer_is_not_taken_for_ours(in_process: _InProcess) -> None:
    """The worker's end loses its compare-and-set to another writer that ended the run
    with the same state at the same instant: the worker reports it did not record the
    end (and announces nothing), whatever the timestamps say."""
    from firecron.worker import _encode_output, on_change

    env = in_process
    store = _EndInterference(env.db)
    announced: list[Change] = []
    runtime, execution = _execution_on(env, store)
    now = runtime.now()

    async def someone_else_ends_it() -> object:
        return await env.db.update_run(
            env.started.id,
            [RunState.running],
            {"state": RunState.succeeded, "output": "theirs", "ended_at": now, "updated_at": now},
        )

    store.before_end = someone_else_ends_it

    def hook(before: Run, change: Change, after: Run) -> None:
        announced.append(change)

    on_change.append(hook)
    try:
        final = execution._record(_encode_output("mine"))
    finally:
        on_change.remove(hook)
    assert final == {"run_id": env.started.id, "state": "succeeded", "recorded": False}
    assert announced == []
    stored = env.call(env.db.get_run(env.started.id))
    assert stored.output == "theirs"


def test_an_end_that_committed_before_its_error_is_recorded(in_process: _InProcess) -> None:
    """A write that commits and then fails (a reset after the commit) is recognised by
    the retry as this attempt's own end: recorded, and announced once."""
    from firecron.worker import _encode_output, on_change

    env = in_process
    store = _EndInterference(env.db)
    store.raise_after_commit = True
    announced: list[Change] = []
    _, execution = _execution_on(env, store)

    def hook(before: Run, change: Change, after: Run) -> None:
        announced.append(change)

    on_change.append(hook)
    try:
        final = execution._record(_encode_output("mine"))
    finally:
        on_change.remove(hook)
    assert final == {"run_id": env.started.id, "state": "succeeded", "recorded": True}
    assert [change.new_state for change in announced] == [RunState.succeeded]
    stored = env.call(env.db.get_run(env.started.id))
    assert (stored.state, stored.output) == (RunState.succeeded, "mine")
    assert execution.run == stored
