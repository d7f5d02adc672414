"""Canary for the private google-cloud-firestore APIs the store uses.

``firecron/store/_firestore_private.py`` holds every use of them. When a client release
renames or reshapes one, these tests fail with a message naming it, before a store
fails in a claim. The first two need no emulator; the last one talks to it.
"""

from __future__ import annotations

from uuid import uuid4

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_batch import BaseBatch
from google.cloud.firestore_v1.base_client import BaseClient
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import write as write_types

from conftest import FIRESTORE_TEST_PROJECT
from firecron.errors import StoreError
from firecron.store._firestore_private import (
    check_client,
    close_client,
    commit_writes,
    database_path,
)
from firecron.store.firestore import FirestoreStore


def emulator_client(database: str = "(default)") -> firestore.AsyncClient:
    """A client of ``FIRESTORE_EMULATOR_HOST`` (so with anonymous credentials)."""
    return firestore.AsyncClient(project=FIRESTORE_TEST_PROJECT, database=database)


@pytest.fixture
def offline_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """An emulator address that nothing answers: clients get made, no call is answered."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")


def test_the_installed_client_has_every_private_api_firecron_uses(offline_emulator: None) -> None:
    client = emulator_client("other")
    check_client(client)  # raises StoreError naming what is missing
    assert database_path(client) == f"projects/{FIRESTORE_TEST_PROJECT}/databases/other"


@pytest.mark.parametrize(
    ("owner", "name"), [(BaseClient, "_database_string"), (BaseBatch, "_add_write_pbs")]
)
async def test_a_client_without_one_fails_the_store_at_once_in_one_line(
    offline_emulator: None, monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    # A client release without the API cannot be installed here, so take it away.
    monkeypatch.delattr(owner, name)
    store = FirestoreStore(FIRESTORE_TEST_PROJECT)
    with pytest.raises(StoreError) as caught:
        await store.clock()
    message = str(caught.value)
    assert "\n" not in message
    assert f"google-cloud-firestore {firestore.__version__} changed a private API" in message
    assert name in message
    await store.close()


@pytest.mark.emulator
async def test_raw_writes_commit_in_one_batch_and_the_channel_closes(
    firestore_emulator: str,
) -> None:
    client = emulator_client()
    collection = f"canary{uuid4().hex[:12]}"

    def create(doc_id: str) -> write_types.Write:
        name = f"{database_path(client)}/documents/{collection}/{doc_id}"
        fields = {"kind": document_types.Value(string_value="canary")}
        return write_types.Write(
            update=document_types.Document(name=name, fields=fields),
            current_document={"exists": False},
        )

    results = await commit_writes(client, [create("a"), create("b")])
    assert len(results) == 2
    assert all(result.update_time is not None for result in results)
    snapshot = await client.collection(collection).document("b").get()
    assert snapshot.to_dict() == {"kind": "canary"}

    # The channel exists once a call was made, where close_client looks for it.
    transport = getattr(client, "_transport", None)
    assert transport is not None, "AsyncClient._transport is gone: close_client leaks channels"
    await close_client(client)
    with pytest.raises(Exception, match="Channel is closed"):  # grpc.aio.UsageError
        await client.collection(collection).document("a").get()
