"""Shared fixtures: every store backend behind one parametrised ``store_factory``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from _backend import Backend, open_backend
from firecron.store.base import Store

FIRESTORE_TEST_PROJECT = "firecron-test"


@pytest.fixture(scope="session")
def _firestore_emulator_session() -> Iterator[str]:
    from _emulators import emulator_or_skip

    with emulator_or_skip("firestore") as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        yield host


@pytest.fixture
def firestore_emulator(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the Firestore emulator shared by the session (or skip).

    Only a test marked ``emulator`` may use it (a ``pytest.param(...,
    marks=pytest.mark.emulator)`` for a parametrised fixture): an unmarked one fails
    before anything starts, so ``pytest -m "not emulator"`` never starts a JVM.
    """
    if request.node.get_closest_marker("emulator") is None:
        pytest.fail(
            f"{request.node.nodeid} uses the Firestore emulator but is not marked"
            " emulator: add @pytest.mark.emulator (or marks=pytest.mark.emulator)",
            pytrace=False,
        )
    host: str = request.getfixturevalue("_firestore_emulator_session")
    return host


STORE_BACKENDS = ["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)]
"""The store backends; the Firestore one runs on the emulator (marked ``emulator``)."""


@pytest.fixture(params=STORE_BACKENDS)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Store]]:
    """A function opening a NEW store instance on one shared database and namespace.

    Every call returns another instance (own connection/client) over the same data,
    as several dispatchers would have. All of them are closed at teardown.
    """
    opened: list[Store] = []
    if request.param == "sqlite":
        from firecron.store.sqlite import SQLiteStore

        # A subdirectory that does not exist yet: the store must create it.
        path = tmp_path / "store" / "firecron.db"

        def open_one() -> Store:
            store = SQLiteStore(path)
            opened.append(store)
            return store

    else:
        request.getfixturevalue("firestore_emulator")
        from firecron.store.firestore import FirestoreStore

        # A fresh namespace per test isolates tests sharing the one emulator.
        namespace = f"t{uuid4().hex[:12]}"

        def open_one() -> Store:
            store = FirestoreStore(FIRESTORE_TEST_PROJECT, namespace=namespace)
            opened.append(store)
            return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> Store:
    """One store instance on a fresh database/namespace (closed by ``store_factory``)."""
    return store_factory()


@pytest.fixture(params=STORE_BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each store in turn, as worker processes see it (see ``tests/_backend.py``)."""
    if request.param != "sqlite":
        request.getfixturevalue("firestore_emulator")
    opened = open_backend(request.param, tmp_path)
    yield opened
    await opened.store.close()
