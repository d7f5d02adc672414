"""Workers execute what was stored, never what the request body says.

A real worker (``tests/_integrity_app.py`` served by functions-framework in a
subprocess) shares a SQLite database with the test, unsigned and signed. Runs are
created in the store, then POSTed with bodies that agree or disagree with them. A body
that disagrees (params, attempt, scheduled_for, schedule_id, trigger) is answered 409
with a JSON error, and the run is left exactly as it was: nothing executed. A body that
agrees runs the function with the stored values.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from _factories import make_run
from _workers import WorkerProcess, serve_worker, worker_env
from firecron.core.models import Target
from firecron.core.runs import Run, RunState, RunTrigger
from firecron.store.sqlite import SQLiteStore
from firecron.transport.signing import signature_headers

APP = Path(__file__).with_name("_integrity_app.py")
SECRET = "whsec_" + base64.b64encode(b"integrity-test-key-32-bytes-long").decode()
SCHEDULED_FOR = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
STORED_PARAMS = {"name": "stored", "limit": 1, "nested": {"a": [1, 2]}}


@dataclass
class Worker:
    """The served ``echo`` worker, its database and whether requests must be signed."""

    process: WorkerProcess
    db_path: Path
    signed: bool


@pytest.fixture(scope="module", params=["unsigned", "signed"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp(f"integrity-{request.param}")
    signed = request.param == "signed"
    env = worker_env(f"sqlite:///{tmp / 'x.db'}", secrets=[SECRET] if signed else [])
    with serve_worker("echo", env=env, source=APP, log_dir=tmp) as process:
        yield Worker(process, tmp / "x.db", signed)


@pytest.fixture
async def db(worker: Worker) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(worker.db_path)
    yield store
    await store.close()


async def new_run(db: SQLiteStore, **overrides: Any) -> Run:
    schedule_id = f"echo-{uuid4().hex[:10]}"
    fields: dict[str, Any] = {"target": Target(function="echo"), "params": STORED_PARAMS}
    fields.update(overrides)
    created = await db.create_run(make_run(schedule_id, SCHEDULED_FOR, **fields))
    assert created is not None
    return created


def body(run: Run, **changes: Any) -> dict[str, Any]:
    """The dispatch body of ``run``'s current attempt, with ``changes`` applied."""
    payload: dict[str, Any] = {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": run.scheduled_for.isoformat().replace("+00:00", "Z"),
        "attempt": run.attempt,
        "trigger": (RunTrigger.retry if run.attempt > 1 else run.trigger).value,
        "params": run.params,
    }
    payload.update(changes)
    return payload


def post(worker: Worker, payload: dict[str, Any]) -> httpx.Response:
    """POST ``payload`` as the dispatcher would (signed when the worker has a secret).

    Reads the whole answer: for a 202, that is after the run's end was recorded.
    """
    raw = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"content-type": "application/json"}
    if worker.signed:
        key = f"{payload['run_id']}/{payload['attempt']}"
        headers.update(signature_headers(key, datetime.now(UTC), raw, [SECRET]))
    return httpx.post(worker.process.url, content=raw, headers=headers, timeout=30)


async def test_forged_params_are_refused_and_nothing_runs(worker: Worker, db: SQLiteStore) -> None:
    run = await new_run(db)
    forged = {**STORED_PARAMS, "name": "forged"}

    response = post(worker, body(run, params=forged))

    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert error["field"] == "params"
    assert "params" in error["error"]
    assert "nothing was executed" in error["error"]
    untouched = await db.get_run(run.id)
    assert untouched is not None
    assert untouched.model_dump() == run.model_dump()  # not started, not written
    assert untouched.version == run.version

    # The run is still there to be executed, with what was stored.
    done = post(worker, body(run))
    assert done.status_code == 202, done.text
    ended = await db.get_run(run.id)
    assert ended is not None
    assert ended.state is RunState.succeeded
    assert isinstance(ended.output, dict)
    assert ended.output["params"] == STORED_PARAMS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("params", {}),
        ("params", {"name": "stored", "limit": True, "nested": {"a": [1, 2]}}),  # 1 is not true
        ("schedule_id", "someone-else"),
        ("scheduled_for", "2027-03-01T12:00:01Z"),
        ("attempt", 2),
        ("trigger", "manual"),
    ],
)
async def test_each_disagreeing_field_is_refused(
    worker: Worker, db: SQLiteStore, field: str, value: object
) -> None:
    run = await new_run(db)
    payload = body(run, **{field: value})
    if field == "attempt":
        payload["trigger"] = "retry"  # a consistent-looking forgery of a later attempt

    response = post(worker, payload)

    assert response.status_code == 409, response.text
    assert response.json()["field"] == field
    after = await db.get_run(run.id)
    assert after is not None
    assert after.version == run.version
    assert after.state is RunState.pending


async def test_the_context_comes_from_the_stored_run(worker: Worker, db: SQLiteStore) -> None:
    run = await new_run(db)
    # The same values written differently: another UTC offset, another key order.
    payload = body(
        run,
        scheduled_for=SCHEDULED_FOR.astimezone(timezone(timedelta(hours=2))).isoformat(),
        params=dict(reversed(list(STORED_PARAMS.items()))),
    )

    response = post(worker, payload)

    assert response.status_code == 202, response.text
    ended = await db.get_run(run.id)
    assert ended is not None
    assert ended.state is RunState.succeeded
    assert ended.output == {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": SCHEDULED_FOR.isoformat(),
        "attempt": 1,
        "trigger": "schedule",
        "params": STORED_PARAMS,
    }


async def test_a_late_delivery_of_an_earlier_attempt_is_a_duplicate(
    worker: Worker, db: SQLiteStore
) -> None:
    run = await new_run(db, attempt=2)
    stale = body(run, attempt=1, trigger="schedule")

    response = post(worker, stale)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "duplicate"
    after = await db.get_run(run.id)
    assert after is not None
    assert after.version == run.version
