"""The Firestore document layout: what is top level, what is JSON text.

Runs the emulator (skipped without it). The contract suite checks behaviour; this
checks what the documents look like (queried and TTL fields top level, marks a native
map, the rest JSON text; a state entry's four fields and its document id), and that an
entry written directly, as docs/design.md tells another program to, reads back.
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
from firecron.core.models import WaitSpec
from firecron.core.runs import RunState, UpstreamEnd
from firecron.core.state import StateEntry
from firecron.errors import StoreError
from firecron.store.firestore import (
    MARKS_FIELD,
    RUN_QUERY_FIELDS,
    STATE_FIELDS,
    FirestoreStore,
    state_document_id,
)

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


async def test_a_waiting_run_copies_its_wait_key_top_level(fs: FirestoreStore) -> None:
    run = make_run(
        "gate",
        T0,
        state=RunState.waiting,
        wait=WaitSpec(key="orders/{date}"),
        wait_key="orders/2027-01-01",
    )
    created = await fs.create_run(run)
    assert created is not None
    document = await raw(fs, "runs", run.id)
    assert document["wait_key"] == "orders/2027-01-01"
    assert json.loads(document["data"])["wait_key"] == "orders/2027-01-01"
    assert await fs.update_run(run.id, [RunState.waiting], {"wait_key": None}, current=created)
    assert (await raw(fs, "runs", run.id))["wait_key"] is None


@pytest.mark.parametrize(
    ("key", "doc_id"),
    [
        ("orders/2027-01-01", "orders%2F2027-01-01"),
        ("export:eu", "export:eu"),
        ("a//b/", "a%2F%2Fb%2F"),
        ("__reserved__", "%5F_reserved__"),
        ("__/__", "%5F_%2F__"),
        ("__x", "__x"),
        ("___", "%5F__"),
    ],
)
def test_state_document_ids(key: str, doc_id: str) -> None:
    assert state_document_id(key) == doc_id


async def test_a_state_entry_is_four_native_fields(fs: FirestoreStore) -> None:
    at = T0 + timedelta(microseconds=123456)
    await fs.put_state("orders/2027-01-01", {"ready": True, "rows": [1, 2]}, now=at)
    await fs.put_state("orders/2027-01-01", {"ready": True, "rows": [1, 2, 3]}, now=at)
    document = await raw(fs, "state", "orders%2F2027-01-01")
    assert document == {
        "key": "orders/2027-01-01",
        "value": '{"ready":true,"rows":[1,2,3]}',  # compact JSON text
        "version": 2,
        "updated_at": at,
    }
    assert set(document) == set(STATE_FIELDS)
    assert isinstance(document["version"], int)
    await fs.put_state("__reserved__", 1, now=at)
    assert (await raw(fs, "state", "%5F_reserved__"))["key"] == "__reserved__"


async def test_an_entry_written_by_another_program_reads_back(fs: FirestoreStore) -> None:
    """What docs/design.md tells a program in another language to write, firecron reads."""
    collection = fs._client.collection(f"{fs.namespace}_state")
    await collection.document("orders%2F2027-01-02").set(
        {
            "key": "orders/2027-01-02",
            "value": '{"ready": true}',
            "version": 1,
            "updated_at": T0,
        }
    )
    entry = await fs.get_state("orders/2027-01-02")
    assert entry == StateEntry(
        key="orders/2027-01-02", value={"ready": True}, version=1, updated_at=T0
    )
    assert await fs.list_state(prefix="orders/") == [entry]
    # Its next write through firecron goes on from its version.
    assert (await fs.put_state("orders/2027-01-02", 2, now=T0, if_version=1)).version == 2
    assert (await fs.put_state("orders/2027-01-02", 3, now=T0)).version == 3

    # A document that breaks the layout is one line naming it, not a crash.
    await collection.document("bad").set({"key": "bad", "value": "{", "version": "1"})
    with pytest.raises(StoreError, match=r"^corrupt state document 'bad': version: expected"):
        await fs.get_state("bad")
