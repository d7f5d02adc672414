"""Every use of google-cloud-firestore's private API, in one place.

The Firestore store needs three things the client does not offer publicly:

- the database's resource name (``client._database_string``), to name documents
  without building a ``DocumentReference`` per write;
- a way to commit raw ``Write`` protobufs through a client batch
  (``WriteBatch._add_write_pbs``, how the client's own ``create``/``update`` add theirs),
  so retries, timeouts and request metadata stay the client's;
- the gRPC channel to close (``client._transport``): the async client has no
  public ``close()``.

pyproject.toml bounds the dependency below the next major version, and
:func:`check_client` runs on every new client, so a client without these fails at
once with one line naming what is missing instead of deep in a claim.
``tests/test_firestore_private.py`` is the canary that exercises each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.cloud import firestore

from firecron.errors import StoreError

__all__ = ["check_client", "close_client", "commit_writes", "database_path"]


def _changed(what: str) -> StoreError:
    return StoreError(
        f"google-cloud-firestore {firestore.__version__} changed a private API firecron "
        f"uses: {what} (see firecron/store/_firestore_private.py)"
    )


def check_client(client: Any) -> None:
    """Raise :class:`StoreError` (one line) unless ``client`` has what this module uses.

    Does no I/O. The channel (``_transport``) exists only after the first call, so
    only the canary test checks it.
    """
    try:
        path = client._database_string
    except AttributeError:
        raise _changed("AsyncClient._database_string is missing") from None
    if not isinstance(path, str) or not path.startswith("projects/"):
        raise _changed(f"AsyncClient._database_string is {path!r}, not a resource name")
    batch = client.batch()
    if not callable(getattr(batch, "_add_write_pbs", None)):
        raise _changed(f"{type(batch).__name__}._add_write_pbs is missing")


def database_path(client: Any) -> str:
    """``projects/{project}/databases/{database}`` of ``client``."""
    path: str = client._database_string
    return path


async def commit_writes(client: Any, writes: Sequence[Any], **rpc: Any) -> list[Any]:
    """Commit ``writes`` (proto-plus ``Write`` messages) in one atomic batch.

    Returns their write results, in order. ``rpc`` (``retry``, ``timeout``) goes to
    the batch's ``commit``; its errors are the client's.
    """
    batch = client.batch()
    batch._add_write_pbs(list(writes))
    return list(await batch.commit(**rpc))


async def close_client(client: Any) -> None:
    """Close ``client``'s gRPC channel, if a call ever opened one (else do nothing)."""
    # The client creates ``_transport`` with the channel, on its first call.
    transport = getattr(client, "_transport", None)
    if transport is not None:
        await transport.close()
