"""The Firestore document layout: what is top level, what is JSON text.

Runs the emulator (skipped without it). The contract suite checks behaviour; this
checks what the documents look like (queried and TTL fields top level, marks a native
map, the rest JSON text).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest

from _factories import MINUTE, T0, make_run, make_spec, make_state
from conftest import FIRESTORE_TEST_PROJECT
from firecron.core.runs import RunState, UpstreamEnd
from firecron.store.firestore import MARKS_FIELD, RUN_QUERY_FIELDS, FirestoreStore

pytestmark = pytest.mark.emulator


@pytest.fixture
async def fs(firestore_emulator: str) -> AsyncIterator[FirestoreStore]:
    store = FirestoreStore(FIRESTORE_TEST_PROJECT, namespace=f"l{uuid4().hex[:12]}")
    yield store
    await store.close()


async def raw(fs: FirestoreStore, kind: str, doc_id: str) -> dict[str, Any]:
    snapshot = await fs._client.collection(f"{fs.namespace}_{kind}").document(doc_id).get()
    data: dict[str, Any] = snapshot.to_dict()
    return data


async def test_runs_keep_queried_and_ttl_fields_top_level(fs: FirestoreStore) -> None:
    run = make_run("alpha", T0, params={"k": [1, [2]]}, expire_at=T0 + timedelta(days=7))
    assert await fs.create_run(run)
    document = await raw(fs, "runs", run.id)
    assert set(document) == {"data", *RUN_QUERY_FIELDS}
    assert document["expire_at"] == T0 + timedelta(days=7)  # a timestamp, for the TTL policy
    assert document["created_at"] == T0
    assert document["watch_at"] == T0 + MINUTE
    assert (document["schedule_id"], document["state"]) == ("alpha", "pending")
    assert json.loads(document["data"])["params"] == {"k": [1, [2]]}

    stored = await fs.put_schedule(make_spec("alpha"), make_state(T0), expect_version=None)
    schedule = await raw(fs, "schedules", "alpha")
    assert isinstance(schedule["spec"], str)
    assert isinstance(schedule["state"], str)
    assert schedule["next_fire_at"] == T0
    assert (await fs.get_schedule("alpha")) == stored


async def test_marks_are_a_native_map_beside_the_json_text(fs: FirestoreStore) -> None:
    run = make_run(
        "alpha",
        T0,
        run_id="p@20270101T000000Z.join",
        upstream={"first": UpstreamEnd(outcome="succeeded", state="delivered")},
    )
    assert await fs.create_run(run)
    document = await raw(fs, "runs", run.id)
    assert set(document) == {"data", MARKS_FIELD, *RUN_QUERY_FIELDS}
    first = {"outcome": "succeeded", "state": "delivered", "failed_within": False}
    assert document[MARKS_FIELD] == {"first": first}
    # The JSON text holds no marks: the map is their one record.
    assert json.loads(document["data"])["upstream"] == {}

    # A mark is one entry of the map, the key the bare task id (quoted only in the path).
    failed = UpstreamEnd(outcome="upstream_failed", state="skipped", failed_within=True)
    assert await fs.mark_upstream(run.id, "load-2", failed)
    assert await fs.mark_upstream(run.id, "0th", UpstreamEnd(outcome="skipped"))
    document = await raw(fs, "runs", run.id)
    assert document[MARKS_FIELD] == {
        "first": first,
        "load-2": {"outcome": "upstream_failed", "state": "skipped", "failed_within": True},
        "0th": {"outcome": "skipped", "state": None, "failed_within": False},
    }
    assert document["revision"] == 2  # one per mark: each changes the version

    # An update rewrites the run's own fields only: the map stays as it is.
    got = await fs.get_run(run.id)
    assert got is not None
    assert await fs.update_run(run.id, [RunState.pending], {"error": "e"}, current=got)
    after = await raw(fs, "runs", run.id)
    assert after[MARKS_FIELD] == document[MARKS_FIELD]
    assert json.loads(after["data"])["upstream"] == {}
    assert json.loads(after["data"])["error"] == "e"
