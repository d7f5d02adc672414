"""Stores: the :class:`Store` protocol and :func:`open_store` to pick a backend by URL.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
``firestore://PROJECT[/DATABASE]`` (honours ``FIRESTORE_EMULATOR_HOST``).
Backends are imported lazily so that using SQLite never imports the Google client.
"""

from __future__ import annotations

import os

from firecron.errors import InvalidInputError
from firecron.store.base import Store, StoreStats

__all__ = ["Store", "StoreStats", "open_store"]


def open_store(url: str, namespace: str = "firecron", *, create: bool = True) -> Store:
    """Open the store named by ``url``; raises :class:`InvalidInputError` for a bad URL.

    ``create=False`` opens only a store that exists: a SQLite file that does not exist
    raises :class:`InvalidInputError` naming its path, and nothing is created on disk
    (read-only commands). Opening a Firestore store never creates anything.
    """
    if url.startswith("sqlite:///"):
        from firecron.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///")
        if not path:
            raise InvalidInputError(f"invalid store URL {url!r}: missing database path")
        if not create and not os.path.exists(path):
            raise InvalidInputError(
                f"no store at {path}: the file does not exist (firecron apply creates it)"
            )
        return SQLiteStore(path, namespace=namespace, create=create)
    if url.startswith("firestore://"):
        from firecron.store.firestore import FirestoreStore

        rest = url.removeprefix("firestore://").strip("/")
        project, _, database = rest.partition("/")
        if not project or "/" in database:
            raise InvalidInputError(
                f"invalid store URL {url!r}: expected firestore://PROJECT[/DATABASE]"
            )
        return FirestoreStore(project, database or "(default)", namespace=namespace)
    raise InvalidInputError(
        f"invalid store URL {url!r}: expected sqlite:///PATH or firestore://PROJECT[/DATABASE]"
    )
