"""The Firestore document layout: what is top level, and documents of the earlier layout.

Runs the emulator (skipped without it). The contract suite checks behaviour; this
checks what the documents look like (queried and TTL fields top level, the rest JSON
text) and that documents written by the earlier map layout are still read and updated.
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
from firecron.core.runs import RunState
from firecron.store._codec import to_record
from firecron.store.firestore import OPAQUE_FIELDS, RUN_QUERY_FIELDS, FirestoreStore


@pytest.fixture
async def fs(firestore_emulator: str) -> AsyncIterator[FirestoreStore]:
    store = FirestoreStore(FIRESTORE_TEST_PROJECT, namespace=f"l{uuid4().hex[:12]}")
    yield store
    await store.close()


def legacy(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """A record as the earlier layout stored it: maps, free-form fields as JSON text."""
    out = dict(record)
    for name in OPAQUE_FIELDS[kind]:
        if name in out:
            out[name] = json.dumps(out[name], separators=(",", ":"))
    return out


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


async def test_documents_of_the_earlier_layout_are_read_claimed_and_updated(
    fs: FirestoreStore,
) -> None:
    spec, state = make_spec("old", params={"p": {"q": 1}}, labels={"team": "x"}), make_state(T0)
    await (
        fs._client.collection(f"{fs.namespace}_schedules")
        .document("old")
        .create(
            {
                "spec": legacy(to_record(spec), "spec"),
                "state": to_record(state),
                "next_fire_at": T0,
                "revision": 1,
            }
        )
    )
    run = make_run("old", T0 - MINUTE, params={"a": [1, 2]}, output={"rows": 3})
    await (
        fs._client.collection(f"{fs.namespace}_runs")
        .document(run.id)
        .create(legacy(to_record(run), "run"))
    )

    [due] = await fs.due_schedules(T0, 10)
    assert (due.spec, due.state) == (spec, state)
    [got] = await fs.list_runs(schedule_id="old")
    assert got == run

    new_run = make_run("old", T0)
    claimed = await fs.claim(due, make_state(T0 + MINUTE), [new_run])
    assert claimed == [new_run]
    assert (await fs.get_schedule("old")).state == make_state(T0 + MINUTE)  # type: ignore[union-attr]

    moved = await fs.update_run(
        got.id, [RunState.pending], {"state": RunState.delivered, "watch_at": None}, current=got
    )
    assert moved is not None
    again = await fs.get_run(got.id)
    assert again == moved
    assert again is not None
    assert (again.output, again.params) == ({"rows": 3}, {"a": [1, 2]})
    assert await fs.due_watches(T0 + timedelta(days=1), 10) == [new_run]
