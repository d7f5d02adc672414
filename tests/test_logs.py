"""Per-attempt logs: the cap rule, the store contract on both stores, the capture in real
functions-framework workers, and ``firecron logs`` (``--attempt``, ``--follow``).

Workers are ``tests/_logs_app.py``; waits poll the store or a process (``tests/_poll.py``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _backend import Backend
from _cli import FIRECRON, clean_env, run_cli
from _factories import T0, store_schedule
from _poll import apoll, poll, wait_run
from _workers import serve_worker
from firecron.cli_logs import logs_explorer_query, logs_explorer_url
from firecron.core.logs import (
    LINE_OVERHEAD_BYTES,
    MAX_ATTEMPT_LOG_BYTES,
    LogBudget,
    LogLine,
    line_size,
)
from firecron.core.runs import Run, RunState
from firecron.errors import InvalidInputError
from firecron.store.base import Store
from firecron.store.sqlite import SQLiteStore
from firecron.worker._logs import AttemptLogs, cloud_logging_line

APP = Path(__file__).resolve().with_name("_logs_app.py")
SECOND = timedelta(seconds=1)


def lines_of(attempt: int, *messages: str, start: int = 1) -> list[LogLine]:
    return [
        LogLine(
            attempt=attempt,
            seq=start + i,
            at=T0 + i * SECOND,
            level="INFO",
            logger="app",
            message=message,
        )
        for i, message in enumerate(messages)
    ]


# -- the cap rule (pure) ----------------------------------------------------------------


def test_a_budget_numbers_lines_and_ends_them_with_one_marker_at_the_cap() -> None:
    limit = 3 * line_size("INFO", "app", "x" * 10)
    budget = LogBudget(2, limit)
    kept = [budget.admit(T0, "INFO", "app", "x" * 10) for _ in range(3)]
    assert [[line.seq for line in got] for got in kept] == [[1], [2], [3]]
    assert budget.used == limit
    # Nothing of the fourth fits: no cut line, only the marker; then nothing at all.
    [marker] = budget.admit(T0, "ERROR", "app", "late")
    assert (marker.seq, marker.attempt, marker.truncated) == (4, 2, True)
    assert "log truncated" in marker.message
    assert budget.admit(T0, "ERROR", "app", "later") == []


def test_the_line_that_crosses_the_cap_is_cut_on_a_character_boundary() -> None:
    limit = line_size("INFO", "app", "a" * 100) + line_size("INFO", "app", "") + 5
    budget = LogBudget(1, limit)
    budget.admit(T0, "INFO", "app", "a" * 100)
    cut, marker = budget.admit(T0, "INFO", "app", "é" * 50)
    # 5 bytes left: two 2-byte characters, never half of the third.
    assert cut.message == "éé"
    assert not cut.truncated
    assert marker.truncated
    assert [cut.seq, marker.seq] == [2, 3]


def test_every_line_counts_its_overhead_so_empty_lines_are_capped_too() -> None:
    budget = LogBudget(1, 10 * LINE_OVERHEAD_BYTES)
    admitted = [line for _ in range(100) for line in budget.admit(T0, "", "", "")]
    assert len(admitted) == 11
    assert admitted[-1].truncated
    with pytest.raises(ValueError, match="below one line"):
        LogBudget(1, LINE_OVERHEAD_BYTES - 1)


# -- the store contract (both stores) ---------------------------------------------------


async def test_appended_lines_are_read_back_in_order_per_attempt(store: Store) -> None:
    await store.append_logs("r1", 2, lines_of(2, "two-a", "two-b"))
    await store.append_logs("r1", 1, lines_of(1, "one-a", "one-b", "one-c"))
    await store.append_logs("r1", 1, lines_of(1, "one-d", start=4))
    await store.append_logs("other", 1, lines_of(1, "not mine"))
    got = await store.get_logs("r1")
    assert [(line.attempt, line.seq, line.message) for line in got] == [
        (1, 1, "one-a"),
        (1, 2, "one-b"),
        (1, 3, "one-c"),
        (1, 4, "one-d"),
        (2, 1, "two-a"),
        (2, 2, "two-b"),
    ]
    assert got[0] == lines_of(1, "one-a")[0]
    assert [line.message for line in await store.get_logs("r1", 2)] == ["two-a", "two-b"]
    after = await store.get_logs("r1", 1, after=2)
    assert [line.seq for line in after] == [3, 4]
    assert [line.seq for line in await store.get_logs("r1", 1, after=1, limit=2)] == [2, 3]
    assert [line.seq for line in await store.get_logs("r1", limit=5)] == [1, 2, 3, 4, 1]
    assert await store.get_logs("r1", 1, after=4) == []
    assert await store.get_logs("r1", 3) == []
    assert await store.get_logs("unknown") == []
    assert await store.get_logs("r1", limit=0) == []


async def test_appending_the_same_lines_again_stores_each_once(store: Store) -> None:
    first = lines_of(1, "a", "b")
    await store.append_logs("r1", 1, first)
    # A retried flush: the same lines again, with the next ones.
    changed = [line.model_copy(update={"message": "changed"}) for line in first]
    await store.append_logs("r1", 1, [*changed, *lines_of(1, "c", start=3)])
    assert [line.message for line in await store.get_logs("r1")] == ["a", "b", "c"]
    await store.append_logs("r1", 1, [])
    assert len(await store.get_logs("r1", 1)) == 3


async def test_bad_log_calls_are_refused_in_one_line_and_write_nothing(store: Store) -> None:
    with pytest.raises(InvalidInputError, match=r"^append_logs: line 2 is of attempt 2, not 1$"):
        await store.append_logs("r1", 1, [*lines_of(1, "a"), *lines_of(2, "b", start=2)])
    with pytest.raises(InvalidInputError, match=r"^append_logs: attempt 0 is below 1$"):
        await store.append_logs("r1", 0, [])
    with pytest.raises(InvalidInputError, match=r"^get_logs: after=3 needs an attempt$"):
        await store.get_logs("r1", after=3)
    assert await store.get_logs("r1") == []


async def test_a_whole_capped_attempt_round_trips_with_its_marker(store: Store) -> None:
    budget = LogBudget(1)
    big = "ü" * 40_000  # 80 KB of UTF-8 a line: four lines reach the cap
    lines = [line for _ in range(6) for line in budget.admit(T0, "INFO", "app", big)]
    assert lines[-1].truncated
    assert len(lines) == 5
    await store.append_logs("run/with:odd-chars", 1, lines)
    got = await store.get_logs("run/with:odd-chars", 1)
    assert got == lines
    assert sum(line_size(x.level, x.logger, x.message) for x in got[:-1]) <= MAX_ATTEMPT_LOG_BYTES


async def test_a_run_id_too_long_for_a_document_id_still_has_its_logs(store: Store) -> None:
    run_id = "r" * 1495
    await store.append_logs(run_id, 1, lines_of(1, "long"))
    await store.append_logs("r" * 1494, 1, lines_of(1, "other"))
    assert [line.message for line in await store.get_logs(run_id, 1)] == ["long"]


async def test_lines_take_an_aware_expiry(store: Store) -> None:
    await store.append_logs("r1", 1, lines_of(1, "a"), expire_at=T0 + timedelta(days=30))
    assert [line.message for line in await store.get_logs("r1")] == ["a"]
    with pytest.raises(InvalidInputError, match="aware"):
        await store.append_logs("r1", 1, lines_of(1, "b", start=2), expire_at=datetime(2027, 1, 1))
    assert [line.message for line in await store.get_logs("r1")] == ["a"]


async def firestore_docs(namespace: str) -> list[dict[str, Any]]:
    """The raw documents of ``{namespace}_logs`` on the emulator."""
    from google.cloud import firestore

    from firecron.store._firestore_private import close_client

    client = firestore.AsyncClient(project="firecron-test")
    try:
        return [
            doc.to_dict() or {} async for doc in client.collection(f"{namespace}_logs").stream()
        ]
    finally:
        await close_client(client)


@pytest.mark.emulator
async def test_firestore_keeps_a_chunk_per_flush_with_its_expiry(firestore_emulator: str) -> None:
    from uuid import uuid4

    from firecron.store.firestore import FirestoreStore

    namespace = f"t{uuid4().hex[:12]}"
    store = FirestoreStore("firecron-test", namespace=namespace)
    try:
        await store.append_logs("r1", 1, lines_of(1, "a", "b"), expire_at=T0)
        await store.append_logs("r1", 1, lines_of(1, "c", start=3))
    finally:
        await store.close()
    docs = sorted(await firestore_docs(namespace), key=lambda d: d["last_seq"])
    assert [(d["run_id"], d["attempt"], d["first_seq"], d["last_seq"]) for d in docs] == [
        ("r1", 1, 1, 2),
        ("r1", 1, 3, 3),
    ]
    assert [d["expire_at"] for d in docs] == [T0, None]
    assert json.loads(docs[0]["lines"])[1][4] == "b"


def test_opening_a_database_from_before_logs_adds_the_table(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "old.db"

    async def use(action: Callable[[SQLiteStore], Any]) -> Any:
        store = SQLiteStore(path)
        try:
            return await action(store)
        finally:
            await store.close()

    asyncio.run(use(lambda s: s.get_logs("r1")))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE firecron_logs")
    asyncio.run(use(lambda s: s.append_logs("r1", 1, lines_of(1, "after the migration"))))
    got = asyncio.run(use(lambda s: s.get_logs("r1")))
    assert [line.message for line in got] == ["after the migration"]


# -- capture in real workers ------------------------------------------------------------


async def fire(backend: Backend, url: str, **fields: Any) -> Run:
    """Store ``fields`` as a schedule targeting the worker at ``url``, due now; tick once;
    return the run it created."""
    now = datetime.now(UTC)
    schedule_id = fields.setdefault("id", "logged")
    await store_schedule(
        backend.store, now, every="1h", target={"url": url, "worker": True}, **fields
    )
    dispatcher = backend.dispatcher()
    try:
        summary = await dispatcher.tick(now)
    finally:
        await dispatcher.aclose()
    assert not summary.errors, summary.errors
    [run] = await backend.store.list_runs(schedule_id=schedule_id)
    return run


async def retry_when_due(backend: Backend, run_id: str) -> None:
    waiting = await wait_run(backend.store, run_id, lambda r: r.state is RunState.retry_wait)
    assert waiting.retry_at is not None
    dispatcher = backend.dispatcher()
    try:
        await dispatcher.tick(waiting.retry_at + SECOND)
    finally:
        await dispatcher.aclose()


async def test_a_worker_stores_each_attempts_records_beside_the_run(
    backend: Backend, tmp_path: Path
) -> None:
    with serve_worker("chatty", env=backend.env(), source=APP, log_dir=tmp_path) as worker:
        run = await fire(
            backend,
            worker.url,
            params={"fail_attempts": 1},
            retry={"max_attempts": 2, "backoff": "1s"},
        )
        await retry_when_due(backend, run.id)
        done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
    assert done.state is RunState.succeeded
    first = await backend.store.get_logs(run.id, 1)
    second = await backend.store.get_logs(run.id, 2)
    expected = [
        ("INFO", "logs_app", "attempt {n} starts"),
        ("WARNING", "logs_app", "rows=7 left=none"),
        ("ERROR", "logs_app", "row failed"),
        ("INFO", "firecron.run", "from ctx.log"),
        ("WARNING", "firecron.run", "ctx.log from another thread"),
    ]
    for n, got in ((1, first), (2, second)):
        assert [line.seq for line in got] == list(range(1, len(got) + 1))
        assert all(line.attempt == n for line in got)
        heads = [(x.level, x.logger, x.message.splitlines()[0]) for x in got[: len(expected)]]
        assert heads == [(lvl, name, msg.format(n=n)) for lvl, name, msg in expected]
        # The traceback is part of the record's text.
        assert "ValueError: bad row 3" in got[2].message
        messages = "\n".join(line.message for line in got)
        assert "plain logging from another thread" not in messages
        assert "debug is below" not in messages
    # The failed attempt ends with the SDK's own record of the exception.
    assert first[-1].level == "ERROR"
    assert "RuntimeError: failing attempt 1 on purpose" in first[-1].message
    assert second[-1].message == "done"
    assert await backend.store.get_logs(run.id) == [*first, *second]
    if backend.url.startswith("firestore://"):
        # Each chunk expires (TTL) the run's retention after it was written: within
        # the run's life plus that retention.
        assert done.retention is not None
        assert done.started_at is not None
        assert done.ended_at is not None
        expiries = [doc["expire_at"] for doc in await firestore_docs(backend.namespace)]
        assert expiries
        for expiry in expiries:
            assert run.created_at + done.retention <= expiry <= done.ended_at + done.retention


async def test_lines_are_stored_while_the_run_works_and_follow_ends_with_it(
    backend: Backend, tmp_path: Path
) -> None:
    barrier = tmp_path / "go"
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    env = clean_env({"FIRECRON_STORE": backend.url, "FIRECRON_NAMESPACE": backend.namespace})
    with serve_worker("chatty", env=backend.env(), source=APP, log_dir=tmp_path) as worker:
        run = await fire(backend, worker.url, params={"wait_for": str(barrier)})
        # A heartbeat flushes the first line while the function still waits.
        await apoll(lambda: backend.store.get_logs(run.id), bool, what="the first line stored")
        assert (await backend.store.get_run(run.id)).state is RunState.running  # type: ignore[union-attr]
        with out.open("w") as sink, err.open("w") as err_sink:
            follower = subprocess.Popen(
                [FIRECRON, "logs", run.id, "--follow"], env=env, stdout=sink, stderr=err_sink
            )
        try:
            poll(out.read_text, lambda text: "waiting for go" in text, what="the followed line")
            assert follower.poll() is None  # still following: the run has not ended
            barrier.touch()
            code = poll(follower.poll, lambda rc: rc is not None, what="follow to end")
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    assert code == 0
    printed = out.read_text().splitlines()
    assert printed[0].endswith(" #1 INFO     logs_app: waiting for go")
    # Everything was printed once, the last line included: follow read after the end.
    assert printed[-1].endswith(" #1 INFO     logs_app: done")
    assert sum("attempt 1 starts" in line for line in printed) == 1
    # On Firestore, stderr names the Logs Explorer query of the full logs.
    shown = logs_explorer_query(run.id) in err.read_text()
    assert shown is backend.url.startswith("firestore://")


async def test_an_attempt_over_the_cap_is_stored_truncated_with_the_marker(
    backend: Backend, tmp_path: Path
) -> None:
    size, count = 1000, 200  # 2 KB of UTF-8 a line, 400 KB in all: over 256 KiB
    env = backend.env(K_SERVICE="firecron-test")
    with serve_worker("flood", env=env, source=APP, log_dir=tmp_path) as worker:
        run = await fire(backend, worker.url, params={"lines": count, "size": size})
        done = await wait_run(backend.store, run.id, lambda r: r.is_terminal)
        stdout = worker.logs()
    assert done.state is RunState.succeeded
    got = await backend.store.get_logs(run.id)
    *kept, marker = got
    assert marker.truncated
    assert marker.seq == len(got)
    assert not any(line.truncated for line in kept)
    assert 100 < len(kept) < count
    stored = sum(line_size(x.level, x.logger, x.message) for x in kept)
    assert MAX_ATTEMPT_LOG_BYTES - line_size("INFO", "logs_app", "") <= stored
    assert stored <= MAX_ATTEMPT_LOG_BYTES
    # Deployed (K_SERVICE set): every record also went to stdout as Cloud Logging JSON,
    # uncapped, labelled with the run id and attempt.
    structured = [
        json.loads(line)
        for line in stdout.splitlines()
        if '"logging.googleapis.com/labels"' in line
    ]
    assert len(structured) == count + 1
    assert structured[-2]["logging.googleapis.com/labels"] == {
        "firecron_run_id": run.id,
        "firecron_attempt": "1",
    }
    assert structured[-2]["severity"] == "INFO"
    assert structured[-2]["message"].startswith(f"{count:06d} é")
    assert (structured[-1]["severity"], structured[-1]["message"]) == (
        "WARNING",
        f"flooded {count} lines",
    )
    # Printed once, as JSON: not also as plain text on stderr.
    assert stdout.count(f"flooded {count} lines") == 1


# -- the CLI ------------------------------------------------------------------------------


def test_logs_prints_the_stored_lines_per_attempt(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "x.db"

    async def seed() -> None:
        store = SQLiteStore(db)
        try:
            await store.append_logs("r1", 1, lines_of(1, "first try"))
            await store.append_logs("r1", 2, lines_of(2, "second try", "multi\nline"))
            await store.create_run(_run("r1"))
        finally:
            await store.close()

    asyncio.run(seed())
    url = f"sqlite:///{db}"
    proc = run_cli("logs", "r1", "--store", url, check=True)
    assert proc.stdout.splitlines() == [
        "2027-01-01T00:00:00Z #1 INFO     app: first try",
        "2027-01-01T00:00:00Z #2 INFO     app: second try",
        "2027-01-01T00:00:01Z #2 INFO     app: multi",
        "line",
    ]
    assert proc.stderr == ""
    only = run_cli("logs", "r1", "--attempt", "2", "--json", "--store", url, check=True)
    assert [json.loads(line)["message"] for line in only.stdout.splitlines()] == [
        "second try",
        "multi\nline",
    ]
    unknown = run_cli("logs", "nope", "--store", url)
    assert (unknown.returncode, unknown.stderr) == (2, "error: unknown run 'nope'\n")


def _run(run_id: str) -> Run:
    from _factories import make_run

    return make_run("s", run_id=run_id, attempt=2)


@pytest.mark.emulator
def test_logs_on_firestore_prints_the_logs_explorer_query(firestore_emulator: str) -> None:
    env = clean_env({"FIRESTORE_EMULATOR_HOST": firestore_emulator})
    proc = run_cli("logs", "nope", "--store", "firestore://firecron-test", env=env)
    assert proc.returncode == 2
    assert 'resource.type="cloud_run_revision" labels.firecron_run_id="nope"' in proc.stderr
    assert "https://console.cloud.google.com/logs/query;query=" in proc.stderr


def test_the_logs_explorer_query_quotes_the_run_id() -> None:
    assert logs_explorer_query('a"b') == (
        'resource.type="cloud_run_revision" labels.firecron_run_id="a\\"b"'
    )
    assert logs_explorer_url("my-proj", "r1").endswith("?project=my-proj")


def test_a_cloud_logging_line_carries_severity_and_labels() -> None:
    line = json.loads(cloud_logging_line("r1", 3, T0, "WARNING", "app", "careful"))
    assert line == {
        "severity": "WARNING",
        "message": "careful",
        "time": "2027-01-01T00:00:00Z",
        "logger": "app",
        "logging.googleapis.com/labels": {"firecron_run_id": "r1", "firecron_attempt": "3"},
    }


def test_a_failed_flush_keeps_its_lines_for_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import os
    import threading
    from typing import cast

    from firecron.outbox import Deliverer
    from firecron.settings import Settings
    from firecron.worker import _Runtime

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def open_db(create: bool) -> SQLiteStore:
        return SQLiteStore(tmp_path / "late.db", create=create)

    # A store whose database does not exist yet: every write fails until it does.
    late = call(open_db(False))
    runtime = _Runtime(Settings(), late, loop, os.getpid(), cast(Deliverer, None))
    capture = AttemptLogs(runtime, "r1", 1, structured=False)
    capture.open()
    try:
        logging.getLogger("t").warning("one")
        capture.logger.warning("two")
    finally:
        capture.close()
    logging.getLogger("t").warning("after close: not captured")
    try:
        with caplog.at_level(logging.WARNING, "firecron.worker"):
            assert capture.flush() is False
        assert "storing 2 log lines of run r1 attempt 1 failed" in caplog.text
        creator = call(open_db(True))
        call(creator.get_logs("r1"))  # creates the database and its tables
        assert capture.flush() is True
        assert [line.message for line in call(late.get_logs("r1"))] == ["one", "two"]
        writes = late.stats.writes
        assert capture.flush() is True
        assert late.stats.writes == writes  # nothing left: no write
        call(creator.close())
    finally:
        call(late.close())
        loop.call_soon_threadsafe(loop.stop)
